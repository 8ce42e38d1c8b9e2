//! The control plane's local HTTP listener: Prometheus `/metrics`, health
//! and readiness for systemd and load balancers, and a small operations
//! API for `mediagwctl` and scripts on the host.
//!
//! | method and path | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when ARI and the dataplane are connected, else 503 with what is missing |
//! | `GET /status` | links (AMI, ARI, dataplane, sessions), live calls, host |
//! | `GET /calls` | live calls on this host |
//! | `POST /calls` | originate an outbound call into the application (`OriginateCall`) |
//! | `DELETE /calls/{session}` | hang up a call |
//! | `GET /sessions?tenant=T` | sessions in the store (this host's and others') |
//!
//! It binds to loopback by default and has no authentication: the
//! tenant-facing REST API with keys, roles and rate limits is a separate
//! listener. Errors are JSON `{"error": {"code", "message", "retryable"}}`
//! with the status [`Error::http_status`] gives.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use mediagw_shared::ids::{SessionId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::callflow::{CallFlow, OriginateCall};
use crate::dataplane::DataplaneState;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::service::{LinkState, Shutdown};
use crate::session::{SessionStore, Store};

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// The call flow.
    pub calls: CallFlow,
    /// Sessions.
    pub store: Store,
    /// AMI link, when AMI is configured.
    pub ami: Option<watch::Receiver<LinkState>>,
    /// ARI link.
    pub ari: watch::Receiver<LinkState>,
    /// Dataplane link.
    pub dataplane: watch::Receiver<DataplaneState>,
    /// This host's name.
    pub host: String,
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: Shutdown,
) -> Result<()> {
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| Error::internal("the HTTP listener failed").with_cause(e))
}

/// Binds the listener (separately, so a taken port fails at start).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| Error::invalid(format!("controlplane.http_listen `{addr}`: {e}")))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {addr}")).with_cause(e))
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/calls", get(calls).post(originate))
        .route("/calls/{session}", delete(hangup))
        .route("/sessions", get(sessions))
        .with_state(Arc::new(state))
}

struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {
            "code": self.0.code(),
            "message": self.0.to_string(),
            "retryable": self.0.retryable(),
        }});
        (status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

#[derive(Serialize)]
struct Links {
    ami: Option<String>,
    ari: String,
    dataplane: String,
    dataplane_generation: u64,
}

fn describe(l: &LinkState) -> String {
    match l {
        LinkState::Connecting => "connecting".into(),
        LinkState::Up { server } => format!("up ({server})"),
        LinkState::Down { reason } => format!("down: {reason}"),
    }
}

fn links(s: &HttpState) -> Links {
    let dp = s.dataplane.borrow().clone();
    Links {
        ami: s.ami.as_ref().map(|a| describe(&a.borrow())),
        ari: describe(&s.ari.borrow()),
        dataplane: describe(&dp.link),
        dataplane_generation: dp.generation,
    }
}

async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    let ari = s.ari.borrow().is_up();
    let dp = s.dataplane.borrow().link.is_up();
    let body = Json(json!({"ari": ari, "dataplane": dp, "links": links(&s)}));
    if ari && dp {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn status(State(s): State<Arc<HttpState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let calls = s.calls.calls().await?;
    let store = match s.store.health().await {
        Ok(()) => "up".to_owned(),
        Err(e) => format!("down: {e}"),
    };
    Ok(Json(json!({
        "host": s.host,
        "version": env!("CARGO_PKG_VERSION"),
        "links": links(&s),
        "sessions": {"backend": format!("{:?}", s.store.kind()).to_lowercase(), "state": store},
        "calls": calls.len(),
    })))
}

async fn calls(State(s): State<Arc<HttpState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let calls = s.calls.calls().await?;
    Ok(Json(json!({ "calls": calls })))
}

async fn originate(
    State(s): State<Arc<HttpState>>,
    Json(call): Json<OriginateCall>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let session = s.calls.originate(call).await?;
    Ok((StatusCode::CREATED, Json(json!({ "session": session }))))
}

async fn hangup(
    State(s): State<Arc<HttpState>>,
    Path(session): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session: SessionId = session
        .parse()
        .map_err(|e| Error::invalid(format!("session id: {e}")))?;
    s.calls.hangup(session).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SessionQuery {
    tenant: Option<String>,
}

async fn sessions(
    State(s): State<Arc<HttpState>>,
    Query(q): Query<SessionQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant: Option<TenantId> = match q.tenant {
        Some(t) => Some(
            t.parse()
                .map_err(|e| Error::invalid(format!("tenant: {e}")))?,
        ),
        None => None,
    };
    let list = s.store.list(tenant.as_ref()).await?;
    Ok(Json(json!({ "sessions": list })))
}
