//! Handles that mounts hold open on regular files, kept in the leader's memory only.
//!
//! A handle matters for one thing: a file whose last name goes while a handle is open on it
//! must stay readable and writable through that handle (POSIX; MooseFS keeps such files as
//! *reserved*). Recording every open through Raft would cost a majority fsync per open, so
//! the leader answers an open of a regular file at once and keeps the handle here, under the
//! number the mount gave it. In return:
//!
//! * the namespace never frees a deleted file by itself: a file that loses its last name (with
//!   no trash time), leaves the trash, or loses its last recorded handle becomes reserved, and
//!   only [`OpBody::Free`], proposed by [`reap`], frees it, once neither a recorded handle
//!   (creates, other kinds) nor one kept here is open on it;
//! * a new leader does not know the handles opened under the old one: each mount tells it
//!   all of its handles when it registers again (`Register::handles`), and the new leader
//!   frees nothing until every session it knows has done so, or `DELETE_DELAY_INIT` has
//!   passed (a mount that could not reach a leader for that long has failed its calls
//!   already);
//! * an open races a free only through [`Handles::open`] and [`Handles::begin_freeing`],
//!   which take one lock: an open finds the file gone or being freed (ENOENT), or the
//!   reaper finds the handle and leaves the file.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use alces_proto::types::{Inode, SessionId};
use alces_proto::Status;

use crate::master::Master;
use crate::namespace::ops::{MetaReply, OpBody};

/// Reserved files looked at per page, and freed per `Free`.
const REAP_PAGE: usize = 1000;

#[derive(Default)]
pub struct Handles {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_session: HashMap<SessionId, HashMap<u64, Inode>>,
    /// Open handles per inode, over all sessions.
    by_inode: HashMap<Inode, u32>,
    /// Files a `Free` was proposed for and not yet applied here.
    freeing: HashSet<Inode>,
    /// Sessions that told this master their handles during `term`.
    announced: HashSet<SessionId>,
    term: u64,
}

impl State {
    fn add(&mut self, inode: Inode) {
        *self.by_inode.entry(inode).or_default() += 1;
    }

    fn remove(&mut self, inode: Inode) {
        if let Some(n) = self.by_inode.get_mut(&inode) {
            *n -= 1;
            if *n == 0 {
                self.by_inode.remove(&inode);
            }
        }
    }

    fn drop_session(&mut self, session: SessionId) {
        for (_, inode) in self.by_session.remove(&session).unwrap_or_default() {
            self.remove(inode);
        }
    }
}

impl Handles {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("handles lock")
    }

    /// Opens handle `handle` of `session` on `inode` once `exists` says the file is still
    /// there (checked under the lock, against frees in flight). Opening a handle that is
    /// already open (a retried request) changes nothing.
    pub fn open(
        &self,
        session: SessionId,
        handle: u64,
        inode: Inode,
        exists: impl FnOnce() -> Result<bool, Status>,
    ) -> Result<(), Status> {
        let mut st = self.lock();
        if st.freeing.contains(&inode) || !exists()? {
            return Err(Status::NotFound);
        }
        let old = st.by_session.entry(session).or_default().insert(handle, inode);
        match old {
            Some(o) if o == inode => {}
            Some(o) => {
                st.remove(o);
                st.add(inode);
            }
            None => st.add(inode),
        }
        Ok(())
    }

    /// Closes handles of `session`; unknown ones are skipped.
    pub fn release(&self, session: SessionId, handles: &[u64]) {
        let mut st = self.lock();
        for h in handles {
            let closed = st.by_session.get_mut(&session).and_then(|m| m.remove(h));
            if let Some(inode) = closed {
                st.remove(inode);
            }
        }
        if st.by_session.get(&session).is_some_and(|m| m.is_empty()) {
            st.by_session.remove(&session);
        }
    }

    /// Everything `session` holds open, as its mount says on registering in `term`: replaces
    /// what was known of it.
    pub fn announce(&self, session: SessionId, handles: Vec<(u64, Inode)>, term: u64) {
        let mut st = self.lock();
        if st.term != term {
            st.term = term;
            st.announced.clear();
        }
        st.drop_session(session);
        for (h, inode) in handles {
            if st.by_session.entry(session).or_default().insert(h, inode).is_none() {
                st.add(inode);
            }
        }
        st.announced.insert(session);
    }

    /// The session ended: its handles are closed.
    pub fn forget_session(&self, session: SessionId) {
        let mut st = self.lock();
        st.drop_session(session);
        st.announced.remove(&session);
    }

    /// Drops the handles of sessions that no longer exist (closed while another master led:
    /// their handles would otherwise keep files for as long as this one runs).
    pub fn retain_sessions(&self, live: &HashSet<SessionId>) {
        let mut st = self.lock();
        let gone: Vec<SessionId> = st.by_session.keys().filter(|s| !live.contains(s)).copied().collect();
        for s in gone {
            st.drop_session(s);
        }
        st.announced.retain(|s| live.contains(s));
    }

    /// Whether every one of `sessions` told this master its handles during `term`.
    pub fn all_announced(&self, sessions: impl IntoIterator<Item = SessionId>, term: u64) -> bool {
        let st = self.lock();
        sessions.into_iter().all(|s| st.term == term && st.announced.contains(&s))
    }

    /// Of `candidates`, the files no handle here is open on, now marked as being freed (no
    /// new handle opens on them until [`Handles::end_freeing`]).
    pub fn begin_freeing(&self, candidates: Vec<Inode>) -> Vec<Inode> {
        let mut st = self.lock();
        let chosen: Vec<Inode> =
            candidates.into_iter().filter(|i| !st.by_inode.contains_key(i) && !st.freeing.contains(i)).collect();
        st.freeing.extend(chosen.iter().copied());
        chosen
    }

    pub fn end_freeing(&self, inodes: &[Inode]) {
        let mut st = self.lock();
        for i in inodes {
            st.freeing.remove(i);
        }
    }

    /// Handles open, over all sessions.
    pub fn count(&self) -> usize {
        self.lock().by_session.values().map(|m| m.len()).sum()
    }

    #[cfg(test)]
    fn is_open(&self, inode: Inode) -> bool {
        self.lock().by_inode.contains_key(&inode)
    }
}

