//! The namespace state machine: inodes, directory entries, chunks, extended attributes,
//! trash and sessions over RocksDB column families, changed only by [`ops::MetaOp`]s
//! applied through Raft.

pub mod apply;
pub mod keys;
pub mod ops;
pub mod perm;
pub mod read;
pub mod records;
pub mod txn;

use alces_raft_store::{ApplyCtx, StateMachine};

use ops::{MetaOp, MetaReply};
use txn::{Fail, Txn};

/// The namespace, as plugged into the replicated store.
#[derive(Debug, Default)]
pub struct Namespace;

impl StateMachine for Namespace {
    type Op = MetaOp;
    type Reply = MetaReply;

    fn column_families(&self) -> &'static [&'static str] {
        keys::COLUMN_FAMILIES
    }

    fn apply(&self, ctx: &mut ApplyCtx<'_>, op: MetaOp) -> alces_raft_store::Result<MetaReply> {
        let origin = op.origin;
        if let Some(o) = origin {
            let recorded =
                ctx.get_value::<records::SessionReplies>(keys::CF_SESSIONS, &keys::session_replies(o.session))?;
            if let Some((_, reply)) = recorded.and_then(|r| r.entries.into_iter().find(|(id, _)| *id == o.request)) {
                return Ok(reply);
            }
        }
        let mut t = Txn::new(ctx);
        let reply = match apply::apply_op(&mut t, op) {
            Ok(reply) => match t.commit() {
                Ok(()) => reply,
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::Status(s)) => MetaReply::Err(s),
            },
            Err(Fail::Status(s)) => MetaReply::Err(s),
            Err(Fail::Store(e)) => return Err(e),
        };
        if let Some(o) = origin {
            record_reply(ctx, o, &reply)?;
        }
        Ok(reply)
    }

    fn describe(&self, cf: &str, key: &[u8], value: &[u8]) -> String {
        describe::record(cf, key, value)
    }
}

mod describe;

/// Most replies kept per session (a client never has more requests in flight).
const MAX_RECORDED_REPLIES: usize = 4096;

/// Records a request's reply, and forgets the session's replies below its low-water mark.
fn record_reply(ctx: &mut ApplyCtx<'_>, o: ops::Origin, reply: &MetaReply) -> alces_raft_store::Result<()> {
    // A closed session records nothing (its records were dropped with it).
    if ctx.get(keys::CF_SESSIONS, &keys::session(o.session))?.is_none() {
        return Ok(());
    }
    let key = keys::session_replies(o.session);
    let mut rec = ctx.get_value::<records::SessionReplies>(keys::CF_SESSIONS, &key)?.unwrap_or_default();
    rec.entries.retain(|(id, _)| *id >= o.low_water);
    if rec.entries.len() >= MAX_RECORDED_REPLIES {
        rec.entries.remove(0);
    }
    rec.entries.push((o.request, reply.clone()));
    ctx.put_value(keys::CF_SESSIONS, key, &rec)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;
