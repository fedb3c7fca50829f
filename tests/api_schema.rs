//! The REST API against its own OpenAPI document (GET /api/openapi.json): schemathesis generates
//! requests from the document, valid and invalid, and checks that no answer is a 5xx and that
//! every answer (status, content type, headers, body) is one the document describes.
//!
//! Needs the `schemathesis` executable (v4); ./test.sh, the README's test command, installs it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, combined_output, require_tool, wait_until};

const API_KEY: &str = "schema-test-api-key-0123456789";

/// Test cases per operation and phase: enough to cover every documented constraint, bounded so
/// the run takes well under a minute on two cores.
const MAX_EXAMPLES: &str = "25";

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,ignored_auth,\
unsupported_method";

#[test]
fn the_api_answers_as_its_openapi_document_says_and_never_with_a_5xx() {
    let version = require_tool(
        Command::new("schemathesis").arg("--version"),
        "the schemathesis executable (v4)",
        "pip install 'schemathesis>=4,<5'",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, format!("api_key = \"{API_KEY}\"\n")).unwrap();
    let node = Node::start(
        &dir.path().join("state"),
        &["--config", config.to_str().unwrap(), "--diloco-steps", "10"],
        &[],
    );
    // The model is published shortly after start; until then generation answers 503.
    wait_until(
        "the model to be published",
        Duration::from_secs(60),
        &[&node],
        || {
            let (status, body) = node.post_json(
                "/generate_text",
                &serde_json::json!({"prompt": "a", "max_new_tokens": 1}),
            );
            assert!(status == 200 || status == 503, "{status} {body}");
            status == 200
        },
    );

    let document = node.get("/api/openapi.json");
    assert_eq!(node.get("/api/v1/openapi.json"), document);
    assert!(document["openapi"].as_str().unwrap().starts_with("3.0."));

    let schema_url = node.url("/api/openapi.json");
    let args = [
        "run",
        &schema_url,
        "--checks",
        CHECKS,
        "--header",
        &format!("Authorization: Bearer {API_KEY}"),
        // Derandomized: every run sends the same requests, so a failure reproduces.
        "--generation-deterministic",
        "--max-examples",
        MAX_EXAMPLES,
        "--phases",
        "examples,coverage,fuzzing",
        // One worker: Python 3.11's `ast` module keeps its recursion depth in shared state
        // (CPython gh-106905), and two workers' hypothesis describing lambdas at once failed a
        // CI run with "AST constructor recursion depth mismatch" (a tool crash, not an API
        // finding).
        "--workers",
        "1",
        "--request-timeout",
        "30",
        // Hypothesis' check of its own data generation speed, not of the API: on a loaded CI
        // machine it fails for no fault of the node.
        "--suppress-health-check",
        "too_slow",
        "--no-color",
        // An event stream never ends, so no response to check would ever arrive; tests/dashboard.rs
        // reads it instead.
        "--exclude-path",
        "/api/events",
    ];
    let started = Instant::now();
    let out = Command::new("schemathesis")
        .args(args)
        // Its cache (.schemathesis/) goes to the temporary directory, not the repository.
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = combined_output(&out);
    eprintln!(
        "{version}: schemathesis {} took {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{text}\nnode log:\n{}",
        out.status,
        node.log_tail()
    );
    // The node survived the run.
    assert_eq!(node.get("/api/health")["status"], "ok");
}
