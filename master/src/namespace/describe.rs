//! One readable line per stored record, for `alces-master dump-metadata`.

use alces_raft_store::db::decode_value;

use super::keys::*;
use super::records::*;
use super::txn::decode_chunk_id;

fn be(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

fn text(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

fn decoded<T: serde::de::DeserializeOwned + std::fmt::Debug>(value: &[u8]) -> String {
    match decode_value::<T>(value) {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("<undecodable: {e}>"),
    }
}

pub fn record(cf: &str, key: &[u8], value: &[u8]) -> String {
    match cf {
        CF_INODES if key.len() == 8 => match decode_value::<InodeRec>(value) {
            Ok(r) => format!(
                "inode {}: {:?} {:?} mode {:04o} uid {} gid {} size {} nlink {} goal {} trash {}s parent {} name {} mtime {} ctime {}{}",
                be(key),
                r.state,
                r.kind,
                r.mode,
                r.uid,
                r.gid,
                r.size,
                r.nlink,
                r.goal,
                r.trash_time.0,
                r.parent,
                text(&r.name),
                r.mtime.secs,
                r.ctime.secs,
                if r.symlink.is_empty() { String::new() } else { format!(" -> {}", text(&r.symlink)) }
            ),
            Err(e) => format!("inode {}: <undecodable: {e}>", be(key)),
        },
        CF_INODES => format!("counter {} = {}", String::from_utf8_lossy(key.strip_prefix(b"#").unwrap_or(key)), decoded::<u64>(value)),
        CF_DENTRIES if key.len() >= 8 => {
            format!("dentry {}/{} -> {}", be(&key[..8]), text(&key[8..]), decoded::<DentryRec>(value))
        }
        CF_CHUNKS if key.first() == Some(&b'c') && key.len() == 9 => {
            let id = decode_chunk_id(&key[1..]).map(|c| c.hex()).unwrap_or_default();
            format!("chunk {id}: {}", decoded::<ChunkRec>(value))
        }
        CF_CHUNKS if key.first() == Some(&b'f') && key.len() == 13 => format!(
            "file {} chunk[{}] = {}",
            be(&key[1..9]),
            decode_file_chunk_index(key).unwrap_or(0),
            decode_chunk_id(value).map(|c| c.hex()).unwrap_or_else(|| "<bad>".into())
        ),
        CF_XATTRS if key.len() >= 8 => format!("xattr {} {} = {} bytes", be(&key[..8]), text(&key[8..]), value.len()),
        CF_TRASH => match key.first() {
            Some(b't') => format!("trash {}: {}", be(&key[1..]), decoded::<TrashRec>(value)),
            Some(b'r') => format!("reserved {}: {}", be(&key[1..]), decoded::<TrashRec>(value)),
            Some(b'x') if key.len() == 17 => format!("trash expiry {} inode {}", be(&key[1..9]), be(&key[9..])),
            _ => format!("trash <unknown key {key:02x?}>"),
        },
        CF_SESSIONS => match key.first() {
            Some(b's') => format!("session {}: {}", be(&key[1..]), decoded::<SessionRec>(value)),
            Some(b'o') if key.len() == 17 => format!("open: session {} inode {}", be(&key[1..9]), be(&key[9..])),
            Some(b'O') if key.len() == 17 => format!("open: inode {} session {}", be(&key[1..9]), be(&key[9..])),
            Some(b'q') => format!("recent replies of session {}: {}", be(&key[1..]), decoded::<SessionReplies>(value)),
            _ => format!("session <unknown key {key:02x?}>"),
        },
        _ => format!("{cf} <unknown key {key:02x?}> = {} bytes", value.len()),
    }
}
