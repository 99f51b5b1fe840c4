//! What Prometheus and Kubernetes ask for, without a token: `GET /metrics` (the exposition,
//! in the format the `Accept` header asks for), `GET /healthz` (the process answers HTTP)
//! and `GET /readyz` (the relay serves: 200 once its ready line is out, 503 before and
//! while it stops). On the control API's listener, and on `--metrics-listen` alone.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::metrics::{Live, Metrics};

struct Shared {
    metrics: Metrics,
    live: Arc<Live>,
}

/// The three routes over `live`.
pub fn router(live: Arc<Live>) -> Router {
    let shared = Arc::new(Shared {
        metrics: Metrics::new(Arc::clone(&live)),
        live,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (body, media) = shared.metrics.encode(accept);
    ([(header::CONTENT_TYPE, media)], body)
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.live.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves [`router`] alone on `listen` until `shutdown` resolves; the bound address and
/// the server's task.
pub async fn start(
    listen: SocketAddr,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics-listen {listen}: {e}")))?;
    let local = listener.local_addr()?;
    log::info!("metrics and health probes on http://{local}");
    let server = tokio::spawn(async move {
        axum::serve(listener, router(live))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((local, server))
}
