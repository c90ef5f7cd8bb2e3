//! HTTP/2 frames as far as the shim needs them (RFC 9113 §3.4, §4.1, §6.2,
//! §6.10): the client preface, the 9-byte frame header, the header block
//! fragment of a HEADERS payload, and a header block written back as one
//! HEADERS frame and its CONTINUATION frames. Pure: bytes in, bytes out.

/// What every client connection starts with.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub(crate) const HEADER_LEN: usize = 9;

/// SETTINGS_MAX_FRAME_SIZE's initial value, and the one strata's server
/// keeps advertising: the largest frame a client may send it.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;

pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY: u8 = 0x20;

/// The largest frame length the 24-bit field holds.
pub(crate) const MAX_FRAME_LIMIT: u32 = (1 << 24) - 1;

/// The length of a HEADERS frame's priority fields (stream dependency with
/// its exclusive bit, weight).
const PRIORITY_LEN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("HEADERS frame of stream {stream}: padding of {pad} bytes in a payload of {len}")]
    Padding { stream: u32, pad: usize, len: usize },
    #[error("HEADERS frame of stream {stream}: PRIORITY flag on a payload of {len} bytes")]
    Priority { stream: u32, len: usize },
}

/// A frame header: payload length (24 bits), type, flags, stream id (31
/// bits; the reserved bit is dropped, as receivers must).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub(crate) fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// The header at the start of `bytes`, if it holds one.
    pub(crate) fn peek(bytes: &[u8]) -> Option<FrameHeader> {
        bytes.first_chunk::<HEADER_LEN>().map(FrameHeader::parse)
    }

    /// Appends the 9 bytes. `len` must fit 24 bits: callers write at most
    /// one maximum frame size, itself at most 2^24 - 1.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        debug_assert!(self.len < 1 << 24);
        out.extend_from_slice(&self.len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
    }
}

/// The parts of a HEADERS payload a rewrite keeps.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HeadersPayload<'a> {
    /// The priority fields, verbatim, when the PRIORITY flag is set.
    pub priority: Option<[u8; PRIORITY_LEN]>,
    /// The header block fragment, without the padding.
    pub fragment: &'a [u8],
}

/// Splits a HEADERS payload into priority fields and fragment.
pub(crate) fn headers_payload<'a>(head: &FrameHeader, payload: &'a [u8]) -> Result<HeadersPayload<'a>, FrameError> {
    let mut rest = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        let Some((&n, after)) = rest.split_first() else {
            return Err(FrameError::Padding {
                stream: head.stream,
                pad: 1,
                len: 0,
            });
        };
        pad = usize::from(n);
        rest = after;
    }
    let mut priority = None;
    if head.flags & PRIORITY != 0 {
        let Some((fields, after)) = rest.split_first_chunk::<PRIORITY_LEN>() else {
            return Err(FrameError::Priority {
                stream: head.stream,
                len: payload.len(),
            });
        };
        priority = Some(*fields);
        rest = after;
    }
    // RFC 9113 §6.2: padding that covers the fragment's space is an error.
    let Some(end) = rest.len().checked_sub(pad) else {
        return Err(FrameError::Padding {
            stream: head.stream,
            pad,
            len: payload.len(),
        });
    };
    Ok(HeadersPayload {
        priority,
        fragment: &rest[..end],
    })
}

/// Writes `block` as a HEADERS frame (END_STREAM and priority as given, no
/// padding) followed by as many CONTINUATION frames as `max_frame` asks;
/// the last one carries END_HEADERS.
pub(crate) fn write_header_block(
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    block: &[u8],
    max_frame: u32,
    out: &mut Vec<u8>,
) {
    // The minimum SETTINGS_MAX_FRAME_SIZE is 16384, so a frame always has
    // room for the priority fields and some of the block.
    let max = usize::try_from(max_frame.clamp(16_384, MAX_FRAME_LIMIT)).unwrap_or(16_384);
    let prio_len = if priority.is_some() { PRIORITY_LEN } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(max - prio_len));
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    push_frame(
        HEADERS,
        flags,
        stream,
        priority.as_ref().map_or(&[][..], |p| &p[..]),
        first,
        out,
    );
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(max));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        push_frame(CONTINUATION, flags, stream, &[], chunk, out);
    }
}

