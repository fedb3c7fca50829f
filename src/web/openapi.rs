//! GET /api/openapi.json (and /api/v1/openapi.json): the hand-written OpenAPI 3.0 description of
//! the REST API, embedded at build time. `tests/api_schema.rs` checks the running node against it.

use actix_web::{HttpResponse, web};

use super::state::get;

/// The OpenAPI document, as served.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Paths relative to the API scope (/api and /api/v1).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/openapi.json", openapi));
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    /// Every `$ref` in `value`, with its JSON path for the failure message.
    fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(target)) => out.push((at.clone(), target)),
                        _ => refs(v, format!("{at}/{key}"), out),
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    refs(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn is_openapi_3_0_and_every_ref_resolves() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi version string");
        assert!(version.starts_with("3.0."), "openapi {version}");
        assert!(doc["info"]["title"].is_string() && doc["paths"].is_object());
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(!found.is_empty());
        for (at, target) in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
            assert!(
                doc.pointer(pointer).is_some(),
                "{at}: $ref {target} does not resolve"
            );
        }
    }

    #[test]
    fn documents_the_api_paths_and_their_error_schema() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/health",
            "/api/stats",
            "/api/diloco",
            "/api/peers",
            "/api/network",
            "/api/blobs/fetch",
            "/api/generate_text",
            "/api/neuro",
            "/api/ledger/balance/{node_id}",
            "/api/ledger/proofs/{node_id}",
            "/api/ledger/network",
            "/api/ledger/balances",
            "/api/ledger/checkpoints",
            "/api/ponw/verify",
            "/api/wallet/send",
            "/api/stake",
            "/api/unstake",
            "/api/openapi.json",
            "/generate_text",
            "/metrics",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        let error = &doc["components"]["schemas"]["Error"];
        assert_eq!(error["required"], serde_json::json!(["error", "detail"]));
    }

    #[actix_web::test]
    async fn is_served_as_json_under_api_and_api_v1() {
        use actix_web::{App, test};
        let app = test::init_service(
            App::new()
                .service(web::scope("/api/v1").configure(configure))
                .service(web::scope("/api").configure(configure)),
        )
        .await;
        for path in ["/api/openapi.json", "/api/v1/openapi.json"] {
            let resp =
                test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
            assert!(resp.status().is_success(), "{path}");
            assert_eq!(
                resp.headers().get("content-type").unwrap(),
                "application/json",
                "{path}"
            );
            let body: Value = test::read_body_json(resp).await;
            assert_eq!(body, document());
        }
    }
}
