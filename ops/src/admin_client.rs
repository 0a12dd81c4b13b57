//! A client of the admin API ([`crate::api`]) over plain HTTP: it reads the cluster view of any
//! master, finds the leader among the masters it is given, sends changes there with the admin
//! token (following `NotLeader` answers), and turns every failure into an error that says what
//! happened: a master that cannot be reached, a token that is missing or refused, or the API's
//! own error text. No answer, however malformed, makes it panic.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::api::{AddMember, AdminError, ClusterView, TransferLeader};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read of the cluster view may take, unless told otherwise.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a cluster view with many sessions and chunkservers stays far below).
const MAX_BODY: u64 = 64 << 20;
/// How long a change waits for a leader to be elected or found before giving up.
const FIND_LEADER_FOR: Duration = Duration::from_secs(15);

/// Why an admin call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the admin API at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the master at {addr} did not answer within {after:?} (a change may still complete)")]
    Timeout { addr: String, after: Duration },
    /// 401/403 and no token was sent.
    #[error("the master at {addr} refused the change: it needs the admin token and none was given")]
    TokenMissing { addr: String },
    /// 401/403 although a token was sent.
    #[error("the master at {addr} refused the admin token (HTTP {status}): it is not the master's ADMIN_TOKEN")]
    TokenRefused { addr: String, status: u16 },
    /// The API answered with an error of its own.
    #[error("master at {addr}: {error} (HTTP {status})")]
    Api { addr: String, status: u16, error: String, leader_admin_addr: Option<String> },
    /// An answer that is not what the API sends.
    #[error("unexpected answer from {addr} (HTTP {status}): {reason}")]
    BadAnswer { addr: String, status: u16, reason: String },
    /// No master in the list answered.
    #[error("no master's admin API answers: {0}")]
    NoneReachable(String),
    /// Masters answer, but none knows a leader.
    #[error("the masters answer but none knows a leader (election running, or no quorum): {0}")]
    NoLeader(String),
}

impl CallError {
    /// The call reached no master (as opposed to a master refusing it).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable { .. } | CallError::Timeout { .. } | CallError::NoneReachable(_))
    }
}

