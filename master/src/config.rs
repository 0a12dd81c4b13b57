//! `master.cfg`: every setting of `alces-master`, its default, and its check. Each key is also
//! a flag (`DATA_PATH` is `--data-path`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use alces_config::{parse_size, parse_threads, ConfigError, Key, Settings};
use alces_proto::types::{Goal, TrashTime};
use alces_proto::Secret;
use alces_raft_store::{Member, NodeId};

pub const DEFAULT_FILE: &str = "/etc/alces/master.cfg";

pub static KEYS: &[Key] = &[
    Key { name: "ID", default: None, help: "this master's member id (a small positive number)" },
    Key { name: "DATA_PATH", default: Some("/var/lib/alces/master"), help: "RocksDB and snapshot files" },
    Key { name: "ADVERTISE_HOST", default: None, help: "host name or address the other masters, chunkservers and clients use to reach this one (default: the listen host, or 127.0.0.1 when that is *)" },
    Key { name: "RAFT_LISTEN_HOST", default: Some("*"), help: "address for Raft peers" },
    Key { name: "RAFT_LISTEN_PORT", default: Some("9419"), help: "port for Raft peers" },
    Key { name: "MATOCS_LISTEN_HOST", default: Some("*"), help: "address for chunkservers" },
    Key { name: "MATOCS_LISTEN_PORT", default: Some("9420"), help: "port for chunkservers" },
    Key { name: "MATOCL_LISTEN_HOST", default: Some("*"), help: "address for clients" },
    Key { name: "MATOCL_LISTEN_PORT", default: Some("9421"), help: "port for clients" },
    Key { name: "ADMIN_LISTEN_HOST", default: Some("127.0.0.1"), help: "address of the admin API, monitor and metrics" },
    Key { name: "ADMIN_LISTEN_PORT", default: Some("9425"), help: "port of the admin API, monitor and metrics" },
    Key { name: "PEERS", default: None, help: "initial voters for a new cluster: ID@HOST[:RAFT[:CLIENT[:CS[:ADMIN]]]] separated by commas; every initial master gets the same list" },
    Key { name: "CLUSTER_SECRET", default: None, help: "secret shared by all masters and chunkservers" },
    Key { name: "CLUSTER_SECRET_FILE", default: None, help: "file holding the cluster secret (instead of CLUSTER_SECRET)" },
    Key { name: "ADMIN_TOKEN", default: None, help: "token required by admin API calls that change the cluster (none: changes are refused)" },
    Key { name: "EXPORTS_FILENAME", default: Some("/etc/alces/exports.cfg"), help: "exports file (mfsexports.cfg syntax)" },
    Key { name: "DEFAULT_GOAL", default: Some("2"), help: "goal of the root directory of a new file system" },
    Key { name: "DEFAULT_TRASHTIME", default: Some("86400"), help: "trash time (seconds) of the root directory of a new file system" },
    Key { name: "SESSION_SUSTAIN_TIME", default: Some("86400"), help: "seconds a disconnected session is kept" },
    Key { name: "CHUNKSERVER_TIMEOUT", default: Some("60"), help: "seconds without a heartbeat before a chunkserver counts as lost" },
    Key { name: "REPLICATIONS_DELAY_INIT", default: Some("30"), help: "seconds a new leader waits before repairing, trimming or deleting replicas (writes under a previous leader's leases finish first)" },
    Key { name: "DELETE_DELAY_INIT", default: Some("60"), help: "seconds a new leader waits, unless every mount told it the files it holds open sooner, before it frees deleted files" },
    Key { name: "ACCEPTABLE_PERCENTAGE_DIFFERENCE", default: Some("1.0"), help: "chunks move from the fullest chunkserver to the emptiest while their usage (percent of space) differs by more than this" },
    Key { name: "SNAPSHOT_EVERY", default: Some("100000"), help: "build a metadata snapshot after this many log entries" },
    Key { name: "KEEP_LOGS", default: Some("10000"), help: "log entries kept behind a snapshot" },
    Key { name: "ELECTION_TIMEOUT_MS", default: Some("300"), help: "minimum election timeout; the maximum is twice this. Followers start an election 3 to 4 times this after the last heartbeat (a leader lease of twice it, then the random timeout)" },
    Key { name: "HEARTBEAT_MS", default: Some("100"), help: "leader heartbeat interval" },
    Key { name: "WORKER_THREADS", default: Some("1"), help: "threads that run the master's work: 1 runs it all on one thread, which costs the least CPU per change (no hand-offs between threads); more spread requests over that many cores" },
    Key { name: "TEST_UNSAFE_DISABLE_WAL", default: Some("0"), help: "TESTS ONLY: 1 turns the write-ahead log off, so acknowledged changes are lost on a crash (to prove the fault-injection suite notices)" },
];

