//! Length-delimited framing with a hard size limit.
//!
//! A frame is a 4-byte big-endian payload length followed by that many payload bytes. The
//! limit is checked on the header, before a single payload byte is buffered, so a peer that
//! announces a 4 GiB frame costs the node four bytes of memory, not four gigabytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Default largest payload either side accepts: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// The smallest limit that may be configured. Below this a HELLO plus a small key no longer
/// fits, and a node configured that way could serve nobody.
pub const MIN_MAX_FRAME: usize = 1024;

/// A frame that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announced a payload longer than the configured limit. The connection must
    /// be closed: the announced bytes are not read, so the stream is no longer in sync.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length announced by the header (or produced by the encoder).
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A frame header announced an empty payload; every message has at least a header.
    #[error("empty frame")]
    Empty,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Codec for skv frames: decodes to the raw payload and encodes anything [`EncodeFrame`].
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that refuses payloads longer than `max_frame` bytes (in both directions).
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The payload limit this codec enforces.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&src[..FRAME_HEADER_LEN]);
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let total = FRAME_HEADER_LEN + len;
        if src.len() < total {
            // Reserve only what this frame still needs; `len` is already bounded above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

/// What [`rewind`] makes room for from a buffer's start: tokio-util's initial capacity for a
/// `Framed`'s buffers, so a buffer that never grew past it is always rewound when it can be.
pub const REWIND_BYTES: usize = 8 * 1024;

/// Move an empty connection buffer's cursor back to the start of its allocation, so the
/// next batch is written (or read) into the lines the last one used. Never allocates: when a
/// frame split off earlier still shares the allocation, the buffer is left as it is.
///
/// Why: a `BytesMut` appends after what was consumed until its allocation runs out, so each
/// batch of a pipelined connection lands `REWIND_BYTES` further on, and every connection's
/// two buffers each keep 8 KiB warm instead of one batch's 2 KiB. With 50 connections that
/// is 800 KiB, more than a core's 512 KiB L2, which the node's read cache also needs.
pub fn rewind(buf: &mut BytesMut) {
    if buf.is_empty() {
        // `false` only when the allocation is still shared; then the cursor moves on.
        let _ = buf.try_reclaim(REWIND_BYTES);
    }
}

/// A message that can be written as one frame payload.
pub trait EncodeFrame {
    /// Append the payload (without the length prefix) to `dst`.
    fn encode_payload(&self, dst: &mut BytesMut);
}

impl<M: EncodeFrame> Encoder<&M> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &M, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(item, dst, self.max_frame)
    }
}

/// Append `item` to `dst` as one frame. The payload is written in place after a placeholder
/// header that is patched afterwards, so encoding never copies the payload.
pub fn encode_frame<M: EncodeFrame + ?Sized>(
    item: &M,
    dst: &mut BytesMut,
    max_frame: usize,
) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    item.encode_payload(dst);
    let len = dst.len() - start - FRAME_HEADER_LEN;
    if len > max_frame {
        dst.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    // `len <= max_frame`, and the limit is configured as a u32-range value.
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: max_frame,
    })?;
    dst[start..start + FRAME_HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_buffer_is_rewound_unless_a_frame_still_shares_it() {
        let mut buf = BytesMut::with_capacity(REWIND_BYTES);
        let start = buf.as_ptr();
        buf.extend_from_slice(&[1u8; 3000]);
        buf.advance(3000);
        assert_eq!(
            buf.capacity(),
            REWIND_BYTES - 3000,
            "consumed bytes are not reused yet"
        );
        rewind(&mut buf);
        assert_eq!((buf.as_ptr(), buf.capacity()), (start, REWIND_BYTES));

        // A frame split off and still alive shares the allocation: no rewind, no allocation.
        buf.extend_from_slice(&[2u8; 3000]);
        let frame = buf.split_to(3000).freeze();
        let cursor = buf.as_ptr();
        rewind(&mut buf);
        assert_eq!(
            buf.as_ptr(),
            cursor,
            "rewinding would overwrite a live frame"
        );
        drop(frame);
        rewind(&mut buf);
        assert_eq!(buf.as_ptr(), start);

        // A buffer holding bytes is never moved.
        buf.extend_from_slice(&[3u8; 10]);
        buf.advance(5);
        let holding = buf.as_ptr();
        rewind(&mut buf);
        assert_eq!((buf.as_ptr(), &buf[..]), (holding, &[3u8; 5][..]));
    }

    struct Raw(&'static [u8]);
    impl EncodeFrame for Raw {
        fn encode_payload(&self, dst: &mut BytesMut) {
            dst.extend_from_slice(self.0);
        }
    }

    #[test]
    fn round_trip_and_partial_input() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::new();
        codec.encode(&Raw(b"hello"), &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x00\x00\x00\x05hello");
        let mut partial = BytesMut::from(&buf[..6]);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.extend_from_slice(&buf[6..]);
        assert_eq!(codec.decode(&mut partial).unwrap().unwrap(), &b"hello"[..]);
        assert!(partial.is_empty());
    }

    #[test]
    fn oversized_header_is_refused_before_buffering() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xff"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 16
            }
        ));
        assert!(buf.capacity() < 1024, "decoder reserved {}", buf.capacity());
    }

    #[test]
    fn encoder_refuses_oversized_payload_and_leaves_buffer_clean() {
        let mut codec = FrameCodec::new(4);
        let mut buf = BytesMut::from(&b"x"[..]);
        assert!(matches!(
            codec.encode(&Raw(b"hello"), &mut buf),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        assert_eq!(&buf[..], b"x");
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x05he"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { buffered: 6 })
        ));
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&b"\x00\x00\x00\x00"[..])),
            Err(FrameError::Empty)
        ));
    }
}
