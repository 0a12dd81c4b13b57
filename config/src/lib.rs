//! Configuration the way MooseFS users know it: `KEY = VALUE` lines in a file (`master.cfg`,
//! `chunkserver.cfg`, `mount.cfg`), `#` comments, and every key also accepted as a
//! command-line flag (`DATA_PATH` is `--data-path`), the flag winning over the file.
//!
//! A component declares its keys once, as a table of [`Key`]s with defaults and help text;
//! that table drives the flags, the file parser and the typed getters. Errors name the key
//! and, for file values, the file and line.
#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Upper-case name, as in the file (`DATA_PATH`).
    pub name: &'static str,
    /// The value used when neither the file nor a flag sets it (`None`: required or optional
    /// without default, as the component decides).
    pub default: Option<&'static str>,
    pub help: &'static str,
}

impl Key {
    /// The flag spelling: `DATA_PATH` -> `data-path`.
    pub fn flag(&self) -> String {
        self.name.to_ascii_lowercase().replace('_', "-")
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Source::Flag => f.write_str("command line"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}:{line}: expected KEY = VALUE, got {text:?}")]
    Syntax { path: PathBuf, line: usize, text: String },
    #[error("{path}:{line}: unknown key {key}")]
    UnknownKey { path: PathBuf, line: usize, key: String },
    #[error("{source_}: {key} = {value:?}: {reason}")]
    BadValue { key: String, value: String, source_: Source, reason: String },
    #[error("{key} is required (set it in the config file or with --{flag})")]
    Missing { key: String, flag: String },
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
}

/// The merged configuration of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    keys: &'static [Key],
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Settings {
    /// Adds one `--flag VALUE` per key to a clap command, plus `--config FILE`.
    pub fn flags(mut cmd: clap::Command, keys: &'static [Key], config_help: &'static str) -> clap::Command {
        cmd = cmd.arg(clap::Arg::new("config").long("config").short('c').value_name("FILE").help(config_help));
        for k in keys {
            let help = match k.default {
                Some(d) => format!("{} [{}, default {d}]", k.help, k.name),
                None => format!("{} [{}]", k.help, k.name),
            };
            cmd = cmd.arg(clap::Arg::new(k.name).long(k.flag()).value_name("VALUE").help(help));
        }
        cmd
    }

    /// Merges defaults, the `--config` file (if given) and flags from parsed clap matches.
    pub fn from_matches(
        keys: &'static [Key],
        m: &clap::ArgMatches,
        default_file: Option<&Path>,
    ) -> Result<Settings, ConfigError> {
        let file = m
            .get_one::<String>("config")
            .map(PathBuf::from)
            .or_else(|| default_file.filter(|p| p.exists()).map(Path::to_path_buf));
        let mut s = Settings::defaults(keys);
        if let Some(path) = file {
            s.apply_file(&path)?;
        }
        for k in keys {
            if let Some(v) = m.get_one::<String>(k.name) {
                s.values.insert(k.name, (v.clone(), Source::Flag));
            }
        }
        Ok(s)
    }

    pub fn defaults(keys: &'static [Key]) -> Settings {
        let values =
            keys.iter().filter_map(|k| k.default.map(|d| (k.name, (d.to_string(), Source::Default)))).collect();
        Settings { keys, values }
    }

    /// Reads a `KEY = VALUE` file over the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        self.apply_text(path, &text)
    }

