//! The first exchange on every connection: protocol version, link kind, and for links between
//! cluster members a proof that both ends know the cluster secret.
//!
//! ```text
//! dialer -> listener  Hello    { magic, version, link, name, nonce_d }
//! listener -> dialer  Welcome  { version, nonce_l, proof_l } | Refused { reason }
//! dialer -> listener  Proof    { proof_d }                    (only when a secret is required)
//! listener -> dialer  Accepted | Refused { reason }
//! ```
//! `proof_l = HMAC-SHA256(secret, "listener" | link | nonce_d | nonce_l)` and
//! `proof_d = HMAC-SHA256(secret, "dialer" | link | nonce_l | nonce_d)`: the secret itself never
//! crosses the wire, a recorded exchange cannot be replayed (fresh nonces on both sides), and
//! each side learns that the other knows the secret.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::frame::{Connection, FrameError};

/// Bumped whenever a message enum changes incompatibly.
pub const PROTOCOL_VERSION: u16 = 5;

/// "ALCS": refuses connections from something that is not an Alces peer at all.
const MAGIC: u32 = 0x414c_4353;

/// The kind of link a connection carries; a listener accepts only its own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    /// master -> master (Raft).
    Peer,
    /// chunkserver -> master.
    ChunkserverMaster,
    /// client -> master.
    ClientMaster,
    /// client -> chunkserver.
    ClientChunkserver,
    /// chunkserver -> chunkserver (write chains, replication).
    ChunkserverChunkserver,
}

impl LinkKind {
    /// Links between members of the cluster must prove the cluster secret.
    pub fn requires_secret(self) -> bool {
        matches!(self, LinkKind::Peer | LinkKind::ChunkserverMaster | LinkKind::ChunkserverChunkserver)
    }
}

