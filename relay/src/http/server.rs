//! The API's HTTP server: axum routes built from [`Operation::ALL`], a bearer-token check
//! in front of every one of them (and of the 404 and 405 answers), JSON errors throughout.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State, rejection::BytesRejection, rejection::PathRejection},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::IntoResponse as _,
    routing::{MethodFilter, on},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{ApiConfig, MAX_BODY, Operation, Token};
use crate::room::api::{ApiError, Call, Request, Response};

/// How long a request waits for the room core to take it and answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

struct Shared {
    token: Token,
    calls: mpsc::Sender<Call>,
}

/// Binds `config.listen` and serves the API there until `shutdown` resolves; returns the
/// bound address (the port, when `listen`'s is 0) and the server's task.
pub async fn start(
    config: ApiConfig,
    calls: mpsc::Sender<Call>,
    probes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("api-listen {}: {e}", config.listen)))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        log::warn!(
            "the control API on {local} is plain HTTP: its bearer token crosses the network \
             in clear unless the path to it is trusted (prefer a loopback address)"
        );
    }
    log::info!("control API on http://{local}");
    let server = tokio::spawn(serve(listener, config.token, calls, probes, shutdown));
    Ok((local, server))
}

/// Serves the API on `listener` until `shutdown` resolves, handing each request to the
/// room core over `calls`; `probes` (metrics and health, no token) beside it.
pub async fn serve(
    listener: TcpListener,
    token: Token,
    calls: mpsc::Sender<Call>,
    probes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Merged after the token's layer, which covers only the API's own routes (and the
    // 404 and 405 answers).
    axum::serve(listener, router(token, calls).merge(probes))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes, one per [`Operation`], each behind the token.
pub fn router(token: Token, calls: mpsc::Sender<Call>) -> Router {
    let shared = Arc::new(Shared { token, calls });
    let mut router = Router::new();
    for op in Operation::ALL {
        let filter = MethodFilter::try_from(op.method()).expect("the table's methods are routable");
        router = router.route(
            op.path(),
            on(
                filter,
                move |State(shared): State<Arc<Shared>>,
                      params: Result<Path<HashMap<String, String>>, PathRejection>,
                      body: Result<Bytes, BytesRejection>| async move {
                    answer(op, &shared, params, body).await
                },
            ),
        );
    }
    router
        .fallback(|| async { reply_error(&ApiError::new(404, None, "no such path")) })
        .method_not_allowed_fallback(|| async {
            reply_error(&ApiError::new(405, None, "method not allowed on this path"))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared)
}

/// Lets through requests with the token, answers the others 401; logs every request
/// (method, path, status; never a header).
async fn authorize(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    let response = if presented.is_some_and(|token| shared.token.matches(token)) {
        next.run(request).await
    } else {
        let mut response = reply_error(&ApiError::new(
            401,
            Some("authorization"),
            "missing or wrong bearer token",
        ));
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    };
    log::debug!(
        "api: {method} {path}: {} in {:?}",
        response.status().as_u16(),
        started.elapsed()
    );
    response
}

async fn answer(
    op: Operation,
    shared: &Shared,
    params: Result<Path<HashMap<String, String>>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> axum::response::Response {
    let params = match params {
        Ok(Path(params)) => params,
        Err(PathRejection::MissingPathParams(_)) => HashMap::new(),
        Err(e) => return reply_error(&ApiError::new(400, Some("path"), e.body_text())),
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => return reply_error(&ApiError::new(e.status().as_u16(), None, e.body_text())),
    };
    let answer = match op.request(params, &body) {
        Ok(request) => ask(&shared.calls, request).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(Response::Deleted) if op.status() == 204 => StatusCode::NO_CONTENT.into_response(),
        Ok(response) if op.status() != 204 && response != Response::Deleted => {
            reply_json(op.status(), &response)
        }
        Ok(response) => reply_error(&ApiError::new(
            500,
            None,
            format!("the room core answered {op:?} with {response:?}"),
        )),
        Err(e) => reply_error(&e),
    }
}

/// Hands `request` to the room core and waits for its answer: 503 when the core is gone,
/// 504 when it does not answer in time.
async fn ask(calls: &mpsc::Sender<Call>, request: Request) -> Result<Response, ApiError> {
    let gone = || ApiError::new(503, None, "the room core is not running");
    let (tx, rx) = oneshot::channel();
    let asked = async {
        calls.send((request, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    };
    tokio::time::timeout(ANSWER_WITHIN, asked)
        .await
        .map_err(|_| {
            ApiError::new(
                504,
                None,
                format!("the room core did not answer within {ANSWER_WITHIN:?}"),
            )
        })?
}

fn reply_error(error: &ApiError) -> axum::response::Response {
    reply_json(error.status, error)
}

fn reply_json(status: u16, body: &impl serde::Serialize) -> axum::response::Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(body).expect("API bodies are plain data");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
