//! HttpActor: owns the actix-web server (REST API and status page) and stops it gracefully.

use std::net::TcpListener;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use super::messages::StopHttp;
use crate::web::{ApiState, configure};

pub struct HttpActor {
    handle: ServerHandle,
}

impl HttpActor {
    /// Starts serving on `listener` (already bound, so a port conflict is reported before start-up).
    pub fn serve(listener: TcpListener, state: web::Data<ApiState>) -> std::io::Result<Self> {
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(configure))
                .workers(2)
                .disable_signals() // the node owns shutdown: checkpoint first, then stop the server
                .listen(listener)?
                .run();
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Ok(Self { handle })
    }
}

impl Actor for HttpActor {
    type Context = Context<Self>;
}

impl Handler<StopHttp> for HttpActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopHttp, _: &mut Self::Context) -> Self::Result {
        let handle = self.handle.clone();
        Box::pin(async move { handle.stop(true).await })
    }
}
