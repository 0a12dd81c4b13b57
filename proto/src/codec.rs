//! The one bincode configuration every link uses.
//!
//! Payloads are bincode 2 (variable-length integers, little endian) through serde. The decoder is
//! given a byte limit so that a length field inside a payload cannot make it allocate more than
//! a frame can carry.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// No payload, and no container inside one, may claim more bytes than this.
pub const DECODE_LIMIT: usize = 256 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A payload that could not be decoded: bad bytes, an unknown variant, trailing garbage.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed payload: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    #[error("payload has {0} trailing bytes")]
    Trailing(usize),
}

/// Encodes a message. Serde types of this project always encode; an error here is a bug in a
/// type definition (for example a map with non-serializable keys), so it is reported, not hidden.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
    match bincode::serde::encode_to_vec(msg, config()) {
        Ok(bytes) => bytes,
        Err(e) => panic!("message type cannot be encoded (a bug in its definition): {e}"),
    }
}

/// Encodes a message as a whole frame: a 4-byte big-endian length (of the payload) and the
/// payload, in one buffer, so that the frame goes to the socket without another copy. A
/// payload longer than `u32::MAX` bytes gets no valid header; callers check their frame limit
/// (always far below) before writing it.
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
    struct Out(Vec<u8>);
    impl bincode::enc::write::Writer for Out {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }
    let mut out = Out(vec![0u8; 4]);
    if let Err(e) = bincode::serde::encode_into_writer(msg, &mut out, config()) {
        panic!("message type cannot be encoded (a bug in its definition): {e}");
    }
    let mut frame = out.0;
    let len = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// Decodes a whole payload into a value that borrows from it (byte slices point into
/// `bytes`); trailing bytes are an error, as in [`decode`].
pub fn decode_borrowed<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, DecodeError> {
    let (msg, used) = bincode::serde::borrow_decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

/// Decodes a whole payload: trailing bytes are an error, so a frame is one message exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        A { name: String, list: Vec<u64> },
        B(Option<Box<Sample>>),
        C([u8; 4]),
    }

    #[test]
    fn a_frame_is_the_length_and_the_payload() {
        let v = Sample::A { name: "frame".into(), list: vec![3; 40] };
        let frame = encode_frame(&v);
        let payload = encode(&v);
        assert_eq!(frame[..4], (payload.len() as u32).to_be_bytes());
        assert_eq!(frame[4..], payload[..]);
    }

    #[test]
    fn round_trip() {
        let v = Sample::B(Some(Box::new(Sample::A { name: "x".into(), list: vec![1, u64::MAX] })));
        assert_eq!(decode::<Sample>(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode(&Sample::C([1, 2, 3, 4]));
        b.push(0);
        assert!(matches!(decode::<Sample>(&b), Err(DecodeError::Trailing(1))));
    }

    #[test]
    fn huge_length_claims_do_not_allocate() {
        // Variant A, then a string length of u64::MAX in varint form.
        let bytes = [0u8, 253, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode::<Sample>(&bytes);
            crate::decode_every_message(&bytes);
        }
    }
}
