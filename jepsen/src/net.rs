//! The private network of a run: one bridge with no uplink, and one network namespace per
//! daemon joined to it by a veth pair. Every address is in 10.77.0.0/24; no route leads out,
//! so nothing the cluster sends can leave the namespaces made here (and the host's side of the
//! bridge, where the mounts run).
//!
//! Faults on the network are rules in each namespace's own firewall, in a chain of their own
//! ([`CHAIN`]), and queueing disciplines on the namespace's end of its veth; deleting a
//! namespace removes both, so healing and clean-up never touch rules this suite did not add.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

use crate::sh::{in_ns, run, run_quiet, run_with_input};

pub const BRIDGE: &str = "alcesbr0";
pub const HOST_ADDR: &str = "10.77.0.1";
pub const PREFIX_LEN: u8 = 24;
/// The chain holding every rule the suite adds, in each namespace and (when bridged traffic
/// goes through the host's firewall) on the host.
pub const CHAIN: &str = "ALCES-JEPSEN";
/// Namespace names start with this; `clean` removes every namespace that does.
pub const NS_PREFIX: &str = "alces-";
/// Host-side veth names start with this; `clean` removes every link that does.
pub const VETH_PREFIX: &str = "alv-";

/// One namespace on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNode {
    /// Namespace name (`alces-n1`, `alces-c1`).
    pub ns: String,
    pub addr: String,
}

impl NetNode {
    /// Host-side end of the veth pair (interface names are at most 15 bytes).
    fn host_veth(&self) -> String {
        format!("{VETH_PREFIX}{}", &self.ns[NS_PREFIX.len()..])
    }
}

/// Whether the kernel passes bridged frames through the host's iptables (br_netfilter): then
/// the host's FORWARD policy decides whether the namespaces can talk to each other.
fn bridge_goes_through_iptables() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").map(|s| s.trim() == "1").unwrap_or(false)
}

/// Creates the bridge, with the host's address on it.
pub fn create_bridge() -> Result<()> {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])
        .context("creating the bridge (is a run in progress? try `alces-jepsen clean`)")?;
    run("ip", &["addr", "add", &format!("{HOST_ADDR}/{PREFIX_LEN}"), "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    if bridge_goes_through_iptables() {
        // Traffic between two ports of our bridge is accepted whatever the FORWARD policy;
        // nothing else is matched.
        run("iptables", &["-N", CHAIN])?;
        run("iptables", &["-A", CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"])?;
        run("iptables", &["-I", "FORWARD", "1", "-j", CHAIN])?;
    }
    Ok(())
}

/// Creates a namespace for `node` and plugs it into the bridge. Only the namespace's subnet
/// is routed: there is no default route.
pub fn create_node(node: &NetNode) -> Result<()> {
    let veth = node.host_veth();
    run("ip", &["netns", "add", &node.ns])?;
    run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &node.ns])?;
    run("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
    run("ip", &["-n", &node.ns, "addr", "add", &format!("{}/{PREFIX_LEN}", node.addr), "dev", "eth0"])?;
    run("ip", &["-n", &node.ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", &node.ns, "link", "set", "lo", "up"])?;
    in_ns(&node.ns, "iptables", &["-N", CHAIN])?;
    in_ns(&node.ns, "iptables", &["-A", "INPUT", "-j", CHAIN])?;
    Ok(())
}

/// Drops, in `node`'s namespace, everything arriving from `from` (one `iptables-restore`, so
/// all of a node's rules arrive at once).
pub fn block(node: &NetNode, from: &BTreeSet<String>) -> Result<()> {
    if from.is_empty() {
        return Ok(());
    }
    let mut rules = String::from("*filter\n");
    for addr in from {
        rules.push_str(&format!("-A {CHAIN} -s {addr} -j DROP\n"));
    }
    rules.push_str("COMMIT\n");
    let netns = format!("--net=/run/netns/{}", node.ns);
    run_with_input("nsenter", &[&netns, "iptables-restore", "--noflush"], &rules)
}

/// Applies `f` to every node at once (one thread each), so a fault starts on all of them
/// within milliseconds; the first error is returned.
pub fn on_each<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked"))))
    })
}

/// Removes every fault rule and queueing discipline of `node`.
pub fn heal(node: &NetNode) -> Result<()> {
    in_ns(&node.ns, "iptables", &["-F", CHAIN])?;
    let _ = in_ns(&node.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
    Ok(())
}

/// Loses `loss_pct` % of the packets leaving `node` and delays them by `delay_ms` (± a quarter)
/// with netem. Kernels without netem get the loss alone, as a random drop rule on arrival;
/// the answer says which was done.
pub fn degrade(node: &NetNode, loss_pct: u32, delay_ms: u32) -> Result<String> {
    let delay = format!("{delay_ms}ms");
    let jitter = format!("{}ms", delay_ms / 4);
    let loss = format!("{loss_pct}%");
    let netem = ["qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay, &jitter, "loss", &loss];
    if in_ns(&node.ns, "tc", &netem).is_ok() {
        return Ok(format!("netem delay {delay} loss {loss}"));
    }
    let p = format!("{:.3}", f64::from(loss_pct) / 100.0);
    in_ns(
        &node.ns,
        "iptables",
        &["-A", CHAIN, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
    )
    .context("neither tc netem nor iptables statistic is available")?;
    Ok(format!("random drop {loss} (no netem in this kernel: no delay)"))
}

/// Deletes a namespace and its veth pair (rules and qdiscs go with it). The pair is deleted
/// first and explicitly: the kernel may destroy a namespace long after its name is gone (while
/// sockets of killed processes linger), and the host's end would stay until then.
pub fn delete_node(ns: &str) -> bool {
    let veth = format!("{VETH_PREFIX}{}", ns.strip_prefix(NS_PREFIX).unwrap_or(ns));
    if Path::new(&format!("/sys/class/net/{veth}")).exists() {
        run_quiet("ip", &["link", "delete", &veth]);
    }
    run_quiet("ip", &["netns", "delete", ns])
}

/// Host links left by an earlier run (host ends of veth pairs).
pub fn our_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(VETH_PREFIX))
        .collect()
}

/// Every namespace whose name starts with [`NS_PREFIX`].
pub fn our_namespaces() -> Vec<String> {
    let out = run("ip", &["netns", "list"]).unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Process ids living in namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns]).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Removes the bridge and the host chain, if present.
pub fn delete_bridge() {
    if Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
        run_quiet("ip", &["link", "delete", BRIDGE]);
    }
    while run_quiet("iptables", &["-D", "FORWARD", "-j", CHAIN]) {}
    if run_quiet("iptables", &["-F", CHAIN]) {
        run_quiet("iptables", &["-X", CHAIN]);
    }
}
