//! A blocking client of the API, for `relay room` and tests: a [`Request`] in, the API's
//! JSON (or its [`ApiError`]) out.

use std::time::Duration;

use ureq::http;

use super::{Operation, Token};
use crate::room::api::{ApiError, Request};

/// Longer than the server's own wait for the room core, so that its 504 arrives.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No answer: the API is not there, or did not speak HTTP.
    #[error("{url}: {problem}")]
    Transport { url: String, problem: String },
}

impl Client {
    /// A client of the API at `base` (`http://HOST:PORT`).
    pub fn new(base: &str, token: &Token) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {}", token.expose()),
        }
    }

    /// Asks the API; the JSON it answers, or `None` for a 204.
    pub fn call(&self, request: &Request) -> Result<Option<serde_json::Value>, ClientError> {
        let (op, params, body) = Operation::of(request);
        let url = format!("{}{}", self.base, op.fill(&params));
        let transport = |problem: String| ClientError::Transport {
            url: url.clone(),
            problem,
        };
        let builder = http::Request::builder()
            .method(op.method().as_str())
            .uri(&url)
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(http::header::ACCEPT, "application/json");
        let sent = match body {
            Some(body) => builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.to_string().into_bytes())
                .map(|request| self.agent.run(request)),
            None => builder.body(()).map(|request| self.agent.run(request)),
        };
        let mut response = sent
            .map_err(|e| transport(e.to_string()))?
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| transport(e.to_string()))?;
        if (200..300).contains(&status) {
            if text.is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| transport(format!("{status} with a body that is not JSON: {e}")));
        }
        // An error from something in front of the API (a proxy) may not be an ApiError.
        Err(serde_json::from_str::<ApiError>(&text)
            .unwrap_or_else(|_| ApiError::new(status, None, text.trim()))
            .into())
    }
}
