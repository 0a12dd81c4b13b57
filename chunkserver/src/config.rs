//! `chunkserver.cfg`: every setting of `alces-chunkserver`. Each key is also a flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use alces_config::{parse_size, parse_threads, ConfigError, Key, Settings};
use alces_proto::types::ChunkserverId;
use alces_proto::Secret;

pub const DEFAULT_FILE: &str = "/etc/alces/chunkserver.cfg";

pub static KEYS: &[Key] = &[
    Key { name: "ID", default: None, help: "chunkserver id (default: a random id kept in DATA_PATH/chunkserver.id)" },
    Key { name: "DATA_PATH", default: Some("/var/lib/alces/chunkserver"), help: "where the chunkserver keeps its id" },
    Key {
        name: "HDD_CONF_FILENAME",
        default: Some("/etc/alces/hdd.cfg"),
        help: "data folders, one a line (* prefix: marked for removal)",
    },
    Key {
        name: "MASTERS",
        default: Some("127.0.0.1:9420"),
        help: "host:port of every master's chunkserver port, comma separated",
    },
    Key { name: "CSSERV_LISTEN_HOST", default: Some("*"), help: "address of the data service" },
    Key { name: "CSSERV_LISTEN_PORT", default: Some("9422"), help: "port of the data service" },
    Key {
        name: "ADVERTISE_HOST",
        default: None,
        help: "address clients use to reach this chunkserver (default: the listen host, or 127.0.0.1 when that is *)",
    },
    Key { name: "LABEL", default: Some(""), help: "topology label (rack, room): copies are spread across labels" },
    Key { name: "CLUSTER_SECRET", default: None, help: "secret shared by all masters and chunkservers" },
    Key { name: "CLUSTER_SECRET_FILE", default: None, help: "file holding the cluster secret" },
    Key {
        name: "SCRUB_RATE",
        default: Some("16MiB"),
        help: "bytes per second the scrubber reads to check CRCs (0: off)",
    },
    Key {
        name: "WORKER_THREADS",
        default: Some("1"),
        help: "threads that run the network work (MooseFS's chunkserver has one network thread by default too); reads and writes of the disks run on a pool of threads of their own either way",
    },
];

#[derive(Debug, Clone)]
pub struct CsConfig {
    pub id: Option<ChunkserverId>,
    pub data_path: PathBuf,
    pub hdd_cfg: PathBuf,
    pub masters: Vec<String>,
    pub listen: SocketAddr,
    pub data_addr: String,
    pub label: String,
    pub secret: Secret,
    pub scrub_rate: u64,
    /// WORKER_THREADS: 1 for a single-threaded runtime.
    pub worker_threads: usize,
}

impl CsConfig {
    pub fn from_settings(s: &Settings) -> Result<CsConfig, ConfigError> {
        let port: u16 = s.get("CSSERV_LISTEN_PORT")?;
        let listen = s.get_with("CSSERV_LISTEN_HOST", |h| {
            let h = if h == "*" { "0.0.0.0" } else { h };
            (h, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve: {e}"))?
                .next()
                .ok_or_else(|| "no address".to_string())
        })?;
        let advertise = match s.opt::<String>("ADVERTISE_HOST")? {
            Some(h) => h,
            None if listen.ip().is_unspecified() => "127.0.0.1".into(),
            None => listen.ip().to_string(),
        };
        let masters = s.get_with("MASTERS", |v| {
            let list: Vec<String> = v.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
            if list.is_empty() {
                return Err("lists no master".into());
            }
            if let Some(bad) = list.iter().find(|m| !m.contains(':')) {
                return Err(format!("{bad:?} is not host:port"));
            }
            Ok(list)
        })?;
        let secret = match (s.opt::<String>("CLUSTER_SECRET")?, s.raw("CLUSTER_SECRET_FILE")) {
            (Some(v), _) if !v.is_empty() => Secret::new(v),
            (_, Some(_)) => s.get_with("CLUSTER_SECRET_FILE", |p| {
                let t = std::fs::read_to_string(p).map_err(|e| format!("cannot read: {e}"))?;
                let t = t.trim();
                if t.is_empty() {
                    return Err("the file is empty".into());
                }
                Ok(Secret::new(t))
            })?,
            _ => return Err(ConfigError::Missing { key: "CLUSTER_SECRET".into(), flag: "cluster-secret".into() }),
        };
        Ok(CsConfig {
            id: s.opt::<u64>("ID")?.map(ChunkserverId),
            data_path: s.get("DATA_PATH")?,
            hdd_cfg: s.get("HDD_CONF_FILENAME")?,
            masters,
            listen,
            data_addr: format!("{advertise}:{}", listen.port()),
            label: s.get("LABEL")?,
            secret,
            scrub_rate: s.get_with("SCRUB_RATE", parse_size)?,
            worker_threads: s.get_with("WORKER_THREADS", parse_threads)?,
        })
    }
}

/// The id of this chunkserver: configured, or created once and kept in `DATA_PATH`.
pub fn chunkserver_id(cfg: &CsConfig) -> std::io::Result<ChunkserverId> {
    if let Some(id) = cfg.id {
        return Ok(id);
    }
    std::fs::create_dir_all(&cfg.data_path)?;
    let file = cfg.data_path.join("chunkserver.id");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(id) = text.trim().parse::<u64>() {
            return Ok(ChunkserverId(id));
        }
    }
    let id = (rand::random::<u64>() >> 16).max(1);
    std::fs::write(&file, format!("{id}\n"))?;
    Ok(ChunkserverId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ops/examples/chunkserver.cfg` and `hdd.cfg` are what they say.
    #[test]
    fn the_example_configs_are_valid() {
        let dir = alces_testkit::crate_dir().join("../ops/examples");
        let mut s = Settings::defaults(KEYS);
        s.apply_file(&dir.join("chunkserver.cfg")).unwrap();
        s.apply_text(std::path::Path::new("test"), "CLUSTER_SECRET = x").unwrap();
        let c = CsConfig::from_settings(&s).unwrap();
        assert_eq!(c.masters.len(), 3);
        let hdd = dir.join("hdd.cfg");
        let folders = crate::folders::parse_hdd_cfg(&hdd, &std::fs::read_to_string(&hdd).unwrap()).unwrap();
        assert_eq!(folders.iter().filter(|f| f.leaving).count(), 1);
    }

    #[test]
    fn config_and_errors() {
        let mut s = Settings::defaults(KEYS);
        s.apply_text(
            std::path::Path::new("cs.cfg"),
            "MASTERS = a:1, b:2\nCLUSTER_SECRET = x\nCSSERV_LISTEN_HOST = 127.0.0.1\n",
        )
        .unwrap();
        let c = CsConfig::from_settings(&s).unwrap();
        assert_eq!(c.masters, vec!["a:1", "b:2"]);
        assert_eq!(c.data_addr, "127.0.0.1:9422");
        assert_eq!(c.scrub_rate, 16 << 20);
        assert_eq!(c.worker_threads, 1);
        let mut t = s.clone();
        t.apply_text(std::path::Path::new("cs.cfg"), "\n\n\nWORKER_THREADS = 0\n").unwrap();
        let e = CsConfig::from_settings(&t).unwrap_err().to_string();
        assert!(e.starts_with("cs.cfg:4: WORKER_THREADS") && e.contains("1 to 1024"), "{e}");
        s.apply_text(std::path::Path::new("cs.cfg"), "\nMASTERS = nowhere\n").unwrap();
        let e = CsConfig::from_settings(&s).unwrap_err().to_string();
        assert!(e.starts_with("cs.cfg:2: MASTERS"), "{e}");
    }
}