/// The shared cluster secret. Its bytes are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(s: impl AsRef<[u8]>) -> Self {
        Secret(s.as_ref().to_vec())
    }

    fn proof(&self, role: &[u8], link: LinkKind, first: &[u8; 32], second: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(role);
        mac.update(&[link as u8]);
        mac.update(first);
        mac.update(second);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    magic: u32,
    version: u16,
    link: LinkKind,
    name: String,
    nonce: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Welcome { version: u16, name: String, nonce: [u8; 32], proof: Option<[u8; 32]> },
    Accepted,
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Proof {
    proof: [u8; 32],
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not an Alces peer (bad magic)")]
    BadMagic,
    #[error("protocol version {theirs} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version { theirs: u16 },
    #[error("expected a {expected:?} link, got {got:?}")]
    WrongLink { expected: LinkKind, got: LinkKind },
    #[error("the peer does not know the cluster secret")]
    BadSecret,
    #[error("refused by peer: {0}")]
    Refused(String),
    #[error("protocol error during handshake: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One side's settings for the handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub link: LinkKind,
    /// Printed in the other side's logs ("master 2", "chunkserver 127.0.0.1:9422").
    pub name: String,
    /// Required when `link.requires_secret()`.
    pub secret: Option<Secret>,
    pub timeout: Duration,
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

impl Handshake {
    pub fn new(link: LinkKind, name: impl Into<String>, secret: Option<Secret>) -> Self {
        Handshake { link, name: name.into(), secret, timeout: Duration::from_secs(5) }
    }

    fn secret_for_link(&self) -> Result<Option<&Secret>, HandshakeError> {
        match (self.link.requires_secret(), &self.secret) {
            (true, None) => Err(HandshakeError::Protocol("this link needs a cluster secret and none is configured")),
            (true, Some(s)) => Ok(Some(s)),
            (false, _) => Ok(None),
        }
    }

    /// Runs the dialing side; returns the listener's name.
    pub async fn dial(&self, conn: &mut Connection) -> Result<String, HandshakeError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.dial_inner(conn)).await.map_err(|_| FrameError::Timeout(timeout))?
    }

    async fn dial_inner(&self, conn: &mut Connection) -> Result<String, HandshakeError> {
        let secret = self.secret_for_link()?;
        let my_nonce = nonce();
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            link: self.link,
            name: self.name.clone(),
            nonce: my_nonce,
        };
        conn.send(&hello).await?;
        let (their_name, their_nonce, their_proof) = match conn.expect::<Answer>().await? {
            Answer::Welcome { version, name, nonce, proof } => {
                if version != PROTOCOL_VERSION {
                    return Err(HandshakeError::Version { theirs: version });
                }
                (name, nonce, proof)
            }
            Answer::Refused { reason } => return Err(HandshakeError::Refused(reason)),
            Answer::Accepted => return Err(HandshakeError::Protocol("Accepted before Welcome")),
        };
        let Some(secret) = secret else { return Ok(their_name) };
        let proof = their_proof.ok_or(HandshakeError::BadSecret)?;
        secret
            .proof(b"listener", self.link, &my_nonce, &their_nonce)
            .verify_slice(&proof)
            .map_err(|_| HandshakeError::BadSecret)?;
        let mine = secret.proof(b"dialer", self.link, &their_nonce, &my_nonce).finalize().into_bytes();
        conn.send(&Proof { proof: mine.into() }).await?;
        match conn.expect::<Answer>().await? {
            Answer::Accepted => Ok(their_name),
            Answer::Refused { reason } => Err(HandshakeError::Refused(reason)),
            Answer::Welcome { .. } => Err(HandshakeError::Protocol("second Welcome")),
        }
    }

    /// Runs the listening side; returns the dialer's name. On failure the dialer has been told
    /// why (when the connection still works) and the caller drops the connection.
    pub async fn accept(&self, conn: &mut Connection) -> Result<String, HandshakeError> {
        self.accept_any(conn, &[]).await.map(|(name, _)| name)
    }

    /// Like [`Handshake::accept`], also accepting the link kinds in `also` (a port that serves
    /// both clients and peers); returns the dialer's name and link kind.
    pub async fn accept_any(
        &self,
        conn: &mut Connection,
        also: &[LinkKind],
    ) -> Result<(String, LinkKind), HandshakeError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.accept_inner(conn, also)).await.map_err(|_| FrameError::Timeout(timeout))?
    }

    async fn accept_inner(
        &self,
        conn: &mut Connection,
        also: &[LinkKind],
    ) -> Result<(String, LinkKind), HandshakeError> {
        let hello: Hello = conn.expect().await?;
        let link = hello.link;
        let refusal = if hello.magic != MAGIC {
            Some(HandshakeError::BadMagic)
        } else if hello.version != PROTOCOL_VERSION {
            Some(HandshakeError::Version { theirs: hello.version })
        } else if link != self.link && !also.contains(&link) {
            Some(HandshakeError::WrongLink { expected: self.link, got: link })
        } else {
            None
        };
        if let Some(err) = refusal {
            let _ = conn.send(&Answer::Refused { reason: err.to_string() }).await;
            return Err(err);
        }
        let secret = Handshake { link, ..self.clone() }.secret_for_link()?.cloned();
        let my_nonce = nonce();
        let proof =
            secret.as_ref().map(|s| s.proof(b"listener", link, &hello.nonce, &my_nonce).finalize().into_bytes().into());
        conn.send(&Answer::Welcome { version: PROTOCOL_VERSION, name: self.name.clone(), nonce: my_nonce, proof })
            .await?;
        let Some(secret) = secret else { return Ok((hello.name, link)) };
        let theirs: Proof = conn.expect().await?;
        if secret.proof(b"dialer", link, &my_nonce, &hello.nonce).verify_slice(&theirs.proof).is_err() {
            let _ = conn.send(&Answer::Refused { reason: "wrong cluster secret".into() }).await;
            return Err(HandshakeError::BadSecret);
        }
        conn.send(&Answer::Accepted).await?;
        Ok((hello.name, link))
    }
}

/// Decodes `payload` as each handshake message (for fuzzing; the results are dropped).
pub(crate) fn decode_every_message(payload: &[u8]) {
    let _ = crate::decode::<Hello>(payload);
    let _ = crate::decode::<Answer>(payload);
    let _ = crate::decode::<Proof>(payload);
}

/// The key an export password is checked with: its MD5, which is also what `md5pass=` in
/// the exports file holds, so the clear password need not be stored.
pub fn password_key(password: &str) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(password.as_bytes()).into()
}

