//! Idle connections kept per address for the next request to it (the next server of a
//! chain, a Raft peer): a request takes one instead of connecting and shaking hands again.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::frame::Connection;

pub struct IdlePool {
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    per_addr: usize,
}

impl IdlePool {
    /// A pool that keeps up to `per_addr` idle connections to each address.
    pub fn new(per_addr: usize) -> IdlePool {
        IdlePool { idle: Mutex::default(), per_addr }
    }

    /// An idle connection to `addr`, if any. The peer may have closed it meanwhile (it
    /// restarted): a request on it then fails at once, and the caller dials again.
    pub fn take(&self, addr: &str) -> Option<Connection> {
        self.idle.lock().expect("pool lock").get_mut(addr).and_then(Vec::pop)
    }

    /// Keeps `conn` for the next request to `addr` (dropped if enough are kept).
    pub fn give_back(&self, addr: &str, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        let kept = idle.entry(addr.to_string()).or_default();
        if kept.len() < self.per_addr {
            kept.push(conn);
        }
    }

    /// Drops every idle connection to `addr` (one turned out dead: the others are as old).
    pub fn forget(&self, addr: &str) {
        self.idle.lock().expect("pool lock").remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn() -> Connection {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, _) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        Connection::new(c.unwrap(), 1024).unwrap()
    }

    #[tokio::test]
    async fn connections_are_kept_per_address_up_to_the_bound() {
        let pool = IdlePool::new(2);
        assert!(pool.take("a").is_none());
        for _ in 0..3 {
            pool.give_back("a", conn().await);
        }
        pool.give_back("b", conn().await);
        assert!(pool.take("a").is_some() && pool.take("a").is_some());
        assert!(pool.take("a").is_none(), "the third was dropped");
        pool.forget("b");
        assert!(pool.take("b").is_none());
    }
}
