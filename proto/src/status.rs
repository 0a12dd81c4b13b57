//! Status codes carried in replies, and their errno values.
//!
//! Every failure that can reach a file system caller is one of these; the FUSE layer turns it
//! into the errno the kernel expects, and the tools print its message.

use serde::{Deserialize, Serialize};

macro_rules! statuses {
    ($($name:ident = $errno:ident, $msg:literal;)*) => {
        /// A failed operation's reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
        pub enum Status {
            $(#[error($msg)] $name,)*
        }

        impl Status {
            /// The errno a POSIX caller sees.
            pub fn errno(self) -> i32 {
                match self { $(Status::$name => libc::$errno,)* }
            }

            /// The status for an errno; unknown values become [`Status::Io`].
            pub fn from_errno(errno: i32) -> Status {
                $(if errno == libc::$errno { return Status::$name; })*
                Status::Io
            }

            pub const ALL: &'static [Status] = &[$(Status::$name,)*];
        }
    };
}

statuses! {
    NotFound = ENOENT, "no such file or directory";
    Exists = EEXIST, "file exists";
    NotEmpty = ENOTEMPTY, "directory not empty";
    NotDir = ENOTDIR, "not a directory";
    IsDir = EISDIR, "is a directory";
    Access = EACCES, "permission denied";
    Perm = EPERM, "operation not permitted";
    NameTooLong = ENAMETOOLONG, "file name too long";
    Invalid = EINVAL, "invalid argument";
    ReadOnly = EROFS, "read-only file system";
    NoSpace = ENOSPC, "no space left on device";
    QuotaExceeded = EDQUOT, "disk quota exceeded";
    TooManyLinks = EMLINK, "too many links";
    Io = EIO, "input/output error";
    Stale = ESTALE, "stale file handle";
    NoData = ENODATA, "no such attribute";
    Range = ERANGE, "result too large";
    FileTooBig = EFBIG, "file too large";
    NotSupported = EOPNOTSUPP, "operation not supported";
    Busy = EBUSY, "resource busy";
    Again = EAGAIN, "temporarily unavailable, try again";
    TimedOut = ETIMEDOUT, "timed out";
    Cross = EXDEV, "cross-device link";
    BadFd = EBADF, "bad file descriptor";
    Loop = ELOOP, "too many levels of symbolic links";
    NotConnected = ENOTCONN, "not connected to the cluster";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips_for_every_status() {
        for &s in Status::ALL {
            assert_eq!(Status::from_errno(s.errno()), s, "{s:?}");
        }
        assert_eq!(Status::from_errno(-12345), Status::Io);
        assert_eq!(Status::NotEmpty.errno(), libc::ENOTEMPTY);
    }
}
