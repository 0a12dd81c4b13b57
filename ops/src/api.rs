//! The admin HTTP API, web monitor and metrics endpoint every master serves (port 9425).
//!
//! The routes are generic over an [`AdminBackend`] that the master implements, so this crate
//! knows nothing of the namespace. Reads are open to anyone who can reach the port (loopback
//! by default); anything that changes the cluster needs `Authorization: Bearer <token>` when
//! the master has an admin token.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// One member of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    /// `leader`, `follower`, `learner` or `candidate`.
    pub role: String,
    /// Last log index known to be applied (own) or replicated (others, seen from the leader).
    pub applied: Option<u64>,
    pub raft_addr: String,
    pub client_addr: String,
    pub admin_addr: String,
}

/// One data folder of a chunkserver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskView {
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub chunks: u64,
    pub leaving: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverView {
    pub id: u64,
    pub addr: String,
    pub label: String,
    pub alive: bool,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub chunks: u64,
    pub crc_errors: u64,
    pub disks: Vec<DiskView>,
}

/// A mounted client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: u64,
    pub peer: String,
    pub client_name: String,
    pub path: String,
    pub read_only: bool,
    pub meta: bool,
}

/// What `GET /api/v1/cluster` answers, on every master, leader or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The master answering.
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberView>,
    pub chunkservers: Vec<ChunkserverView>,
    pub inodes: u64,
    pub chunks: u64,
    /// Chunks by (goal, valid copies): how many chunks have fewer copies than their goal.
    pub chunk_copies: Vec<CopiesCount>,
    pub sessions: Vec<SessionSummary>,
    pub exports: Vec<String>,
    /// The replication manager's work (the leader only).
    #[serde(default)]
    pub replication: Option<ReplicationView>,
    /// Client requests the answering master served since it started, by operation.
    #[serde(default)]
    pub operations: Vec<OperationCount>,
}

/// Requests of one kind (`lookup`, `create`, `write_chunk`, ...) a master served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationCount {
    pub op: String,
    pub count: u64,
    /// Requests answered with an error (including `NotLeader` redirects).
    pub errors: u64,
}

/// What the leader's last replication pass found, and the orders sent since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationView {
    pub passes: u64,
    pub under_goal: u64,
    pub over_goal: u64,
    /// Chunks with no copy of their current version anywhere.
    pub missing: u64,
    /// Replicas of an old version.
    pub stale: u64,
    /// Copies on folders marked for removal that can go.
    pub leaving: u64,
    /// Chunks with replicas but no file.
    pub orphans: u64,
    pub replicated: u64,
    pub deleted: u64,
    pub failed: u64,
    /// Copies made to even out disk usage (counted in `replicated` too).
    #[serde(default)]
    pub rebalanced: u64,
}

impl ReplicationView {
    /// The last pass found nothing it could do (a chunk with no copy at all cannot be repaired).
    pub fn idle(&self) -> bool {
        self.under_goal + self.over_goal + self.stale + self.leaving + self.orphans == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiesCount {
    pub goal: u8,
    pub valid: u32,
    pub chunks: u64,
}

/// `POST /api/v1/members`: add a learner, or promote an existing one to voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddMember {
    pub id: u64,
    #[serde(default)]
    pub raft_addr: String,
    #[serde(default)]
    pub client_addr: String,
    #[serde(default)]
    pub cs_addr: String,
    #[serde(default)]
    pub admin_addr: String,
    /// Make it a voter once it has caught up.
    #[serde(default)]
    pub voter: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferLeader {
    /// The member to hand leadership to (any other voter when absent).
    pub to: Option<u64>,
}

/// One point of the monitor's charts, taken by each master every [`HISTORY_EVERY_SECS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub inodes: u64,
    pub chunks: u64,
    /// Client requests this master has served since it started.
    pub requests: u64,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// How often a master samples its state for the charts, and how many samples it keeps (a
/// day's worth).
pub const HISTORY_EVERY_SECS: u64 = 10;
pub const HISTORY_LEN: usize = 8640;

/// An admin call that did not happen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminError {
    pub error: String,
    /// When this master is not the leader: where the leader's admin API is.
    pub leader_admin_addr: Option<String>,
    #[serde(skip)]
    pub status: u16,
}

impl AdminError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        AdminError { error: error.into(), leader_admin_addr: None, status }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self)).into_response()
    }
}

