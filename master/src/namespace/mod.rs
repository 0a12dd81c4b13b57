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
            if let Some(recorded) =
                ctx.get_value::<MetaReply>(keys::CF_SESSIONS, &keys::request_reply(o.session, o.request))?
            {
                return Ok(recorded);
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

/// Records a request's reply, and forgets the session's replies below its low-water mark.
fn record_reply(ctx: &mut ApplyCtx<'_>, o: ops::Origin, reply: &MetaReply) -> alces_raft_store::Result<()> {
    // A closed session records nothing (its records were dropped with it).
    if ctx.get(keys::CF_SESSIONS, &keys::session(o.session))?.is_none() {
        return Ok(());
    }
    ctx.put_value(keys::CF_SESSIONS, keys::request_reply(o.session, o.request), reply)?;
    let prefix = keys::tagged(b'q', o.session.0);
    for (k, _) in ctx.scan(keys::CF_SESSIONS, &prefix, 64)? {
        if keys::pair_second(&k).is_some_and(|r| r < o.low_water) {
            ctx.delete(keys::CF_SESSIONS, &k)?;
        } else {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_support;
