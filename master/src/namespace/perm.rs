//! POSIX permission checks, evaluated inside apply from the credentials carried by the op.

use alces_proto::types::{Creds, FileKind};
use alces_proto::Status;

use super::records::InodeRec;

pub const R: u16 = 4;
pub const W: u16 = 2;
pub const X: u16 = 1;

pub const S_ISUID: u16 = 0o4000;
pub const S_ISGID: u16 = 0o2000;
pub const S_ISVTX: u16 = 0o1000;

/// Whether `creds` may access `rec` with every bit of `mask` (R/W/X).
pub fn check(rec: &InodeRec, creds: &Creds, mask: u16) -> Result<(), Status> {
    if creds.uid == 0 {
        // Root may do anything, except execute a file nobody may execute.
        if mask & X != 0 && rec.kind != FileKind::Dir && rec.mode & 0o111 == 0 {
            return Err(Status::Access);
        }
        return Ok(());
    }
    let bits = if creds.uid == rec.uid {
        rec.mode >> 6
    } else if creds.in_group(rec.gid) {
        rec.mode >> 3
    } else {
        rec.mode
    } & 7;
    if bits & mask == mask {
        Ok(())
    } else {
        Err(Status::Access)
    }
}

/// In a sticky directory only the owner of an entry, of the directory, or root may remove or
/// rename the entry.
pub fn sticky_allows(dir: &InodeRec, victim: &InodeRec, creds: &Creds) -> Result<(), Status> {
    if dir.mode & S_ISVTX == 0 || creds.uid == 0 || creds.uid == victim.uid || creds.uid == dir.uid {
        Ok(())
    } else {
        Err(Status::Perm)
    }
}

/// Owner or root.
pub fn owner(rec: &InodeRec, creds: &Creds) -> Result<(), Status> {
    if creds.uid == 0 || creds.uid == rec.uid {
        Ok(())
    } else {
        Err(Status::Perm)
    }
}
