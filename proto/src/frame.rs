//! Length-prefixed frames over TCP.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes; the payload is
//! one bincode message ([`crate::codec`]). A frame longer than the connection's limit is refused
//! as soon as its length is read, before any payload is buffered, and the connection is then
//! unusable: the caller logs the error and drops it.
//!
//! [`Connection`] can be split into a [`FrameReader`] and a [`FrameWriter`] so that one task
//! reads requests while another writes replies out of order.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::codec::{self, DecodeError};

/// Queued outgoing bytes beyond which [`FrameWriter::feed`] writes them out at once, so that a
/// long batch does not pile up in memory.
const FEED_HIGH_WATER: usize = 1 << 20;
/// Frames handed to one vectored write at most.
const IOV_MAX: usize = 64;

/// Frame limit of links that carry metadata and 64 KiB data blocks.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes refused (limit {limit})")]
    TooLarge { len: usize, limit: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed by peer")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl FrameError {
    /// Whether the peer simply went away (nothing worth a warning in the logs).
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Closed => true,
            FrameError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    fn from_io(e: io::Error, limit: usize) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>()) {
            // The codec only says "frame size too big"; the exact length is not exposed.
            return FrameError::TooLarge { len: limit + 1, limit };
        }
        if e.kind() == io::ErrorKind::Other && e.to_string().contains("bytes remaining") {
            return FrameError::Truncated;
        }
        FrameError::Io(e)
    }
}

/// The frame codec every connection uses (also what the fuzz target feeds).
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().big_endian().length_field_length(4).max_frame_length(max_frame).new_codec()
}

/// The reading half of a connection.
pub struct FrameReader {
    inner: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    max_frame: usize,
}

/// The writing half of a connection. Frames are encoded with their length prefix in one
/// buffer ([`codec::encode_frame`]) and written with vectored writes straight from there.
pub struct FrameWriter {
    w: OwnedWriteHalf,
    /// Whole frames not yet written; the first may be partly written.
    queue: VecDeque<Bytes>,
    queued: usize,
    max_frame: usize,
}

impl FrameReader {
    /// Reads one raw frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(buf)) => Ok(Some(buf.freeze())),
            Some(Err(e)) => Err(FrameError::from_io(e, self.max_frame)),
        }
    }

    /// Reads and decodes one message; `Ok(None)` on a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.recv_frame().await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        }
    }

    /// Like [`FrameReader::recv`], but a clean end of stream is [`FrameError::Closed`].
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        self.recv().await?.ok_or(FrameError::Closed)
    }
}

impl FrameWriter {
    fn new(w: OwnedWriteHalf, max_frame: usize) -> Self {
        FrameWriter { w, queue: VecDeque::new(), queued: 0, max_frame }
    }

