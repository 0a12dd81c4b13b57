//! `alces-jepsen clean`: removes what a crashed or killed run left behind — its processes,
//! mounts, namespaces, bridge and host firewall chain — using the state file and the fixed
//! names the suite uses. Safe to run when nothing is left.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{State, STATE_FILE};
use crate::net;

/// Whether `pid` is one of Alces's binaries (a recorded pid may have been reused since).
fn is_ours(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("alces-"))
        .unwrap_or(false)
}

fn kill_pid(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Returns what was removed, for the user.
pub fn clean() -> Vec<String> {
    let mut done = Vec::new();
    let state: State =
        std::fs::read_to_string(STATE_FILE).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    for m in &state.mounts {
        if alces_ops::launcher::is_mounted(m) {
            alces_ops::launcher::unmount(m);
            done.push(format!("unmounted {}", m.display()));
        }
    }
    for pid in state.pids.iter().copied().filter(|p| is_ours(*p)) {
        kill_pid(pid as i32);
        done.push(format!("killed process {pid}"));
    }
    for ns in net::our_namespaces() {
        for pid in net::pids_in(&ns) {
            kill_pid(pid);
            done.push(format!("killed process {pid} in {ns}"));
        }
        if net::delete_node(&ns) {
            done.push(format!("deleted namespace {ns}"));
        }
    }
    for link in net::our_links() {
        if crate::sh::run_quiet("ip", &["link", "delete", &link]) {
            done.push(format!("deleted link {link}"));
        }
    }
    if Path::new(&format!("/sys/class/net/{}", net::BRIDGE)).exists() {
        done.push(format!("deleted bridge {}", net::BRIDGE));
    }
    net::delete_bridge();
    let _ = std::fs::remove_file(STATE_FILE);
    done
}