fn push_frame(kind: u8, flags: u8, stream: u32, prefix: &[u8], body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(prefix.len() + body.len()).expect("a frame's length is bounded by max_frame");
    FrameHeader {
        len,
        kind,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(len: u32, flags: u8) -> FrameHeader {
        FrameHeader {
            len,
            kind: HEADERS,
            flags,
            stream: 1,
        }
    }

    /// Every frame of `bytes`: header and payload.
    fn frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(h) = FrameHeader::peek(bytes) {
            let end = HEADER_LEN + h.len as usize;
            out.push((h, bytes[HEADER_LEN..end].to_vec()));
            bytes = &bytes[end..];
        }
        assert!(bytes.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn header_round_trips_and_drops_the_reserved_bit() {
        let raw = [0xff, 0xff, 0xff, 0x09, 0x04, 0xff, 0xff, 0xff, 0xff];
        let h = FrameHeader::parse(&raw);
        assert_eq!(
            h,
            FrameHeader {
                len: 0xff_ffff,
                kind: CONTINUATION,
                flags: END_HEADERS,
                stream: 0x7fff_ffff
            }
        );
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(out, [0xff, 0xff, 0xff, 0x09, 0x04, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(FrameHeader::peek(&raw[..8]), None);
    }

    #[test]
    fn headers_payload_table() {
        // (flags, payload, expected priority, expected fragment)
        type Case<'a> = (u8, &'a [u8], Option<[u8; 5]>, &'a [u8]);
        let ok: &[Case] = &[
            (0, b"abc", None, b"abc"),
            (0, b"", None, b""),
            (PADDED, b"\x02abcXX", None, b"abc"),
            (PADDED, b"\x00abc", None, b"abc"),
            (PADDED, b"\x03XXX", None, b""),
            (
                PRIORITY,
                b"\x80\x00\x00\x03\x10abc",
                Some([0x80, 0, 0, 3, 0x10]),
                b"abc",
            ),
            (
                PADDED | PRIORITY,
                b"\x01\x00\x00\x00\x03\x10abX",
                Some([0, 0, 0, 3, 0x10]),
                b"ab",
            ),
        ];
        for &(flags, payload, priority, fragment) in ok {
            let h = head(u32::try_from(payload.len()).unwrap(), flags);
            assert_eq!(
                headers_payload(&h, payload),
                Ok(HeadersPayload { priority, fragment }),
                "{flags:#x} {payload:?}"
            );
        }
        let bad: &[(u8, &[u8])] = &[
            (PADDED, b""),
            (PADDED, b"\x04abc"),
            (PADDED, b"\xff"),
            (PRIORITY, b"\x00\x00\x00"),
            (PADDED | PRIORITY, b"\x00\x00\x00\x00\x00"),
            (PADDED | PRIORITY, b"\x01\x00\x00\x00\x00\x10"),
        ];
        for &(flags, payload) in bad {
            let h = head(u32::try_from(payload.len()).unwrap(), flags);
            assert!(headers_payload(&h, payload).is_err(), "{flags:#x} {payload:?}");
        }
    }

    #[test]
    fn small_block_is_one_headers_frame() {
        let mut out = Vec::new();
        write_header_block(3, true, None, b"block", 16_384, &mut out);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, head(5, END_STREAM | END_HEADERS).with_stream(3));
        assert_eq!(f[0].1, b"block");
    }

    #[test]
    fn empty_block_still_ends_the_headers() {
        let mut out = Vec::new();
        write_header_block(1, false, None, b"", 16_384, &mut out);
        assert_eq!(frames(&out), vec![(head(0, END_HEADERS), vec![])]);
    }

    #[test]
    fn large_block_is_split_at_the_frame_size() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i.to_le_bytes()[0]).collect();
        let prio = [0, 0, 0, 0, 15];
        let mut out = Vec::new();
        write_header_block(5, true, Some(prio), &block, 16_384, &mut out);
        let f = frames(&out);
        let kinds: Vec<(u8, u8, u32)> = f.iter().map(|(h, _)| (h.kind, h.flags, h.len)).collect();
        assert_eq!(
            kinds,
            [
                (HEADERS, END_STREAM | PRIORITY, 16_384),
                (CONTINUATION, 0, 16_384),
                (CONTINUATION, END_HEADERS, 40_000 - (16_384 - 5) - 16_384),
            ]
        );
        assert!(f.iter().all(|(h, _)| h.stream == 5));
        assert_eq!(&f[0].1[..5], &prio);
        let joined: Vec<u8> = f[0].1[5..].iter().chain(&f[1].1).chain(&f[2].1).copied().collect();
        assert_eq!(joined, block);
    }

    #[test]
    fn a_too_small_max_frame_is_raised_to_the_protocol_minimum() {
        let mut out = Vec::new();
        write_header_block(1, false, None, &[7; 20_000], 1, &mut out);
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].0.len, 16_384);
    }

    impl FrameHeader {
        fn with_stream(mut self, stream: u32) -> Self {
            self.stream = stream;
            self
        }
    }
}