    /// Queues one message without flushing; call [`FrameWriter::flush`] after a batch.
    pub async fn feed<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), FrameError> {
        let frame = codec::encode_frame(msg);
        let len = frame.len() - 4;
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len, limit: self.max_frame });
        }
        self.push(Bytes::from(frame)).await
    }

    async fn push(&mut self, frame: Bytes) -> Result<(), FrameError> {
        self.queued += frame.len();
        self.queue.push_back(frame);
        if self.queued >= FEED_HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out every queued frame. Cancel-safe: what a cancelled flush did not write stays
    /// queued, from the first unwritten byte.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        while !self.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = self.queue.iter().take(IOV_MAX).map(|b| IoSlice::new(b)).collect();
            let n = self.w.write_vectored(&slices).await.map_err(FrameError::Io)?;
            if n == 0 {
                return Err(FrameError::Io(io::ErrorKind::WriteZero.into()));
            }
            self.consumed(n);
        }
        Ok(())
    }

    /// Drops the first `n` queued bytes (they were written).
    fn consumed(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }

    /// Writes one message and flushes it.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues one frame whose payload is `parts` one after the other (already encoded, for
    /// example a received frame passed on, or a header and the bytes it announces), without
    /// copying them; call [`FrameWriter::flush`] after a batch.
    pub async fn feed_parts(&mut self, parts: Vec<Bytes>) -> Result<(), FrameError> {
        let len: usize = parts.iter().map(Bytes::len).sum();
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len, limit: self.max_frame });
        }
        self.push(Bytes::copy_from_slice(&(len as u32).to_be_bytes())).await?;
        for part in parts {
            self.push(part).await?;
        }
        Ok(())
    }

    /// [`FrameWriter::feed_parts`], then a flush.
    pub async fn send_parts(&mut self, parts: Vec<Bytes>) -> Result<(), FrameError> {
        self.feed_parts(parts).await?;
        self.flush().await
    }

    /// Sends every message that arrives on `rx` until it closes or the connection fails;
    /// whatever is queued meanwhile goes out with one flush.
    pub async fn pump<T: Serialize>(self, rx: tokio::sync::mpsc::UnboundedReceiver<T>) {
        self.pump_frames(rx, OutFrame::Message).await
    }

    /// Like [`FrameWriter::pump`], with `frame` telling for each value whether it is a message
    /// to encode or a payload already in parts (see [`FrameWriter::feed_parts`]).
    pub async fn pump_frames<T, M: Serialize>(
        mut self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
        frame: impl Fn(T) -> OutFrame<M>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(out) = next {
                let fed = match frame(out) {
                    OutFrame::Message(m) => self.feed(&m).await,
                    OutFrame::Parts(parts) => self.feed_parts(parts).await,
                };
                if fed.is_err() {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Writes raw bytes as one frame (used by tests that send garbage on purpose).
    pub async fn send_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        self.send_parts(vec![payload]).await
    }
}

/// What [`FrameWriter::pump_frames`] writes for one value.
pub enum OutFrame<M> {
    /// A message, encoded into one frame.
    Message(M),
    /// A payload already encoded, in parts written one after the other.
    Parts(Vec<Bytes>),
}

/// A framed TCP connection.
pub struct Connection {
    pub reader: FrameReader,
    pub writer: FrameWriter,
    peer: SocketAddr,
}

impl Connection {
    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream, max_frame: usize) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (r, w) = stream.into_split();
        Ok(Connection {
            reader: FrameReader { inner: FramedRead::new(r, codec(max_frame)), max_frame },
            writer: FrameWriter::new(w, max_frame),
            peer,
        })
    }

    /// Connects with a time limit.
    pub async fn connect(addr: impl ToSocketAddrs, max_frame: usize, timeout: Duration) -> Result<Self, FrameError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| FrameError::Timeout(timeout))?
            .map_err(FrameError::Io)?;
        Connection::new(stream, max_frame).map_err(FrameError::Io)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.writer.send(msg).await
    }

    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.reader.recv().await
    }

    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        self.reader.expect().await
    }

    /// Sends a request and waits for its reply, both within `timeout`.
    pub async fn call<Q: Serialize + ?Sized, A: DeserializeOwned>(
        &mut self,
        req: &Q,
        timeout: Duration,
    ) -> Result<A, FrameError> {
        let frame = self.call_frame(req, timeout).await?;
        Ok(codec::decode(&frame)?)
    }

    /// Like [`Connection::call`], but returns the reply's frame undecoded (for a decoder that
    /// leaves bulk bytes in it).
    pub async fn call_frame<Q: Serialize + ?Sized>(&mut self, req: &Q, timeout: Duration) -> Result<Bytes, FrameError> {
        tokio::time::timeout(timeout, async {
            self.send(req).await?;
            self.reader.recv_frame().await?.ok_or(FrameError::Closed)
        })
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
    }

    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }

    /// Puts a split connection back together, if nothing is left half-read or unsent.
    pub fn rejoin(reader: FrameReader, writer: FrameWriter) -> Option<Connection> {
        if !reader.inner.read_buffer().is_empty() || !writer.queue.is_empty() {
            return None;
        }
        let (max_frame, r) = (reader.max_frame, reader.inner.into_inner());
        let w = writer.w;
        let stream = r.reunite(w).ok()?;
        Connection::new(stream, max_frame).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(limit: usize) -> (TcpStream, Connection) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, Connection::new(server, limit).unwrap())
    }

    #[tokio::test]
    async fn message_round_trip() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut c = Connection::new(s, 1024).unwrap();
            let m: Vec<String> = c.expect().await.unwrap();
            c.send(&m.len()).await.unwrap();
        });
        let mut c = Connection::connect(addr, 1024, Duration::from_secs(5)).await.unwrap();
        let n: usize = c.call(&vec!["a".to_string(), "b".to_string()], Duration::from_secs(5)).await.unwrap();
        assert_eq!(n, 2);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn large_frames_fed_in_a_batch_arrive_whole_and_in_order() {
        let (raw, mut receiver) = pair(8 << 20).await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = receiver.recv::<(u32, Vec<u8>)>().await.unwrap() {
                got.push(m);
            }
            got
        });
        let mut c = Connection::new(raw, 8 << 20).unwrap();
        let sent: Vec<(u32, Vec<u8>)> = (0..7u32).map(|i| (i, vec![i as u8; (3 << 20) + i as usize * 1001])).collect();
        for m in &sent {
            c.writer.feed(m).await.unwrap();
        }
        c.writer.flush().await.unwrap();
        drop(c);
        assert!(reader.await.unwrap() == sent);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let (mut raw, mut conn) = pair(1024).await;
        raw.write_all(&(1025u32).to_be_bytes()).await.unwrap();
        assert!(matches!(conn.recv::<u8>().await, Err(FrameError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_and_clean_eof_is_not() {
        let (mut raw, mut conn) = pair(1024).await;
        raw.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(raw);
        assert!(matches!(conn.recv::<u8>().await, Err(FrameError::Truncated)));

        let (raw, mut conn) = pair(1024).await;
        drop(raw);
        assert!(matches!(conn.recv::<u8>().await, Ok(None)));
    }

    #[tokio::test]
    async fn garbage_payload_is_a_decode_error() {
        let (mut raw, mut conn) = pair(1024).await;
        raw.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(conn.recv::<Vec<String>>().await, Err(FrameError::Decode(_))));
    }

    #[tokio::test]
    async fn outgoing_frames_respect_the_limit() {
        let (_raw, mut conn) = pair(16).await;
        let err = conn.send(&vec![7u8; 100]).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        let parts = vec![Bytes::from_static(&[1; 10]), Bytes::from_static(&[2; 7])];
        let err = conn.writer.send_parts(parts).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 17, limit: 16 }));
    }
}
