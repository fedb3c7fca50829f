//! HttpActor: owns the actix-web server (REST API and dashboard), ticks the dashboard's live feed
//! once a second, and stops both gracefully.

use std::net::TcpListener;
use std::time::Duration;

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use super::messages::StopHttp;
use super::run_every;
use crate::web::{ApiState, configure, tick};

/// How often the dashboard's curves get a point and its open pages an update.
const FEED_INTERVAL: Duration = Duration::from_secs(1);

pub struct HttpActor {
    handle: ServerHandle,
    state: web::Data<ApiState>,
}

impl HttpActor {
    /// Starts serving on `listener` (already bound, so a port conflict is reported before start-up).
    pub fn serve(listener: TcpListener, state: web::Data<ApiState>) -> std::io::Result<Self> {
        let app_state = state.clone();
        let server =
            HttpServer::new(move || App::new().app_data(app_state.clone()).configure(configure))
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
        Ok(Self { handle, state })
    }
}

impl Actor for HttpActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tick(&self.state);
        run_every(ctx, FEED_INTERVAL, |actor, _| tick(&actor.state));
    }
}

impl Handler<StopHttp> for HttpActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopHttp, _: &mut Self::Context) -> Self::Result {
        // Open event streams never finish by themselves; end them so the stop is not held up.
        self.state.close_streams();
        let handle = self.handle.clone();
        Box::pin(async move { handle.stop(true).await })
    }
}
