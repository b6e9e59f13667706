//! The admin HTTP API (the original plugin's paths and JSON), plus `/healthz`, `/metrics` and
//! the OpenAPI document. [`router`] is what an existing axum application merges to host the
//! plugin itself: `app.merge(ef_backup::api::router(service))`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use sha2::{Digest, Sha256};

use crate::model::HttpResponse;
use crate::service::Service;
use crate::state::Trigger;

/// Request bodies are tiny (the manual trigger takes none); anything larger is refused.
pub const BODY_LIMIT: usize = 16 * 1024;
/// The OpenAPI document, checked in beside this crate and served as is.
pub const OPENAPI: &str = include_str!("../openapi.json");
/// A request other than the manual trigger is answered within this, or gets a 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body must arrive within this (a client trickling its body holds a connection).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub auth: bool,
    make: fn() -> MethodRouter<Arc<Service>>,
}

/// Every route: the router is built from this table, and a test checks it against the
/// OpenAPI document.
pub const ROUTES: &[Route] = &[
    Route { method: "post", path: "/api/ef/v1/backup/manual", auth: true, make: || post(manual) },
    Route { method: "get", path: "/api/ef/v1/backup/status", auth: true, make: || timed(get(status)) },
    Route { method: "get", path: "/api/ef/v1/backup/history", auth: true, make: || timed(get(history)) },
    Route { method: "get", path: "/api/ef/v1/backup/openapi.json", auth: false, make: || timed(get(openapi)) },
    Route { method: "get", path: "/healthz", auth: false, make: || timed(get(healthz)) },
    Route { method: "get", path: "/metrics", auth: false, make: || timed(get(metrics)) },
];

/// Bounds a route's handling time by [`REQUEST_TIMEOUT`]. Not the manual trigger: its answer
/// waits for the backup, which its own timeout (EF__BACKUP_TIMEOUT_SECS) bounds, and which goes
/// on if the client leaves.
fn timed(route: MethodRouter<Arc<Service>>) -> MethodRouter<Arc<Service>> {
    route.layer(middleware::from_fn(|req: Request, next: Next| async move {
        let path = req.uri().path().to_string();
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("{path} took longer than {}s and was answered 503", REQUEST_TIMEOUT.as_secs());
                error(StatusCode::SERVICE_UNAVAILABLE, format!("{path} took longer than {}s; try again", REQUEST_TIMEOUT.as_secs()))
            }
        }
    }))
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, serde_json::json!({"success": false, "message": message.into()}).to_string())
}

fn respond(r: HttpResponse) -> Response {
    // The policy's status was validated (200-599) when it was returned.
    json(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.body)
}

/// Equal in constant time: both sides are hashed first, so neither the position of the first
/// difference nor the token's length shows in the timing.
fn token_matches(given: &str, token: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(token.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let ok = match (given, &svc.config().admin_token) {
        (Some(g), Some(t)) => token_matches(g, t.expose()),
        _ => false,
    };
    if ok {
        return next.run(req).await;
    }
    tracing::warn!("refused {} {}: missing or wrong bearer token", req.method(), req.uri().path());
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized: send the header `Authorization: Bearer <EF__ADMIN_TOKEN>`");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ef-backup\""));
    r
}

async fn manual(State(svc): State<Arc<Service>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return error(rejection.status(), format!("bad request body: {}", rejection.body_text())),
    };
    // No parameters are taken; a body, if any, must at least be JSON.
    if !body.iter().all(u8::is_ascii_whitespace) && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return error(StatusCode::BAD_REQUEST, "the request body must be empty or JSON");
    }
    let run = svc.backup(Trigger::Manual).await;
    respond(svc.shape_backup(run.outcome).await)
}

async fn status(State(svc): State<Arc<Service>>) -> Response {
    respond(svc.status().await)
}

/// `?limit=N` (1 to 1000, default 50): the newest runs of the history, newest first.
async fn history(State(svc): State<Arc<Service>>, query: axum::extract::RawQuery) -> Response {
    let mut limit = 50usize;
    for (key, value) in query.0.as_deref().unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))) {
        match (key, value.parse::<usize>()) {
            ("limit", Ok(n)) if (1..=1000).contains(&n) => limit = n,
            ("limit", _) => return error(StatusCode::BAD_REQUEST, format!("limit must be a whole number from 1 to 1000, not {value:?}")),
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {key:?}: only `limit` is taken")),
        }
    }
    let runs = tokio::task::spawn_blocking(move || svc.history(limit)).await;
    match runs {
        Ok(Ok(runs)) => json(StatusCode::OK, serde_json::json!({"success": true, "data": {"runs": runs}}).to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the history could not be read: {e}")),
    }
}

async fn openapi() -> Response {
    json(StatusCode::OK, OPENAPI.to_string())
}

async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_string())
}

async fn metrics(State(svc): State<Arc<Service>>) -> Response {
    let text = svc.metrics_text().await;
    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], text).into_response()
}

async fn not_found(req: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such endpoint: {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

fn panicked(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a request handler panicked; the service keeps running");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// All routes, with authentication, body limits, JSON errors and panic containment.
pub fn router(service: Arc<Service>) -> Router {
    let (mut protected, mut public) = (Router::new(), Router::new());
    for r in ROUTES {
        if r.auth {
            protected = protected.route(r.path, (r.make)());
        } else {
            public = public.route(r.path, (r.make)());
        }
    }
    let protected = protected.route_layer(middleware::from_fn_with_state(Arc::clone(&service), require_token));
    protected
        .merge(public)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcde", "0123456789abcdef"));
        assert!(!token_matches("", "0123456789abcdef"));
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let secured = op.get("security").and_then(|s| s.as_array()).is_some_and(|s| !s.is_empty());
                let route = ROUTES.iter().find(|r| r.path == path && r.method == method);
                let route = route.unwrap_or_else(|| panic!("openapi.json documents {method} {path}, which the router lacks"));
                assert_eq!(secured, route.auth, "{method} {path}: security in openapi.json differs from the router");
                documented.push((method.clone(), path.clone()));
            }
        }
        for r in ROUTES {
            assert!(documented.contains(&(r.method.to_string(), r.path.to_string())), "{} {} is not in host/openapi.json", r.method, r.path);
        }
    }
}
