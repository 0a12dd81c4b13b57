//! Write buffers kept after their data went out, for the next writes to fill.
//!
//! A file's buffered writes grow one large buffer; once it is written out, a fresh one would
//! have every page faulted in again (a third of the mount's CPU in a sequential write). A few
//! emptied buffers are kept instead, and dropped after a while without use so an idle mount
//! gives the memory back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buffers smaller than this are not worth keeping.
const MIN_CAPACITY: usize = 1 << 20;

pub struct Spare {
    bufs: Mutex<Vec<(Vec<u8>, Instant)>>,
    max: usize,
}

impl Spare {
    /// Keeps at most `max` buffers.
    pub fn new(max: usize) -> Self {
        Spare { bufs: Mutex::new(Vec::new()), max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<u8>, Instant)>> {
        self.bufs.lock().expect("spare buffers lock")
    }

    /// An empty buffer: the largest one given back, or a new one.
    pub fn take(&self) -> Vec<u8> {
        self.lock().pop().map(|(b, _)| b).unwrap_or_default()
    }

    /// Keeps `buf`, emptied, for a later [`Spare::take`] if it is large and there is room.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < MIN_CAPACITY {
            return;
        }
        buf.clear();
        let mut bufs = self.lock();
        if bufs.len() < self.max {
            bufs.push((buf, Instant::now()));
            bufs.sort_by_key(|(b, _)| b.capacity());
        }
    }

    /// Drops the buffers given back more than `idle` ago.
    pub fn trim(&self, idle: Duration) {
        self.lock().retain(|(_, at)| at.elapsed() < idle);
    }

    /// Bytes held by the kept buffers.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().iter().map(|(b, _)| b.capacity()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_empty_small_ones_are_not_kept() {
        let s = Spare::new(2);
        s.give(vec![1u8; 100]);
        assert_eq!(s.held(), 0);
        let mut big = Vec::with_capacity(4 << 20);
        big.extend_from_slice(&[7u8; 1000]);
        s.give(big);
        s.give(Vec::with_capacity(2 << 20));
        s.give(Vec::with_capacity(8 << 20));
        assert_eq!(s.held(), (4 << 20) + (2 << 20), "at most two kept");
        let b = s.take();
        assert!(b.is_empty() && b.capacity() == 4 << 20, "the largest first, emptied");
        s.trim(Duration::ZERO);
        assert_eq!(s.held(), 0);
        assert_eq!(s.take().capacity(), 0);
    }
}