/// A session's proof that it knows an export password: `HMAC-SHA256(key, nonce)`, with the
/// nonce the master sent for this connection (so a recorded proof is useless elsewhere).
pub fn password_proof(key: &[u8; 16], nonce: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn run(
        dialer: Handshake,
        listener: Handshake,
    ) -> (Result<String, HandshakeError>, Result<String, HandshakeError>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut c = Connection::new(s, 4096).unwrap();
            listener.accept(&mut c).await
        });
        let mut c = Connection::new(TcpStream::connect(addr).await.unwrap(), 4096).unwrap();
        let d = dialer.dial(&mut c).await;
        (d, server.await.unwrap())
    }

    fn hs(link: LinkKind, name: &str, secret: Option<&str>) -> Handshake {
        Handshake::new(link, name, secret.map(Secret::new))
    }

    #[tokio::test]
    async fn same_secret_is_accepted_both_ways() {
        let (d, l) = run(hs(LinkKind::Peer, "a", Some("s3cret")), hs(LinkKind::Peer, "b", Some("s3cret"))).await;
        assert_eq!(d.unwrap(), "b");
        assert_eq!(l.unwrap(), "a");
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_by_both_sides() {
        let (d, l) = run(hs(LinkKind::Peer, "a", Some("wrong")), hs(LinkKind::Peer, "b", Some("right"))).await;
        // The dialer detects the listener's bad proof first and gives up.
        assert!(matches!(d, Err(HandshakeError::BadSecret)), "{d:?}");
        assert!(l.is_err());
    }

    /// A peer speaking another protocol version is refused, and told which one this side
    /// speaks.
    #[tokio::test]
    async fn another_protocol_version_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut c = Connection::new(s, 4096).unwrap();
            hs(LinkKind::ClientMaster, "b", None).accept(&mut c).await
        });
        let mut c = Connection::new(TcpStream::connect(addr).await.unwrap(), 4096).unwrap();
        let old = PROTOCOL_VERSION - 1;
        let hello =
            Hello { magic: MAGIC, version: old, link: LinkKind::ClientMaster, name: "old".into(), nonce: nonce() };
        c.send(&hello).await.unwrap();
        match c.expect::<Answer>().await.unwrap() {
            Answer::Refused { reason } => {
                assert!(reason.contains(&format!("version {old}")) && reason.contains(&PROTOCOL_VERSION.to_string()))
            }
            other => panic!("a hello of version {old} got {other:?}"),
        }
        let refused = server.await.unwrap();
        assert!(matches!(refused, Err(HandshakeError::Version { theirs }) if theirs == old), "{refused:?}");
    }

    #[tokio::test]
    async fn wrong_link_is_refused() {
        let (d, l) = run(hs(LinkKind::ClientMaster, "a", None), hs(LinkKind::Peer, "b", Some("x"))).await;
        assert!(matches!(d, Err(HandshakeError::Refused(_))), "{d:?}");
        assert!(matches!(l, Err(HandshakeError::WrongLink { .. })), "{l:?}");
    }

    #[tokio::test]
    async fn one_port_can_serve_clients_and_peers() {
        async fn run_any(
            dialer: Handshake,
        ) -> (Result<String, HandshakeError>, Result<(String, LinkKind), HandshakeError>) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let mut c = Connection::new(s, 4096).unwrap();
                let hs = Handshake::new(LinkKind::ClientChunkserver, "cs", Some(Secret::new("k")));
                hs.accept_any(&mut c, &[LinkKind::ChunkserverChunkserver]).await
            });
            let mut c = Connection::new(TcpStream::connect(addr).await.unwrap(), 4096).unwrap();
            let d = dialer.dial(&mut c).await;
            (d, server.await.unwrap())
        }
        let (d, l) = run_any(hs(LinkKind::ClientChunkserver, "client", None)).await;
        assert!(d.is_ok() && l.unwrap().1 == LinkKind::ClientChunkserver);
        let (d, l) = run_any(hs(LinkKind::ChunkserverChunkserver, "peer", Some("k"))).await;
        assert!(d.is_ok() && l.unwrap().1 == LinkKind::ChunkserverChunkserver);
        let (d, l) = run_any(hs(LinkKind::ChunkserverChunkserver, "intruder", Some("bad"))).await;
        assert!(d.is_err() && l.is_err());
        let (d, _) = run_any(hs(LinkKind::Peer, "master", Some("k"))).await;
        assert!(d.is_err(), "a link kind the port does not serve is refused");
    }

    #[tokio::test]
    async fn client_links_need_no_secret() {
        let (d, l) = run(hs(LinkKind::ClientMaster, "c", None), hs(LinkKind::ClientMaster, "m", None)).await;
        assert_eq!(d.unwrap(), "m");
        assert_eq!(l.unwrap(), "c");
    }
}
