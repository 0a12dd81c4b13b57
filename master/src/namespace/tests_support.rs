//! Values shared by the namespace's unit tests.

use alces_proto::types::Inode;

use super::records::SessionInfo;

pub fn session_info() -> SessionInfo {
    SessionInfo {
        peer: "127.0.0.1:1".into(),
        client_name: "test".into(),
        root: Inode::ROOT,
        path: "/".into(),
        meta: false,
        read_only: false,
        map_root: None,
        map_all: None,
        min_goal: 1,
        max_goal: 9,
        min_trash: 0,
        max_trash: u32::MAX,
    }
}