/// Ports of a member, in the order PEERS lists them.
const DEFAULT_PORTS: [u16; 4] = [9419, 9421, 9420, 9425];

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub id: NodeId,
    pub data_path: PathBuf,
    pub raft_listen: SocketAddr,
    pub cs_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// This master as the others see it.
    pub member: Member,
    pub peers: Option<BTreeMap<NodeId, Member>>,
    pub secret: Secret,
    pub admin_token: Option<String>,
    pub exports_file: PathBuf,
    pub default_goal: Goal,
    pub default_trash_time: TrashTime,
    pub session_sustain: Duration,
    pub chunkserver_timeout: Duration,
    pub replications_delay_init: Duration,
    pub delete_delay_init: Duration,
    /// ACCEPTABLE_PERCENTAGE_DIFFERENCE, in millionths of a server's space.
    pub acceptable_difference_ppm: u64,
    pub snapshot_every: u64,
    pub keep_logs: u64,
    /// WORKER_THREADS: 1 for a single-threaded runtime.
    pub worker_threads: usize,
    /// TEST_UNSAFE_DISABLE_WAL: sabotage for the fault-injection suite's self-test.
    pub unsafe_no_wal: bool,
    pub election_timeout_ms: u64,
    pub heartbeat_ms: u64,
}

fn listen(s: &Settings, host_key: &str, port_key: &str) -> Result<SocketAddr, ConfigError> {
    let port: u16 = s.get(port_key)?;
    s.get_with(host_key, |host| {
        let host = if host == "*" { "0.0.0.0" } else { host };
        (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| "resolves to no address".to_string())
    })
}

/// `ID@HOST[:RAFT[:CLIENT[:CS[:ADMIN]]]]`, comma separated.
pub fn parse_peers(v: &str) -> Result<BTreeMap<NodeId, Member>, String> {
    let mut out = BTreeMap::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, rest) = item.split_once('@').ok_or_else(|| format!("{item:?}: expected ID@HOST[:PORTS]"))?;
        let id: NodeId = id.parse().map_err(|_| format!("{item:?}: {id:?} is not a member id"))?;
        if id == 0 {
            return Err(format!("{item:?}: member ids start at 1"));
        }
        let mut parts = rest.split(':');
        let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(|| format!("{item:?}: no host"))?;
        let mut ports = DEFAULT_PORTS;
        for (i, p) in parts.enumerate() {
            if i >= 4 {
                return Err(format!("{item:?}: at most four ports (raft, client, chunkserver, admin)"));
            }
            ports[i] = p.parse().map_err(|_| format!("{item:?}: {p:?} is not a port"))?;
        }
        let member = Member {
            raft_addr: format!("{host}:{}", ports[0]),
            client_addr: format!("{host}:{}", ports[1]),
            cs_addr: format!("{host}:{}", ports[2]),
            admin_addr: format!("{host}:{}", ports[3]),
        };
        if out.insert(id, member).is_some() {
            return Err(format!("member {id} is listed twice"));
        }
    }
    Ok(out)
}

