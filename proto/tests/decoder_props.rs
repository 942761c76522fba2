//! Property tests: the frame decoder and message decoders take arbitrary bytes from an
//! untrusted peer, so they must never panic and never buffer beyond the frame limit.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use skv_proto::{FrameCodec, FrameError, Request, Response, FRAME_HEADER_LEN};
use tokio_util::codec::Decoder;

const MAX: usize = 4096;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, fed in arbitrary chunks: the decoder returns frames or a typed error,
    /// and its buffer never grows past what was fed plus one frame's worth.
    #[test]
    fn frame_decoder_is_total_and_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..3 * MAX),
        chunk in 1usize..700,
    ) {
        let mut codec = FrameCodec::new(MAX);
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        'feed: for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        prop_assert!(!frame.is_empty() && frame.len() <= MAX);
                        // Whatever the frame holds, decoding it as either message is total.
                        let _ = Request::decode(frame.clone());
                        let _ = Response::decode(frame);
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len, max }) => {
                        prop_assert!(len > max);
                        break 'feed;
                    }
                    Err(FrameError::Empty) => break 'feed,
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
            prop_assert!(
                buf.capacity() <= fed + FRAME_HEADER_LEN + MAX + 64,
                "buffer capacity {} after {} bytes fed", buf.capacity(), fed
            );
        }
    }

    /// Well-framed but arbitrary payloads never panic the message decoders.
    #[test]
    fn message_decoders_are_total(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Request::decode(Bytes::from(payload.clone()));
        let _ = Response::decode(Bytes::from(payload));
    }

    /// Payloads that start like a valid request and then go wrong still decode to an error.
    #[test]
    fn mutated_requests_never_panic(
        id in any::<u64>(), op in 0u8..8, flags in 0u8..3,
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut raw = BytesMut::new();
        raw.put_u64(id);
        raw.put_u8(op);
        raw.put_u8(flags);
        raw.extend_from_slice(&rest);
        let _ = Request::decode(raw.freeze());
    }
}
