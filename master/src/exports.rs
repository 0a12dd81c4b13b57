//! Exports: who may mount what, in the exact `mfsexports.cfg` syntax.
//!
//! ```text
//! # ADDRESS           DIRECTORY   [OPTIONS]
//! *                   /           rw,alldirs,maproot=0
//! 192.168.1.0/24      /projects   ro,password=secret
//! 10.0.0.1-10.0.0.20  .           rw
//! ```
//! Addresses: `*`, `a.b.c.d`, `a.b.c.d/bits`, `a.b.c.d/m.a.s.k`, `a.b.c.d-e.f.g.h`.
//! Directory: `/` or a path below it, or `.` for the meta file system (trash, reserved).
//! Options (defaults as in MooseFS: `ro,maproot=999:999`): `ro`/`readonly`, `rw`/`readwrite`,
//! `alldirs`, `maproot=USER[:GROUP]`, `mapall=USER[:GROUP]`, `password=PASS`, `md5pass=HEX`,
//! `mingoal=N`, `maxgoal=N`, `mintrashtime=T`, `maxtrashtime=T`, and the accepted but
//! not acted upon `dynamicip`, `ignoregid`, `admin`, `nonrootmeta`, `minversion=V`.
//! Lines are tried in order; the first whose address and directory match, and whose password
//! (if any) the client proved, grants the mount.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::unistd::{Group, User};

#[derive(Debug, thiserror::Error)]
pub enum ExportsError {
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
}

/// Which directory a rule exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportPath {
    /// The meta file system (`.`).
    Meta,
    /// A directory, normalized: starts with `/`, no trailing `/` except the root itself.
    Dir(String),
}

/// What a matching rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    pub read_only: bool,
    pub alldirs: bool,
    pub map_root: (u32, u32),
    pub map_all: Option<(u32, u32)>,
    /// MD5 of the password, when one is required.
    pub password_key: Option<[u8; 16]>,
    pub min_goal: u8,
    pub max_goal: u8,
    pub min_trash: u32,
    pub max_trash: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            read_only: true,
            alldirs: false,
            map_root: (999, 999),
            map_all: None,
            password_key: None,
            min_goal: 1,
            max_goal: 9,
            min_trash: 0,
            max_trash: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    /// The line as written (for the monitor).
    pub text: String,
    /// Inclusive IPv4 range (`*` is the whole space).
    pub from: u32,
    pub to: u32,
    pub path: ExportPath,
    pub options: ExportOptions,
}

/// A parsed exports file.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    pub rules: Vec<Rule>,
}

/// What a client asked to mount.
#[derive(Debug, Clone)]
pub struct MountRequest<'a> {
    pub addr: Ipv4Addr,
    /// Normalized path (see [`normalize`]); ignored for the meta file system.
    pub path: &'a str,
    pub meta: bool,
}

/// Why no rule granted a mount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no export allows {0} to mount {1}")]
    NoMatch(Ipv4Addr, String),
    #[error("wrong or missing password")]
    Password,
}

/// Normalizes a mount path: leading `/`, no `.`/empty components, no trailing `/`.
/// Returns `None` for paths with `..`.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn ip(s: &str) -> Result<u32, String> {
    s.parse::<Ipv4Addr>().map(u32::from).map_err(|_| format!("{s:?} is not an IPv4 address"))
}

fn parse_addr(s: &str) -> Result<(u32, u32), String> {
    if s == "*" {
        return Ok((0, u32::MAX));
    }
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (ip(a)?, ip(b)?);
        if a > b {
            return Err(format!("range {s:?} ends before it starts"));
        }
        return Ok((a, b));
    }
    if let Some((a, m)) = s.split_once('/') {
        let base = ip(a)?;
        let mask = if m.contains('.') {
            let mask = ip(m)?;
            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                return Err(format!("{m:?} is not a contiguous netmask"));
            }
            mask
        } else {
            let bits: u32 = m.parse().map_err(|_| format!("{m:?} is not a prefix length"))?;
            if bits > 32 {
                return Err(format!("prefix length {bits} is over 32"));
            }
            if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            }
        };
        return Ok((base & mask, (base & mask) | !mask));
    }
    let a = ip(s)?;
    Ok((a, a))
}

fn parse_user_group(v: &str) -> Result<(u32, u32), String> {
    let (u, g) = match v.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (v, None),
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => match User::from_name(u) {
            Ok(Some(user)) => (user.uid.as_raw(), Some(user.gid.as_raw())),
            _ => return Err(format!("unknown user {u:?}")),
        },
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match Group::from_name(g) {
                Ok(Some(group)) => group.gid.as_raw(),
                _ => return Err(format!("unknown group {g:?}")),
            },
        },
        // MooseFS: without a group, the user's primary group (or the same number).
        None => primary_gid.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// `86400`, `2h`, `1d12h`, `30m`, `1w`: a duration in seconds.