impl MasterConfig {
    pub fn from_settings(s: &Settings) -> Result<MasterConfig, ConfigError> {
        let id: NodeId = s.get_with("ID", |v| match v.parse::<NodeId>() {
            Ok(0) | Err(_) => Err("must be a positive number".into()),
            Ok(n) => Ok(n),
        })?;
        let raft_listen = listen(s, "RAFT_LISTEN_HOST", "RAFT_LISTEN_PORT")?;
        let cs_listen = listen(s, "MATOCS_LISTEN_HOST", "MATOCS_LISTEN_PORT")?;
        let client_listen = listen(s, "MATOCL_LISTEN_HOST", "MATOCL_LISTEN_PORT")?;
        let admin_listen = listen(s, "ADMIN_LISTEN_HOST", "ADMIN_LISTEN_PORT")?;
        let advertise = match s.opt::<String>("ADVERTISE_HOST")? {
            Some(h) => h,
            None if raft_listen.ip().is_unspecified() => "127.0.0.1".into(),
            None => raft_listen.ip().to_string(),
        };
        let member = Member {
            raft_addr: format!("{advertise}:{}", raft_listen.port()),
            client_addr: format!("{advertise}:{}", client_listen.port()),
            cs_addr: format!("{advertise}:{}", cs_listen.port()),
            admin_addr: format!(
                "{}:{}",
                if admin_listen.ip().is_unspecified() { advertise.clone() } else { admin_listen.ip().to_string() },
                admin_listen.port()
            ),
        };
        let peers = match s.raw("PEERS") {
            Some(_) => Some(s.get_with("PEERS", |v| {
                let peers = parse_peers(v)?;
                if !peers.contains_key(&id) {
                    return Err(format!("does not list this master (ID {id})"));
                }
                Ok(peers)
            })?),
            None => None,
        };
        let secret = match (s.opt::<String>("CLUSTER_SECRET")?, s.raw("CLUSTER_SECRET_FILE")) {
            (Some(v), _) if !v.is_empty() => Secret::new(v),
            (_, Some(_)) => s.get_with("CLUSTER_SECRET_FILE", |path| {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
                let t = text.trim();
                if t.is_empty() {
                    return Err("the file is empty".into());
                }
                Ok(Secret::new(t))
            })?,
            _ => {
                return Err(ConfigError::Missing { key: "CLUSTER_SECRET".into(), flag: "cluster-secret".into() });
            }
        };
        Ok(MasterConfig {
            id,
            data_path: s.get("DATA_PATH")?,
            raft_listen,
            cs_listen,
            client_listen,
            admin_listen,
            member,
            peers,
            secret,
            admin_token: s.opt("ADMIN_TOKEN")?.filter(|t: &String| !t.trim().is_empty()),
            exports_file: s.get("EXPORTS_FILENAME")?,
            default_goal: s.get_with("DEFAULT_GOAL", |v| {
                v.parse::<u8>().ok().and_then(|g| Goal::new(g).ok()).ok_or_else(|| "must be 1..9".to_string())
            })?,
            default_trash_time: TrashTime(s.get("DEFAULT_TRASHTIME")?),
            session_sustain: Duration::from_secs(s.get("SESSION_SUSTAIN_TIME")?),
            chunkserver_timeout: Duration::from_secs(s.get("CHUNKSERVER_TIMEOUT")?),
            replications_delay_init: Duration::from_secs(s.get("REPLICATIONS_DELAY_INIT")?),
            delete_delay_init: Duration::from_secs(s.get("DELETE_DELAY_INIT")?),
            acceptable_difference_ppm: s.get_with("ACCEPTABLE_PERCENTAGE_DIFFERENCE", |v| match v.parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok((p * 10_000.0).round() as u64),
                _ => Err("must be a percentage from 0 to 100".into()),
            })?,
            snapshot_every: s.get_with("SNAPSHOT_EVERY", parse_size)?,
            keep_logs: s.get("KEEP_LOGS")?,
            worker_threads: s.get_with("WORKER_THREADS", parse_threads)?,
            unsafe_no_wal: s.get_with("TEST_UNSAFE_DISABLE_WAL", |v| match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err("must be 0 or 1".into()),
            })?,
            election_timeout_ms: s.get_with("ELECTION_TIMEOUT_MS", |v| match v.parse::<u64>() {
                Ok(n) if n >= 50 => Ok(n),
                _ => Err("must be a number of milliseconds, at least 50".into()),
            })?,
            heartbeat_ms: s.get("HEARTBEAT_MS")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        let mut s = Settings::defaults(KEYS);
        s.apply_text(std::path::Path::new("master.cfg"), text).unwrap();
        s
    }

