//! Feeds arbitrary bytes to the frame codec and every message decoder: nothing may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The frame layer: split the bytes into frames as a listener would.
    let mut codec = alces_proto::frame::codec(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        alces_proto::decode_every_message(&frame);
    }
    // And the raw bytes as one payload.
    alces_proto::decode_every_message(data);
});
