//! A replicated group of real processes on loopback TCP with real RocksDB folders.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use alces_proto::{Connection, Handshake, HandshakeError, LinkKind, Secret};
use alces_raft_store::kv::{KvReply, KvRequest, KvResponse};
use alces_raft_store::Role;
use alces_testkit::{free_addr, pseudo_random_bytes, wait_for};
use anyhow::Result;
use common::*;
use tokio::io::AsyncWriteExt;

/// Runs `writers` concurrent writers, each proposing `per_writer` records in sequence through
/// `leader_call`; returns the acknowledged (writer, seq) pairs.
async fn run_writers(apis: Vec<std::net::SocketAddr>, writers: u32, per_writer: u64) -> Result<Vec<(u32, u64)>> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let apis = apis.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for seq in 0..per_writer {
                let resp = leader_call(&apis, || KvRequest::Record { writer: w, seq }).await?;
                expect_recorded(resp)?;
                acked.push((w, seq));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Every acknowledged record is present; per writer, first occurrences are in seq order.
fn check_history(order: &[(u32, u64)], acked: &[(u32, u64)]) {
    let present: HashSet<_> = order.iter().copied().collect();
    let lost: Vec<_> = acked.iter().filter(|a| !present.contains(a)).collect();
    assert!(lost.is_empty(), "{} acknowledged records lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut last: HashMap<u32, u64> = HashMap::new();
    for &(w, s) in order {
        if seen.insert((w, s)) {
            if let Some(&prev) = last.get(&w) {
                assert!(s > prev, "writer {w}: seq {s} applied after {prev}");
            }
            last.insert(w, s);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_one_leader() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    let mut roles = BTreeMap::new();
    for id in 1..=3 {
        roles.insert(id, c.status(id).await?.role);
    }
    assert_eq!(roles.values().filter(|r| **r == Role::Leader).count(), 1, "{roles:?}");
    assert_eq!(roles[&leader], Role::Leader);
    assert_eq!(roles.values().filter(|r| **r == Role::Follower).count(), 2, "{roles:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_proposals_apply_in_the_same_order_everywhere() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    let api = c.api(leader);
    // 20 writers x 500 records, each writer on its own connection to the leader.
    let mut tasks = Vec::new();
    for w in 0..20u32 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(api).await?;
            let mut positions = Vec::new();
            for seq in 0..500u64 {
                match client.call(&KvRequest::Record { writer: w, seq }).await? {
                    KvResponse::Reply(KvReply::Recorded { position }) => positions.push(position),
                    other => anyhow::bail!("writer {w} seq {seq}: {other:?}"),
                }
            }
            anyhow::Ok(positions)
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.extend(t.await??);
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..10_000).collect::<Vec<u64>>(), "every proposal got its own position");
    let reference = c.wait_records(1, 10_000).await?;
    assert_eq!(reference.len(), 10_000);
    for id in 2..=3 {
        let other = c.wait_records(id, 10_000).await?;
        assert!(other == reference, "node {id} applied a different order than node 1");
    }
    let acked: Vec<_> = (0..20u32).flat_map(|w| (0..500u64).map(move |s| (w, s))).collect();
    check_history(&reference, &acked);
    // Group commit: concurrent proposals shared log entries and fsyncs.
    let s = c.status(leader).await?;
    assert!(s.log_fsyncs < 10_000, "{} fsyncs for 10,000 proposals", s.log_fsyncs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_no_committed_entry() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let first_leader = c.wait_leader().await?;
    let apis: Vec<_> = (1..=3).map(|id| c.api(id)).collect();
    let writers = tokio::spawn(run_writers(apis, 8, 300));
    // Let the writers get going, then kill the leader with SIGKILL.
    let probe = c.api(first_leader);
    wait_for("some records to commit", Duration::from_secs(30), || async move {
        match call(probe, KvRequest::Order { from: 200, limit: 1 }).await {
            Ok(KvResponse::Order(v)) if !v.is_empty() => Some(()),
            _ => None,
        }
    })
    .await?;
    c.node(first_leader).proc.kill();
    let new_leader = c.wait_leader().await?;
    assert_ne!(new_leader, first_leader);
    let acked = writers.await??;
    assert_eq!(acked.len(), 2400);

    let survivors: Vec<_> = (1..=3).filter(|&id| id != first_leader).collect();
    let reference = c.wait_records(survivors[0], acked.len()).await?;
    check_history(&reference, &acked);
    // The killed node comes back, catches up, and agrees.
    c.node(first_leader).proc.start()?;
    let total = reference.len();
    for id in [survivors[1], first_leader] {
        let other = c.wait_records(id, total).await?;
        assert!(other[..total] == reference[..], "node {id} diverges");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_5000_entries_catches_up_through_a_snapshot() -> Result<()> {
    let mut c = Cluster::start(3, Options { snapshot_every: 1000, keep_logs: 100, ..Default::default() }).await?;
    let leader = c.wait_leader().await?;
    let lagging = if leader == 3 { 2 } else { 3 };
    c.node(lagging).proc.kill();
    let apis: Vec<_> = (1..=3).filter(|&i| i != lagging).map(|id| c.api(id)).collect();
    let acked = run_writers(apis, 10, 500).await?;
    assert_eq!(acked.len(), 5000);
    let s = c.status(leader).await?;
    assert!(s.snapshots_built >= 1, "the leader built no snapshot");
    assert!(s.snapshot.unwrap_or(0) > 1000);
    c.node(lagging).proc.start()?;
    let reference = c.order(leader).await?;
    let caught_up = c.wait_records(lagging, reference.len()).await?;
    assert!(caught_up == reference, "the lagging node's order differs");
    let ls = c.status(lagging).await?;
    assert!(ls.snapshots_installed >= 1, "caught up without a snapshot: {ls:?}");
    // It applied far fewer entries than exist: the snapshot covered most of them.
    assert!(ls.applied_since_start < 4000, "applied {} entries one by one", ls.applied_since_start);
    check_history(&caught_up, &acked);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_nodes_restart_and_recover_without_replaying_the_log() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    c.wait_leader().await?;
    let apis: Vec<_> = (1..=3).map(|id| c.api(id)).collect();
    let acked = run_writers(apis.clone(), 10, 300).await?;
    for id in 1..=3 {
        c.wait_records(id, 3000).await?;
    }
    for n in c.nodes.iter_mut() {
        n.proc.kill();
    }
    for n in c.nodes.iter_mut() {
        n.proc.start()?;
    }
    c.wait_leader().await?;
    for id in 1..=3 {
        let order = c.wait_records(id, 3000).await?;
        check_history(&order, &acked);
        let s = c.status(id).await?;
        // A replay of the whole log would apply > 3000 entries; only the tail is replayed.
        assert!(s.applied_since_start < 100, "node {id} applied {} entries after the restart", s.applied_since_start);
    }
    // And it still takes writes.
    let more = run_writers(apis, 2, 10).await?;
    assert_eq!(more.len(), 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_with_the_wrong_secret_is_refused() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    // A direct dial with a wrong secret fails, and the node logs the refusal.
    let raft = c.node(leader).raft;
    let mut conn = Connection::connect(raft, 1 << 20, Duration::from_secs(2)).await?;
    let err = Handshake::new(LinkKind::Peer, "intruder", Some(Secret::new("wrong"))).dial(&mut conn).await.unwrap_err();
    assert!(matches!(err, HandshakeError::BadSecret), "{err:?}");
    // A whole node with the wrong secret is added as a learner: it never receives the log.
    let (r4, a4) = (free_addr(), free_addr());
    c.spawn(4, r4, a4, None, Some("not-the-secret"))?;
    c.wait_ready(4).await?;
    let member = c.node(4).member();
    let add = call(c.api(leader), KvRequest::AddLearner { id: 4, member }).await?;
    assert!(matches!(add, KvResponse::Failed { .. }), "learner with a wrong secret caught up: {add:?}");
    wait_for("node 4 to log a refused peer connection", Duration::from_secs(10), || {
        let text = c.nodes.iter().find(|n| n.id == 4).unwrap().proc.log_text();
        async move { text.contains("refused a peer connection").then_some(()) }
    })
    .await?;
    let s4 = c.status(4).await?;
    assert_eq!(s4.applied, None, "node 4 applied entries: {s4:?}");
    let s = c.status(leader).await?;
    let m4 = s.members.iter().find(|m| m.id == 4).expect("node 4 is a learner in the membership");
    assert_eq!(m4.matched, None, "the leader replicated to node 4: {m4:?}");
    // The group keeps working.
    c.leader_call(|| KvRequest::Put { key: "k".into(), value: b"v".to_vec() }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_is_added_promoted_and_a_voter_removed() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    let apis: Vec<_> = (1..=3).map(|id| c.api(id)).collect();
    let acked = run_writers(apis, 4, 100).await?;
    let (r4, a4) = (free_addr(), free_addr());
    c.spawn(4, r4, a4, None, None)?;
    c.wait_ready(4).await?;
    let member = c.node(4).member();
    let resp = c.leader_call(|| KvRequest::AddLearner { id: 4, member: member.clone() }).await?;
    assert!(matches!(resp, KvResponse::Done), "{resp:?}");
    assert_eq!(c.status(4).await?.role, Role::Learner);
    let order = c.wait_records(4, 400).await?;
    check_history(&order, &acked);

    let resp = c.leader_call(|| KvRequest::Promote { id: 4 }).await?;
    assert!(matches!(resp, KvResponse::Done), "{resp:?}");
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let resp = c.leader_call(|| KvRequest::Remove { id: victim }).await?;
    assert!(matches!(resp, KvResponse::Done), "{resp:?}");
    let s = c.status(leader).await?;
    let ids: Vec<_> = s.members.iter().map(|m| m.id).collect();
    assert!(ids.contains(&4) && !ids.contains(&victim), "members {ids:?}");
    assert!(s.members.iter().all(|m| m.role != Role::Learner), "{:?}", s.members);
    c.node(victim).proc.stop(Duration::from_secs(5));
    // The new group of {leader, other, 4} commits without the removed node.
    let apis: Vec<_> = s.members.iter().map(|m| m.member.client_addr.parse().unwrap()).collect();
    let more = run_writers(apis, 2, 50).await?;
    let order = c.wait_records(4, 500).await?;
    check_history(&order, &[acked, more].concat());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_every_listener_is_refused_and_the_node_keeps_serving() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    let (raft, api) = (c.node(leader).raft, c.node(leader).api);
    for (i, addr) in [raft, api].into_iter().enumerate() {
        // Random bytes, an oversized frame, a truncated frame, garbage after the length.
        let cases: Vec<Vec<u8>> = vec![
            pseudo_random_bytes(7 + i as u64, 4096),
            u32::MAX.to_be_bytes().to_vec(),
            [&(1000u32).to_be_bytes()[..], &[1, 2, 3]].concat(),
            [&(16u32).to_be_bytes()[..], &pseudo_random_bytes(99, 16)].concat(),
        ];
        for bytes in cases {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    }
    // After a valid handshake, a garbage request frame closes just that connection.
    let mut conn = Connection::connect(raft, 1 << 20, Duration::from_secs(2)).await?;
    Handshake::new(LinkKind::Peer, "tester", Some(Secret::new(SECRET))).dial(&mut conn).await?;
    conn.writer.send_raw(pseudo_random_bytes(5, 64).into()).await?;
    assert!(conn.recv::<u8>().await.map(|r| r.is_none()).unwrap_or(true), "connection should be closed");

    let log = c.node(leader).proc.log.clone();
    wait_for("the refusals in the node's log", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            (text.contains("refused a peer connection")
                && text.contains("refused an API connection")
                && text.contains("closing peer connection after a bad frame"))
            .then_some(())
        }
    })
    .await?;
    // Still the leader, still serving.
    assert_eq!(c.wait_leader().await?, leader);
    let resp = c.leader_call(|| KvRequest::Put { key: "after".into(), value: vec![1] }).await?;
    assert!(matches!(resp, KvResponse::Reply(_)), "{resp:?}");
    match call(c.api(leader), KvRequest::Get { key: "after".into() }).await? {
        KvResponse::Value(Some(v)) => assert_eq!(v, vec![1]),
        other => panic!("{other:?}"),
    }
    Ok(())
}

fn put(value: &'static [u8]) -> impl Fn() -> KvRequest {
    move || KvRequest::Put { key: "k".into(), value: value.to_vec() }
}

fn get() -> KvRequest {
    KvRequest::Get { key: "k".into() }
}

/// Without the lease every linearizable read needs a quorum round, and reads that arrive
/// together share one: 16 clients reading at once take far fewer rounds than reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_share_read_index_rounds() -> Result<()> {
    let mut c = Cluster::start(3, Options { lease_reads: false, ..Options::default() }).await?;
    let leader = c.wait_leader().await?;
    c.leader_call(put(b"x")).await?;
    let before = c.status(leader).await?;
    let api = c.api(leader);
    let mut readers = Vec::new();
    for _ in 0..16 {
        readers.push(tokio::spawn(async move {
            let mut conn = common::Client::connect(api).await?;
            for _ in 0..25 {
                match conn.call(&get()).await? {
                    KvResponse::Value(v) if v.as_deref() == Some(&b"x"[..]) => {}
                    other => anyhow::bail!("a read on the leader: {other:?}"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for r in readers {
        r.await??;
    }
    let after = c.status(leader).await?;
    let rounds = after.read_rounds - before.read_rounds;
    eprintln!("400 reads took {rounds} read-index rounds");
    assert_eq!(after.lease_reads, before.lease_reads, "a read was served under the lease it should not have");
    assert!((1..=200).contains(&rounds), "400 reads took {rounds} rounds: they do not share them");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_serves_reads_under_its_lease_but_a_resumed_old_leader_serves_no_stale_read() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let old = c.wait_leader().await?;
    c.leader_call(put(b"1")).await?;
    // A healthy leader answers reads from its lease, without a quorum round per read.
    let before = c.status(old).await?;
    for _ in 0..50 {
        match call(c.api(old), get()).await? {
            KvResponse::Value(v) => assert_eq!(v.as_deref(), Some(&b"1"[..])),
            other => anyhow::bail!("read on the leader: {other:?}"),
        }
    }
    let after = c.status(old).await?;
    assert!(after.lease_reads - before.lease_reads >= 25, "lease reads: {before:?} then {after:?}");
    // The leader is paused; the others elect a new one and commit a new value.
    c.node(old).proc.pause();
    let others: Vec<_> = c.running_ids().into_iter().filter(|&i| i != old).map(|i| c.api(i)).collect();
    leader_call(&others, put(b"2")).await?;
    c.node(old).proc.resume();
    // Until it learns of the new term, the old leader must not answer with the old value.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut answers = HashMap::new();
    while tokio::time::Instant::now() < until {
        let r = tokio::time::timeout(Duration::from_secs(5), call(c.api(old), get())).await;
        if let Ok(Ok(KvResponse::Value(v))) = &r {
            assert_eq!(v.as_deref(), Some(&b"2"[..]), "a stale read from the resumed old leader");
        }
        *answers.entry(format!("{:?}", r.map(|r| r.map(|r| matches!(r, KvResponse::Value(_)))))).or_insert(0) += 1;
    }
    eprintln!("answers of the resumed old leader: {answers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_followers_stops_serving_reads_when_its_lease_lapses() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    c.leader_call(put(b"1")).await?;
    let followers: Vec<_> = c.running_ids().into_iter().filter(|&i| i != leader).collect();
    for &f in &followers {
        c.node(f).proc.pause();
    }
    // Well past the lease (half of the 1 s election_timeout_max): no read without a quorum.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = tokio::time::timeout(Duration::from_secs(3), call(c.api(leader), get())).await;
    for &f in &followers {
        c.node(f).proc.resume();
    }
    assert!(!matches!(r, Ok(Ok(KvResponse::Value(_)))), "a read served without a quorum: {r:?}");
    Ok(())
}