    /// `ops/examples/master.cfg` and `exports.cfg` are what they say (the secret file they
    /// name does not exist here, so the secret is given inline).
    #[test]
    fn the_example_configs_are_valid() {
        let dir = alces_testkit::crate_dir().join("../ops/examples");
        let mut s = Settings::defaults(KEYS);
        s.apply_file(&dir.join("master.cfg")).unwrap();
        s.apply_text(std::path::Path::new("test"), "CLUSTER_SECRET = x").unwrap();
        let c = MasterConfig::from_settings(&s).unwrap();
        assert_eq!((c.id, c.peers.as_ref().map(|p| p.len())), (1, Some(3)));
        assert_eq!(c.member.cs_addr, "10.0.0.1:9420");
        crate::exports::Exports::load(&dir.join("exports.cfg")).unwrap();
    }

    #[test]
    fn a_minimal_config() {
        let c = MasterConfig::from_settings(&settings("ID = 2\nCLUSTER_SECRET = x\nADVERTISE_HOST = m2\n")).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.member.raft_addr, "m2:9419");
        assert_eq!(c.member.client_addr, "m2:9421");
        assert_eq!(c.member.admin_addr, "127.0.0.1:9425");
        assert_eq!(c.default_goal, Goal(2));
        assert!(c.peers.is_none());
    }

    #[test]
    fn bad_rebalancing_and_test_switch_values_name_their_key() {
        let base = "ID = 2\nCLUSTER_SECRET = x\n";
        let c = MasterConfig::from_settings(&settings(&format!("{base}ACCEPTABLE_PERCENTAGE_DIFFERENCE = 2.5\n")));
        assert_eq!(c.unwrap().acceptable_difference_ppm, 25_000);
        for bad in [
            "ACCEPTABLE_PERCENTAGE_DIFFERENCE = 150",
            "ACCEPTABLE_PERCENTAGE_DIFFERENCE = lots",
            "TEST_UNSAFE_DISABLE_WAL = yes",
        ] {
            let e = MasterConfig::from_settings(&settings(&format!("{base}{bad}\n"))).expect_err(bad).to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn peers_with_and_without_ports() {
        let p = parse_peers("1@a, 2@b:1:2:3:4").unwrap();
        assert_eq!(p[&1].cs_addr, "a:9420");
        assert_eq!((p[&2].raft_addr.as_str(), p[&2].admin_addr.as_str()), ("b:1", "b:4"));
        assert!(parse_peers("x@a").is_err());
        assert!(parse_peers("1@a,1@b").unwrap_err().contains("twice"));
        let err = MasterConfig::from_settings(&settings("ID = 3\nCLUSTER_SECRET = x\nPEERS = 1@a,2@b\n")).unwrap_err();
        assert!(err.to_string().starts_with("master.cfg:3: PEERS"), "{err}");
    }

    #[test]
    fn errors_name_key_and_line() {
        let err = MasterConfig::from_settings(&settings("CLUSTER_SECRET = x\nID = zero\n")).unwrap_err().to_string();
        assert!(err.starts_with("master.cfg:2: ID = \"zero\""), "{err}");
        let err = MasterConfig::from_settings(&settings("ID = 1\n")).unwrap_err().to_string();
        assert!(err.contains("CLUSTER_SECRET is required"), "{err}");
        let err = MasterConfig::from_settings(&settings("ID=1\nCLUSTER_SECRET=x\n\nDEFAULT_GOAL = 12\n")).unwrap_err();
        assert!(err.to_string().starts_with("master.cfg:4: DEFAULT_GOAL"), "{err}");
    }
}