fn parse_duration(v: &str) -> Result<u32, String> {
    if let Ok(n) = v.parse::<u32>() {
        return Ok(n);
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in v.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(format!("{v:?} is not a duration")),
        };
        let n: u64 = num.parse().map_err(|_| format!("{v:?} is not a duration"))?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!("{v:?} is not a duration (a number without unit at the end)"));
    }
    u32::try_from(total).map_err(|_| format!("{v:?} is too long"))
}

fn parse_options(s: &str) -> Result<ExportOptions, String> {
    let mut o = ExportOptions::default();
    for opt in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = || v.ok_or_else(|| format!("option {k} needs a value"));
        let goal = |v: &str| match v.parse::<u8>() {
            Ok(g) if (1..=9).contains(&g) => Ok(g),
            _ => Err(format!("{v:?} is not a goal (1..9)")),
        };
        match k {
            "ro" | "readonly" => o.read_only = true,
            "rw" | "readwrite" => o.read_only = false,
            "alldirs" => o.alldirs = true,
            "maproot" => o.map_root = parse_user_group(need()?)?,
            "mapall" => o.map_all = Some(parse_user_group(need()?)?),
            "password" => o.password_key = Some(alces_proto::password_key(need()?)),
            "md5pass" => {
                let hex = need()?;
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect();
                match bytes.and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                    Some(key) if hex.len() == 32 => o.password_key = Some(key),
                    _ => return Err(format!("md5pass {hex:?} is not 32 hex digits")),
                }
            }
            "mingoal" => o.min_goal = goal(need()?)?,
            "maxgoal" => o.max_goal = goal(need()?)?,
            "mintrashtime" => o.min_trash = parse_duration(need()?)?,
            "maxtrashtime" => o.max_trash = parse_duration(need()?)?,
            "dynamicip" | "ignoregid" | "admin" | "nonrootmeta" | "canchangequota" | "minversion" | "sesflags" => {}
            _ => return Err(format!("unknown option {k:?}")),
        }
    }
    if o.min_goal > o.max_goal {
        return Err(format!("mingoal {} is above maxgoal {}", o.min_goal, o.max_goal));
    }
    if o.min_trash > o.max_trash {
        return Err("mintrashtime is above maxtrashtime".into());
    }
    Ok(o)
}