    pub fn apply_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let Some((key, value)) = content.split_once('=') else {
                return Err(ConfigError::Syntax { path: path.to_path_buf(), line, text: raw.to_string() });
            };
            let key = key.trim();
            let Some(spec) = self.keys.iter().find(|k| k.name == key) else {
                return Err(ConfigError::UnknownKey { path: path.to_path_buf(), line, key: key.to_string() });
            };
            self.values.insert(spec.name, (value.trim().to_string(), Source::File { path: path.to_path_buf(), line }));
        }
        Ok(())
    }

    /// Sets a value as if given on the command line.
    pub fn set(&mut self, key: &'static str, value: impl Into<String>) {
        self.values.insert(key, (value.into(), Source::Flag));
    }

    fn spec(&self, key: &str) -> &Key {
        self.keys.iter().find(|k| k.name == key).unwrap_or_else(|| panic!("configuration key {key} is not declared"))
    }

    /// The raw value and where it came from.
    pub fn raw(&self, key: &str) -> Option<&(String, Source)> {
        self.spec(key);
        self.values.get(key)
    }

    /// A typed value, or `None` when unset and without default.
    pub fn opt<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let Some((v, src)) = self.raw(key) else { return Ok(None) };
        v.parse::<T>().map(Some).map_err(|e| ConfigError::BadValue {
            key: key.to_string(),
            value: v.clone(),
            source_: src.clone(),
            reason: e.to_string(),
        })
    }

    /// A typed value that must be present.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.opt(key)?.ok_or_else(|| ConfigError::Missing { key: key.to_string(), flag: self.spec(key).flag() })
    }

    /// A value checked by `check`, whose error message becomes part of a [`ConfigError`].
    pub fn get_with<T>(&self, key: &str, check: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        let (v, src) =
            self.raw(key).ok_or_else(|| ConfigError::Missing { key: key.to_string(), flag: self.spec(key).flag() })?;
        check(v).map_err(|reason| ConfigError::BadValue {
            key: key.to_string(),
            value: v.clone(),
            source_: src.clone(),
            reason,
        })
    }

    /// Every key and its current value, for `--print-config` style output.
    pub fn dump(&self) -> Vec<(String, String, String)> {
        self.keys
            .iter()
            .map(|k| match self.values.get(k.name) {
                Some((v, s)) => (k.name.to_string(), v.clone(), s.to_string()),
                None => (k.name.to_string(), String::new(), "unset".to_string()),
            })
            .collect()
    }
}

/// Parses sizes the MooseFS way: `1GiB`, `256MB`, `4k`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    Ok((n * mult as f64) as u64)
}

/// Parses a `WORKER_THREADS` value: a number of threads from 1 to 1024.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err("must be a number of threads from 1 to 1024".into()),
    }
}

/// Sets up logging for a binary: human-readable lines on stderr, filtered by `RUST_LOG`
/// (default: `info` for Alces, warnings for libraries).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,hyper=warn,fuser=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    static KEYS: &[Key] = &[
        Key { name: "DATA_PATH", default: None, help: "where data lives" },
        Key { name: "PORT", default: Some("9421"), help: "port" },
        Key { name: "NAME", default: Some("x"), help: "name" },
    ];

    #[test]
    fn file_flags_and_defaults_merge_with_flags_winning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.cfg");
        std::fs::write(&path, "# comment\n\nDATA_PATH = /var/x # trailing\nPORT=1234\n").unwrap();
        let cmd = Settings::flags(clap::Command::new("t"), KEYS, "config file");
        let m = cmd.try_get_matches_from(["t", "-c", path.to_str().unwrap(), "--port", "77"]).unwrap();
        let s = Settings::from_matches(KEYS, &m, None).unwrap();
        assert_eq!(s.get::<String>("DATA_PATH").unwrap(), "/var/x");
        assert_eq!(s.get::<u16>("PORT").unwrap(), 77);
        assert_eq!(s.get::<String>("NAME").unwrap(), "x");
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let mut s = Settings::defaults(KEYS);
        let err = s.apply_text(Path::new("m.cfg"), "NAME = a\nBOGUS = 1\n").unwrap_err();
        assert_eq!(err.to_string(), "m.cfg:2: unknown key BOGUS");
        let err = s.apply_text(Path::new("m.cfg"), "NAME = a\njunk line\n").unwrap_err();
        assert_eq!(err.to_string(), "m.cfg:2: expected KEY = VALUE, got \"junk line\"");
        s.apply_text(Path::new("m.cfg"), "\n\nPORT = abc\n").unwrap();
        let err = s.get::<u16>("PORT").unwrap_err().to_string();
        assert!(err.starts_with("m.cfg:3: PORT = \"abc\": "), "{err}");
        let err = s.get::<String>("DATA_PATH").unwrap_err().to_string();
        assert_eq!(err, "DATA_PATH is required (set it in the config file or with --data-path)");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("256MB").unwrap(), 256_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
    }
}
