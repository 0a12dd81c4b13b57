//! Length-prefixed frames over TCP.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes; the payload is
//! one bincode message ([`crate::codec`]). A frame longer than the connection's limit is refused
//! as soon as its length is read, before any payload is buffered, and the connection is then
//! unusable: the caller logs the error and drops it.
//!
//! [`Connection`] can be split into a [`FrameReader`] and a [`FrameWriter`] so that one task
//! reads requests while another writes replies out of order.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::{self, DecodeError};

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

/// The writing half of a connection.
pub struct FrameWriter {
    inner: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
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
    /// Queues one message without flushing; call [`FrameWriter::flush`] after a batch.
    pub async fn feed<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), FrameError> {
        let bytes = codec::encode(msg);
        if bytes.len() > self.max_frame {
            return Err(FrameError::TooLarge { len: bytes.len(), limit: self.max_frame });
        }
        self.inner.feed(Bytes::from(bytes)).await.map_err(|e| FrameError::from_io(e, self.max_frame))
    }

    pub async fn flush(&mut self) -> Result<(), FrameError> {
        SinkExt::<Bytes>::flush(&mut self.inner).await.map_err(|e| FrameError::from_io(e, self.max_frame))
    }

    /// Writes one message and flushes it.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Sends every message that arrives on `rx` until it closes or the connection fails;
    /// whatever is queued meanwhile goes out with one flush.
    pub async fn pump<T: Serialize>(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<T>) {
        while let Some(first) = rx.recv().await {
            if self.feed(&first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if self.feed(&more).await.is_err() {
                    return;
                }
            }
            if self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Writes raw bytes as one frame (used by tests that send garbage on purpose).
    pub async fn send_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        self.inner.send(payload).await.map_err(|e| FrameError::from_io(e, self.max_frame))
    }
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
            writer: FrameWriter { inner: FramedWrite::new(w, codec(max_frame)), max_frame },
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
        tokio::time::timeout(timeout, async {
            self.send(req).await?;
            self.expect().await
        })
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
    }

    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }

    /// Puts a split connection back together, if nothing is left half-read or unsent.
    pub fn rejoin(reader: FrameReader, writer: FrameWriter) -> Option<Connection> {
        if !reader.inner.read_buffer().is_empty() || !writer.inner.write_buffer().is_empty() {
            return None;
        }
        let (max_frame, r) = (reader.max_frame, reader.inner.into_inner());
        let w = writer.inner.into_inner();
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
    }
}