impl Exports {
    pub fn load(path: &Path) -> Result<Exports, ExportsError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ExportsError::Read { path: path.to_path_buf(), error })?;
        Exports::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Exports, ExportsError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| ExportsError::Line { path: path.to_path_buf(), line, reason };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(addr), Some(dir)) = (fields.next(), fields.next()) else {
                return Err(err("expected ADDRESS DIRECTORY [OPTIONS]".into()));
            };
            let options = fields.next().unwrap_or("");
            if fields.next().is_some() {
                return Err(err("too many fields (options are separated by commas, not spaces)".into()));
            }
            let (from, to) = parse_addr(addr).map_err(err)?;
            let path = if dir == "." {
                ExportPath::Meta
            } else if dir.starts_with('/') {
                ExportPath::Dir(normalize(dir).ok_or_else(|| err(format!("{dir:?} contains ..")))?)
            } else {
                return Err(err(format!("directory {dir:?} must be `.` or start with /")));
            };
            let options = parse_options(options).map_err(err)?;
            rules.push(Rule { line, text: content.to_string(), from, to, path, options });
        }
        Ok(Exports { rules })
    }

    /// The first rule that lets this client mount this path. `proved(key)` says whether the
    /// client's password proof matches a rule's password key.
    pub fn find(&self, req: &MountRequest<'_>, proved: impl Fn(&[u8; 16]) -> bool) -> Result<&Rule, Refusal> {
        let addr = u32::from(req.addr);
        let mut password_failed = false;
        for rule in &self.rules {
            if addr < rule.from || addr > rule.to {
                continue;
            }
            let path_ok = match (&rule.path, req.meta) {
                (ExportPath::Meta, true) => true,
                (ExportPath::Dir(d), false) => {
                    req.path == d
                        || (rule.options.alldirs
                            && (d == "/" || req.path.strip_prefix(d.as_str()).is_some_and(|r| r.starts_with('/'))))
                }
                _ => false,
            };
            if !path_ok {
                continue;
            }
            if let Some(key) = &rule.options.password_key {
                if !proved(key) {
                    password_failed = true;
                    continue;
                }
            }
            return Ok(rule);
        }
        Err(if password_failed {
            Refusal::Password
        } else {
            Refusal::NoMatch(req.addr, if req.meta { ".".into() } else { req.path.to_string() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Exports {
        Exports::parse(Path::new("exports.cfg"), text).unwrap()
    }

    fn err(text: &str) -> String {
        Exports::parse(Path::new("exports.cfg"), text).unwrap_err().to_string()
    }

    fn ask<'a>(addr: &str, path: &'a str, meta: bool) -> MountRequest<'a> {
        MountRequest { addr: addr.parse().unwrap(), path, meta }
    }

    #[test]
    fn every_address_form() {
        let e = parse("*  /a\n10.1.2.3 /b\n10.1.0.0/16 /c\n10.2.0.0/255.255.255.0 /d\n10.3.0.5-10.3.0.9 /e\n");
        let r: Vec<(u32, u32)> = e.rules.iter().map(|r| (r.from, r.to)).collect();
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(r[0], (0, u32::MAX));
        assert_eq!(r[1], (ip("10.1.2.3"), ip("10.1.2.3")));
        assert_eq!(r[2], (ip("10.1.0.0"), ip("10.1.255.255")));
        assert_eq!(r[3], (ip("10.2.0.0"), ip("10.2.0.255")));
        assert_eq!(r[4], (ip("10.3.0.5"), ip("10.3.0.9")));
    }

    #[test]
    fn options_and_defaults() {
        let e = parse(
            "* / rw,alldirs,maproot=0,mapall=1000:100,mingoal=2,maxgoal=3,mintrashtime=1h,maxtrashtime=2d\n* /ro\n",
        );
        let o = &e.rules[0].options;
        assert!(!o.read_only && o.alldirs);
        assert_eq!(o.map_root, (0, 0));
        assert_eq!(o.map_all, Some((1000, 100)));
        assert_eq!((o.min_goal, o.max_goal, o.min_trash, o.max_trash), (2, 3, 3600, 172_800));
        assert_eq!(e.rules[1].options, ExportOptions::default());
        assert!(e.rules[1].options.read_only, "ro by default");
        let e = parse("* / maproot=root:root\n");
        assert_eq!(e.rules[0].options.map_root, (0, 0));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(err("* /\nbogus\n"), "exports.cfg:2: expected ADDRESS DIRECTORY [OPTIONS]");
        assert!(err("300.1.1.1 /\n").starts_with("exports.cfg:1: \"300.1.1.1\" is not an IPv4"));
        assert!(err("* / rw,frobnicate\n").contains("unknown option \"frobnicate\""));
        assert!(err("* relative\n").contains("must be `.` or start with /"));
        assert!(err("10.0.0.0/33 /\n").contains("over 32"));
        assert!(err("10.0.0.9-10.0.0.1 /\n").contains("ends before"));
        assert!(err("* / maxgoal=12\n").contains("not a goal"));
        assert!(err("* / maproot=no-such-user-here\n").contains("unknown user"));
        assert!(err("* / md5pass=abc\n").contains("32 hex digits"));
    }

    #[test]
    fn matching_addresses_paths_and_alldirs() {
        let e = parse("10.0.0.0/8 /data rw\n* /pub alldirs\n127.0.0.1 . rw\n");
        assert_eq!(e.find(&ask("10.9.9.9", "/data", false), |_| false).unwrap().line, 1);
        // Without alldirs, subdirectories of /data are not exported.
        assert!(e.find(&ask("10.9.9.9", "/data/x", false), |_| false).is_err());
        assert_eq!(e.find(&ask("192.168.1.1", "/pub/a/b", false), |_| false).unwrap().line, 2);
        assert!(e.find(&ask("192.168.1.1", "/public", false), |_| false).is_err(), "prefix is not a parent");
        assert!(matches!(e.find(&ask("192.168.1.1", "/data", false), |_| false), Err(Refusal::NoMatch(..))));
        assert_eq!(e.find(&ask("127.0.0.1", "", true), |_| false).unwrap().line, 3);
        assert!(e.find(&ask("127.0.0.2", "", true), |_| false).is_err());
    }

    #[test]
    fn passwords() {
        let e = parse("* / rw,password=s3cret\n* / ro\n");
        let key = alces_proto::password_key("s3cret");
        let nonce = [7u8; 32];
        let proof = alces_proto::password_proof(&key, &nonce);
        let check = |k: &[u8; 16]| alces_proto::password_proof(k, &nonce) == proof;
        assert_eq!(e.find(&ask("1.2.3.4", "/", false), check).unwrap().line, 1);
        // Wrong password: the next rule (read-only, no password) applies.
        assert_eq!(e.find(&ask("1.2.3.4", "/", false), |_| false).unwrap().line, 2);
        let only = parse("* / rw,md5pass=0123456789abcdef0123456789abcdef\n");
        assert_eq!(only.find(&ask("1.2.3.4", "/", false), |_| false).unwrap_err(), Refusal::Password);
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize(""), Some("/".into()));
        assert_eq!(normalize("/a/../b"), None);
    }
}
