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
        let mut t = Txn::new(ctx);
        match apply::apply_op(&mut t, op) {
            Ok(reply) => match t.commit() {
                Ok(()) => Ok(reply),
                Err(Fail::Store(e)) => Err(e),
                Err(Fail::Status(s)) => Ok(MetaReply::Err(s)),
            },
            Err(Fail::Status(s)) => Ok(MetaReply::Err(s)),
            Err(Fail::Store(e)) => Err(e),
        }
    }

    fn describe(&self, cf: &str, key: &[u8], value: &[u8]) -> String {
        describe::record(cf, key, value)
    }
}

mod describe;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_support;
