//! What every route shares: [`ApiState`] (the handlers' `web::Data`), the body limit and the
//! route helpers that answer a wrong method or an unknown path with a JSON [`ApiError`].

use std::sync::{Arc, Mutex};

use actix_web::http::{Method, StatusCode, header};
use actix_web::{
    FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, ResponseError, Route, web,
};

use super::error::ApiError;
use super::feed::Feed;
use crate::actors::ledger::LedgerActor;
use crate::actors::peer::PeerActor;
use crate::logs::LogRing;
use crate::model::backend::{CpuBackend, cpu_device};
use crate::model::params::unflatten;
use crate::model::{NeuroLlm, NeuroLlmConfig};
use crate::status::StatusBoard;

/// Largest accepted JSON body; prompts are short.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct ApiState {
    pub status: StatusBoard,
    pub model: NeuroLlmConfig,
    pub training_enabled: bool,
    pub(super) peers: actix::Addr<PeerActor>,
    pub(super) ledger: actix::Addr<LedgerActor>,
    /// Bearer key of the mutating wallet endpoints; `None` refuses them.
    pub(super) api_key: Option<String>,
    /// The CPU model generation uses, rebuilt when the published weights change.
    inference: Mutex<Option<(u64, Arc<NeuroLlm<CpuBackend>>)>>,
    /// The dashboard's history and its open event streams.
    pub(super) feed: Feed,
}

impl ApiState {
    pub fn new(
        status: StatusBoard,
        model: NeuroLlmConfig,
        training_enabled: bool,
        peers: actix::Addr<PeerActor>,
        ledger: actix::Addr<LedgerActor>,
        api_key: Option<String>,
        logs: LogRing,
    ) -> Self {
        Self {
            status,
            model,
            training_enabled,
            peers,
            ledger,
            api_key,
            inference: Mutex::new(None),
            feed: Feed::new(logs),
        }
    }

    /// Ends the dashboard's open event streams, so a graceful stop does not wait on them.
    pub fn close_streams(&self) {
        self.feed.close();
    }

    pub(super) fn current_model(&self) -> Option<Arc<NeuroLlm<CpuBackend>>> {
        let status = self.status.read();
        let weights = status.weights?;
        let mut cache = self.inference.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((version, model)) = cache.as_ref()
            && *version == status.weights_version
        {
            return Some(model.clone());
        }
        let model = Arc::new(unflatten(
            self.model.init::<CpuBackend>(&cpu_device()),
            &weights,
        ));
        *cache = Some((status.weights_version, model.clone()));
        Some(model)
    }
}

/// `path` served by `handler` for GET; any other method gets a 405 JSON error naming GET.
pub fn get<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(path, Method::GET, web::get().to(handler))
}

/// `path` served by `handler` for POST; any other method gets a 405 JSON error naming POST.
pub fn post<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(path, Method::POST, web::post().to(handler))
}

/// A resource whose method guard sits on the route, not on the resource, so a known path asked
/// with another method answers 405 with `Allow` instead of falling through to the 404.
fn endpoint(path: &str, method: Method, route: Route) -> Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move |req: HttpRequest| {
            let method = method.clone();
            async move {
                let mut response = ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!(
                        "{} {} is not served; this path answers {method}",
                        req.method(),
                        req.path()
                    ),
                )
                .error_response();
                response.headers_mut().insert(
                    header::ALLOW,
                    header::HeaderValue::from_str(method.as_str())
                        .expect("an HTTP method is a valid header value"),
                );
                response
            }
        }))
}

/// 404 as JSON, for every route nobody serves.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