/// When the leader may free files: every session it knows told it its handles in this term,
/// or it has led for `DELETE_DELAY_INIT`. Forgets the handles of sessions that are gone.
fn may_free(m: &Master, leading_since: Instant) -> bool {
    let Ok(sessions) = m.local_view().sessions() else { return false };
    let live: HashSet<SessionId> = sessions.into_iter().map(|(id, _)| id).collect();
    m.handles.retain_sessions(&live);
    leading_since.elapsed() >= m.config.delete_delay_init || m.handles.all_announced(live, m.term())
}

/// Frees the reserved files that no handle, recorded or kept here, is open on. Leader only.
pub(crate) async fn reap(m: &Arc<Master>, leading_since: Instant) {
    if !may_free(m, leading_since) {
        return;
    }
    let mut after = None;
    loop {
        let page: Result<(Option<Inode>, Vec<Inode>), Status> = match m.read().await {
            Ok(v) => v.trash(b'r', after, REAP_PAGE).and_then(|page| {
                let mut idle = Vec::new();
                for (inode, _) in &page {
                    if !v.has_recorded_handles(*inode)? {
                        idle.push(*inode);
                    }
                }
                Ok((page.last().map(|(i, _)| *i), idle))
            }),
            Err(e) => {
                tracing::debug!(error = ?e, "no linearizable read for freeing deleted files");
                return;
            }
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading reserved files failed");
                return;
            }
        };
        let (last, idle) = page;
        let chosen = m.handles.begin_freeing(idle);
        if !chosen.is_empty() {
            let r = m.propose(OpBody::Free { inodes: chosen.clone() }).await;
            m.handles.end_freeing(&chosen);
            match r {
                Ok(MetaReply::Freed(n)) if n > 0 => tracing::debug!(files = n, "freed deleted files"),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = ?e, "freeing deleted files failed");
                    return;
                }
            }
        }
        match last {
            Some(l) => after = Some(l),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: SessionId = SessionId(1);
    const S2: SessionId = SessionId(2);

    #[test]
    fn handles_are_counted_per_file_and_closed_once() {
        let h = Handles::default();
        let f = Inode(10);
        h.open(S1, 1, f, || Ok(true)).unwrap();
        h.open(S1, 1, f, || Ok(true)).unwrap(); // a retried open
        h.open(S2, 1, f, || Ok(true)).unwrap();
        assert_eq!(h.count(), 2);
        h.release(S1, &[1, 1, 7]);
        assert!(h.is_open(f), "S2's handle is still open");
        assert_eq!(h.begin_freeing(vec![f]), Vec::<Inode>::new());
        h.release(S2, &[1]);
        assert!(!h.is_open(f));
        assert_eq!(h.count(), 0);
        assert_eq!(h.open(S1, 2, Inode(11), || Ok(false)), Err(Status::NotFound));
        assert_eq!(h.count(), 0, "a missing file gets no handle");
    }

    #[test]
    fn a_file_being_freed_cannot_be_opened_and_an_open_one_is_not_freed() {
        let h = Handles::default();
        let (a, b) = (Inode(1), Inode(2));
        h.open(S1, 5, b, || Ok(true)).unwrap();
        assert_eq!(h.begin_freeing(vec![a, b]), vec![a]);
        assert_eq!(h.open(S2, 1, a, || Ok(true)), Err(Status::NotFound));
        assert_eq!(h.begin_freeing(vec![a]), Vec::<Inode>::new(), "already being freed");
        h.end_freeing(&[a]);
        h.open(S2, 1, a, || Ok(true)).unwrap();
        assert!(h.is_open(a));
    }

    #[test]
    fn a_mount_announcing_its_handles_replaces_what_was_known() {
        let h = Handles::default();
        let (a, b, c) = (Inode(1), Inode(2), Inode(3));
        h.open(S1, 1, a, || Ok(true)).unwrap();
        h.open(S1, 2, b, || Ok(true)).unwrap();
        assert!(!h.all_announced([S1], 4), "nobody announced in term 4");
        assert!(h.all_announced([], 4));
        // Handle 1 was closed under another leader; handle 3 opened there.
        h.announce(S1, vec![(2, b), (3, c)], 4);
        assert!(!h.is_open(a));
        assert!(h.is_open(b) && h.is_open(c));
        assert!(h.all_announced([S1], 4));
        assert!(!h.all_announced([S1, S2], 4));
        assert!(!h.all_announced([S1], 5), "a new term needs new announcements");
        h.announce(S2, vec![], 5);
        assert!(!h.all_announced([S1, S2], 5));
        h.forget_session(S1);
        assert!(!h.is_open(b) && !h.is_open(c));
        assert!(h.all_announced([S2], 5));
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn handles_of_sessions_that_are_gone_are_dropped() {
        let h = Handles::default();
        h.open(S1, 1, Inode(1), || Ok(true)).unwrap();
        h.open(S2, 1, Inode(2), || Ok(true)).unwrap();
        h.announce(S1, vec![(1, Inode(1))], 3);
        h.retain_sessions(&HashSet::from([S2]));
        assert!(!h.is_open(Inode(1)), "S1 was closed elsewhere");
        assert!(h.is_open(Inode(2)));
        assert!(!h.all_announced([S1], 3));
        assert_eq!(h.count(), 1);
    }
}