/// What a master provides to the admin API.
pub trait AdminBackend: Send + Sync + 'static {
    fn cluster(&self) -> impl Future<Output = ClusterView> + Send;
    fn add_member(&self, req: AddMember) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn remove_member(&self, id: u64) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn transfer_leader(&self, to: Option<u64>) -> impl Future<Output = Result<u64, AdminError>> + Send;
    /// Builds a metadata snapshot; returns its last log index.
    fn snapshot(&self) -> impl Future<Output = Result<u64, AdminError>> + Send;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// This master's samples for the charts, oldest first.
    fn history(&self) -> Vec<Sample>;
    fn admin_token(&self) -> Option<String>;
}

const MONITOR_HTML: &str = include_str!("monitor.html");

/// Whether a change may go ahead: the master has an ADMIN_TOKEN and the call carries it.
fn authorized(token: Option<&str>, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(token) = token else {
        return Err(AdminError::new(
            403,
            "this master has no ADMIN_TOKEN in its configuration, so it takes no changes",
        ));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token) {
        Ok(())
    } else {
        Err(AdminError::new(401, "this call needs the admin token (Authorization: Bearer ...)"))
    }
}

async fn cluster<B: AdminBackend>(State(b): State<Arc<B>>) -> Json<ClusterView> {
    Json(b.cluster().await)
}

async fn add_member<B: AdminBackend>(
    State(b): State<Arc<B>>,
    headers: HeaderMap,
    Json(req): Json<AddMember>,
) -> Result<Json<serde_json::Value>, AdminError> {
    authorized(b.admin_token().as_deref(), &headers)?;
    let id = req.id;
    b.add_member(req).await?;
    Ok(Json(serde_json::json!({ "added": id })))
}

async fn remove_member<B: AdminBackend>(
    State(b): State<Arc<B>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<serde_json::Value>, AdminError> {
    authorized(b.admin_token().as_deref(), &headers)?;
    b.remove_member(id).await?;
    Ok(Json(serde_json::json!({ "removed": id })))
}

async fn transfer<B: AdminBackend>(
    State(b): State<Arc<B>>,
    headers: HeaderMap,
    body: Option<Json<TransferLeader>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    authorized(b.admin_token().as_deref(), &headers)?;
    let leader = b.transfer_leader(body.and_then(|Json(t)| t.to)).await?;
    Ok(Json(serde_json::json!({ "leader": leader })))
}

async fn snapshot<B: AdminBackend>(
    State(b): State<Arc<B>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, AdminError> {
    authorized(b.admin_token().as_deref(), &headers)?;
    let index = b.snapshot().await?;
    Ok(Json(serde_json::json!({ "snapshot_index": index })))
}

async fn metrics<B: AdminBackend>(State(b): State<Arc<B>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], b.metrics())
}

async fn history<B: AdminBackend>(State(b): State<Arc<B>>) -> Json<Vec<Sample>> {
    Json(b.history())
}

async fn monitor() -> Html<&'static str> {
    Html(MONITOR_HTML)
}

pub fn router<B: AdminBackend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/", get(monitor))
        .route("/api/v1/cluster", get(cluster::<B>))
        .route("/api/v1/members", post(add_member::<B>))
        .route("/api/v1/members/{id}", delete(remove_member::<B>))
        .route("/api/v1/leader/transfer", post(transfer::<B>))
        .route("/api/v1/snapshot", post(snapshot::<B>))
        .route("/api/v1/history", get(history::<B>))
        .route("/metrics", get(metrics::<B>))
        .with_state(backend)
}

/// Serves the admin API on `addr` until `stop` is cancelled.
pub async fn serve<B: AdminBackend>(
    addr: SocketAddr,
    backend: Arc<B>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(backend);
    tokio::spawn(async move {
        let res = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    /// Changes need the master's token; a master without one takes none, whatever is sent.
    #[test]
    fn changes_need_the_token_and_a_master_without_one_refuses_them() {
        assert!(authorized(Some("t"), &bearer("t")).is_ok());
        assert_eq!(authorized(Some("t"), &bearer("x")).unwrap_err().status, 401);
        assert_eq!(authorized(Some("t"), &HeaderMap::new()).unwrap_err().status, 401);
        assert_eq!(authorized(None, &bearer("t")).unwrap_err().status, 403);
        assert_eq!(authorized(None, &bearer("")).unwrap_err().status, 403);
        assert_eq!(authorized(None, &HeaderMap::new()).unwrap_err().status, 403);
    }
}