/// A short, single-line excerpt of an answer body for error messages.
fn excerpt(body: &str) -> String {
    let one_line: String = body.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    if one_line.is_empty() {
        "empty body".into()
    } else {
        one_line
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Delete,
}

/// Talks to the admin API of a set of masters (their admin addresses, `host:port`).
#[derive(Clone)]
pub struct AdminClient {
    addrs: Vec<String>,
    token: Option<String>,
    read_timeout: Duration,
    agent: ureq::Agent,
}

impl AdminClient {
    pub fn new(addrs: Vec<String>, token: Option<String>) -> AdminClient {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(READ_TIMEOUT))
            // Error answers carry the API's explanation in their body: read it.
            .http_status_as_error(false)
            // The admin API is reached directly, never through a proxy from the environment.
            .proxy(None)
            .build()
            .into();
        AdminClient { addrs, token: token.filter(|t| !t.is_empty()), read_timeout: READ_TIMEOUT, agent }
    }

    /// How long a read of the cluster view may take.
    pub fn with_read_timeout(mut self, t: Duration) -> AdminClient {
        self.read_timeout = t;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// A request with this call's timeout and, for changes, the admin token.
    fn prepare<B>(&self, b: ureq::RequestBuilder<B>, timeout: Duration, token: bool) -> ureq::RequestBuilder<B> {
        let b = b.config().timeout_global(Some(timeout)).build();
        match &self.token {
            Some(t) if token => b.header("Authorization", format!("Bearer {t}")),
            _ => b,
        }
    }

    /// One HTTP call to `addr`; the parsed answer of a 2xx status, or why there is none.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let url = format!("http://{addr}{path}");
        let sent = match method {
            Method::Get => self.prepare(self.agent.get(&url), timeout, false).call(),
            Method::Delete => self.prepare(self.agent.delete(&url), timeout, true).call(),
            Method::Post => {
                let b = self.prepare(self.agent.post(&url), timeout, true);
                match body {
                    Some(v) => b.send_json(v),
                    None => b.send_empty(),
                }
            }
        };
        let transport = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => CallError::Timeout { addr: addr.into(), after: timeout },
            other => CallError::Unreachable { addr: addr.into(), reason: other.to_string() },
        };
        let mut resp = sent.map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(MAX_BODY).read_to_string().map_err(|e| match e {
            ureq::Error::Timeout(_) => CallError::Timeout { addr: addr.into(), after: timeout },
            other => CallError::BadAnswer { addr: addr.into(), status, reason: format!("reading the body: {other}") },
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| CallError::BadAnswer {
                addr: addr.into(),
                status,
                reason: format!("{e}: {}", excerpt(&text)),
            });
        }
        if status == 401 || status == 403 {
            return Err(match self.token {
                None => CallError::TokenMissing { addr: addr.into() },
                Some(_) => CallError::TokenRefused { addr: addr.into(), status },
            });
        }
        Err(match serde_json::from_str::<AdminError>(&text) {
            Ok(e) => {
                CallError::Api { addr: addr.into(), status, error: e.error, leader_admin_addr: e.leader_admin_addr }
            }
            Err(_) => CallError::Api {
                addr: addr.into(),
                status,
                error: if status == 404 && text.trim().is_empty() {
                    format!("{path} not found (is this an Alces admin API?)")
                } else {
                    excerpt(&text)
                },
                leader_admin_addr: None,
            },
        })
    }

    /// `GET /api/v1/cluster` at one master.
    pub fn cluster_at(&self, addr: &str) -> Result<ClusterView, CallError> {
        self.call(Method::Get, addr, "/api/v1/cluster", None, self.read_timeout)
    }

    /// The view of the first master that answers, and its address.
    pub fn any_cluster(&self) -> Result<(String, ClusterView), CallError> {
        let mut errors = String::new();
        for addr in &self.addrs {
            match self.cluster_at(addr) {
                Ok(v) => return Ok((addr.clone(), v)),
                Err(e) => append(&mut errors, &e),
            }
        }
        Err(CallError::NoneReachable(if errors.is_empty() { "no address given".into() } else { errors }))
    }

    /// The leader's admin address and its own view. Asks the masters given, follows the leader
    /// each of them names, and tries the other members their views list, each address once.
    pub fn leader(&self) -> Result<(String, ClusterView), CallError> {
        let mut errors = String::new();
        let mut answered = false;
        let mut queue: VecDeque<String> = self.addrs.iter().cloned().collect();
        let mut asked: HashSet<String> = HashSet::new();
        while let Some(addr) = queue.pop_front() {
            if addr.is_empty() || !asked.insert(addr.clone()) {
                continue;
            }
            let view = match self.cluster_at(&addr) {
                Ok(v) => v,
                Err(e) => {
                    append(&mut errors, &e);
                    continue;
                }
            };
            answered = true;
            if leads(&view) {
                return Ok((addr, view));
            }
            let _ = match view.leader {
                None => write!(errors, "{}{addr}: master {} knows no leader", sep(&errors), view.id),
                Some(l) if l == view.id => {
                    write!(errors, "{}{addr}: master {l} leads a group it is no longer in", sep(&errors))
                }
                Some(l) => write!(errors, "{}{addr}: master {} names leader {l}", sep(&errors), view.id),
            };
            if let Some(m) = view.leader.and_then(|l| view.members.iter().find(|m| m.id == l)) {
                queue.push_front(m.admin_addr.clone());
            }
            queue.extend(view.members.iter().map(|m| m.admin_addr.clone()));
        }
        if answered {
            Err(CallError::NoLeader(errors))
        } else {
            Err(CallError::NoneReachable(if errors.is_empty() { "no address given".into() } else { errors }))
        }
    }

    /// The leader, waiting up to `wait` while an election runs.
    pub fn wait_leader(&self, wait: Duration) -> Result<(String, ClusterView), CallError> {
        let deadline = Instant::now() + wait;
        loop {
            match self.leader() {
                Err(CallError::NoLeader(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// A change at the leader: finds it, sends the call, and when the master answers that it
    /// no longer leads (HTTP 409), follows to the leader it names or looks again.
    fn change<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let deadline = Instant::now() + FIND_LEADER_FOR;
        let mut at: Option<String> = None;
        loop {
            let addr = match at.take() {
                Some(a) => a,
                None => self.wait_leader(deadline.saturating_duration_since(Instant::now()))?.0,
            };
            match self.call(method, &addr, path, body, timeout) {
                Err(CallError::Api { status: 409, leader_admin_addr, .. }) if Instant::now() < deadline => {
                    at = leader_admin_addr.filter(|a| !a.is_empty() && *a != addr);
                    if at.is_none() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                other => return other,
            }
        }
    }

    /// `POST /api/v1/members` at the leader.
    pub fn add_member(&self, req: &AddMember, timeout: Duration) -> Result<Value, CallError> {
        let body = serde_json::to_value(req).map_err(|e| CallError::BadAnswer {
            addr: String::new(),
            status: 0,
            reason: format!("encoding the request: {e}"),
        })?;
        self.change(Method::Post, "/api/v1/members", Some(&body), timeout)
    }

    /// `DELETE /api/v1/members/{id}` at the leader.
    pub fn remove_member(&self, id: u64, timeout: Duration) -> Result<Value, CallError> {
        self.change(Method::Delete, &format!("/api/v1/members/{id}"), None, timeout)
    }

    /// `POST /api/v1/leader/transfer` at the leader; the leader it reports.
    pub fn transfer_leader(&self, to: Option<u64>, timeout: Duration) -> Result<Option<u64>, CallError> {
        #[derive(Deserialize)]
        struct Answer {
            leader: Option<u64>,
        }
        let body = serde_json::json!(TransferLeader { to });
        let a: Answer = self.change(Method::Post, "/api/v1/leader/transfer", Some(&body), timeout)?;
        Ok(a.leader)
    }

    /// `POST /api/v1/snapshot` at one master (snapshots are built by each master on its own);
    /// the snapshot's last log index.
    pub fn snapshot_at(&self, addr: &str, timeout: Duration) -> Result<u64, CallError> {
        #[derive(Deserialize)]
        struct Answer {
            snapshot_index: u64,
        }
        let a: Answer = self.call(Method::Post, addr, "/api/v1/snapshot", None, timeout)?;
        Ok(a.snapshot_index)
    }
}

/// The master answering `view` leads a group it is a member of (a leader removed from the
/// group may go on believing it leads).
fn leads(view: &ClusterView) -> bool {
    view.leader == Some(view.id) && view.members.iter().any(|m| m.id == view.id)
}

fn sep(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        "; "
    }
}

fn append(errors: &mut String, e: &CallError) {
    let _ = write!(errors, "{}{e}", sep(errors));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A server answering each connection with the next canned response; returns its address.
    fn canned(responses: Vec<String>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for r in responses {
                let Ok((mut s, _)) = l.accept() else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(r.as_bytes());
            }
        });
        addr
    }

    fn http(status: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
    }

    fn view_json(id: u64, leader: Option<u64>, leader_admin: &str) -> String {
        let v = ClusterView {
            id,
            leader,
            term: 3,
            members: vec![crate::api::MemberView {
                id: leader.unwrap_or(id),
                role: "leader".into(),
                applied: Some(7),
                raft_addr: String::new(),
                client_addr: String::new(),
                admin_addr: leader_admin.into(),
            }],
            chunkservers: vec![],
            inodes: 1,
            chunks: 0,
            chunk_copies: vec![],
            sessions: vec![],
            exports: vec![],
            replication: None,
            operations: vec![],
        };
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn garbage_answers_are_errors_not_panics() {
        let addr = canned(vec![
            http("200 OK", "{not json"),
            http("200 OK", ""),
            http("500 Internal Server Error", "\u{0}\u{1}binary"),
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"id\":".into(),
            "garbage\r\n\r\n".into(),
            http("404 Not Found", ""),
        ]);
        let c = AdminClient::new(vec![addr.clone()], None);
        for _ in 0..6 {
            let e = c.cluster_at(&addr).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        let c = AdminClient::new(vec!["127.0.0.1:1".into()], None);
        assert!(matches!(c.cluster_at("127.0.0.1:1"), Err(CallError::Unreachable { .. })));
        assert!(matches!(c.leader(), Err(CallError::NoneReachable(_))));
    }

    #[test]
    fn a_missing_and_a_wrong_token_are_told_apart() {
        let body = r#"{"error":"this call needs the admin token","leader_admin_addr":null}"#;
        let addr = canned(vec![
            http("200 OK", &view_json(1, Some(1), "")),
            http("401 Unauthorized", body),
            http("200 OK", &view_json(1, Some(1), "")),
            http("401 Unauthorized", body),
        ]);
        let none = AdminClient::new(vec![addr.clone()], None);
        let e = none.remove_member(2, READ_TIMEOUT).unwrap_err();
        assert!(matches!(e, CallError::TokenMissing { .. }), "{e}");
        let wrong = AdminClient::new(vec![addr], Some("x".into()));
        let e = wrong.remove_member(2, READ_TIMEOUT).unwrap_err();
        assert!(matches!(e, CallError::TokenRefused { status: 401, .. }), "{e}");
    }

    #[test]
    fn a_change_follows_the_leader_a_master_names() {
        // The new leader takes the change; an error of the API comes back with its text.
        let new_leader = canned(vec![
            http("200 OK", r#"{"removed":3}"#),
            http("400 Bad Request", r#"{"error":"membership change refused: node 3 is not a member"}"#),
        ]);
        // The old leader still thinks it leads, then answers the change with NotLeader.
        let conflict = format!(r#"{{"error":"not the leader (leader: 3)","leader_admin_addr":"{new_leader}"}}"#);
        let old_leader = canned(vec![http("200 OK", &view_json(2, Some(2), "")), http("409 Conflict", &conflict)]);
        // The master asked first names the old leader.
        let follower = canned(vec![http("200 OK", &view_json(1, Some(2), &old_leader))]);
        let c = AdminClient::new(vec![follower], Some("t".into()));
        assert_eq!(c.remove_member(3, READ_TIMEOUT).unwrap()["removed"], 3);
        let e = c.call::<Value>(Method::Delete, &new_leader, "/api/v1/members/3", None, READ_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("node 3 is not a member"), "{e}");
    }
}
