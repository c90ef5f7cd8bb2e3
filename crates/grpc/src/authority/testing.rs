//! Test helpers: client byte streams shaped like gRPC C-core's, and a
//! reader of what the server side receives.

use super::block::{self, Field};
use super::frame::{FrameHeader, CONTINUATION, END_HEADERS, HEADERS, HEADER_LEN, PREFACE};

pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const DATA: u8 = 0x0;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;

pub(crate) const STAT: &str = "/containerd.services.snapshots.v1.Snapshots/Stat";

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        len: u32::try_from(payload.len()).unwrap(),
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).ok().filter(|&n| n < 127).expect("a short string"));
    out.extend_from_slice(s.as_bytes());
}

/// A first request's header block as C-core encodes it: static indexes
/// for `:method` and `:scheme`, literals with incremental indexing for
/// the rest, `:authority` among them, and a Huffman-coded field (RFC 7541
/// C.4.3's custom-key / custom-value).
pub(crate) fn ccore_first_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.push(0x44); // :path, indexed name 4, with indexing
    string(&mut b, STAT);
    b.push(0x41); // :authority, indexed name 1, with indexing
    string(&mut b, authority);
    b.push(0x5f); // content-type, indexed name 31, with indexing
    string(&mut b, "application/grpc");
    b.push(0x40); // new name, with indexing
    string(&mut b, "te");
    string(&mut b, "trailers");
    b.push(0x40); // new name, with indexing, both strings Huffman-coded
    b.push(0x88);
    b.extend_from_slice(&[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f]);
    b.push(0x89);
    b.extend_from_slice(&[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf]);
    b
}

/// The next request on the same connection: everything by index into
/// the dynamic table the first block filled (62 custom-key, 63 te,
/// 64 content-type, 65 :authority, 66 :path).
pub(crate) fn ccore_next_block() -> Vec<u8> {
    vec![0x83, 0x86, 0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62]
}

/// What both blocks decode to, with `authority` as `:authority`.
pub(crate) fn ccore_fields(authority: &str) -> Vec<Field> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", STAT),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("custom-key", "custom-value"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

/// A gRPC message frame: no compression, `message`.
pub(crate) fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A whole client connection: preface, SETTINGS, WINDOW_UPDATE, then two
/// Stat calls (HEADERS, DATA with END_STREAM) on streams 1 and 3.
pub(crate) fn ccore_connection(authority: &str) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]));
    out.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0x40, 0, 0]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &ccore_first_block(authority)));
    out.extend(frame(DATA, 0x1, 1, &grpc_message(b"\x0a\x06strata\x12\x07missing")));
    out.extend(frame(HEADERS, END_HEADERS, 3, &ccore_next_block()));
    out.extend(frame(DATA, 0x1, 3, &grpc_message(b"\x0a\x06strata\x12\x07missing")));
    out
}

/// Reads a server's view of a client stream: checks the preface, then
/// returns every frame, and every header block decoded the way h2 does:
/// with one decoder for the connection.
pub(crate) struct Seen {
    pub frames: Vec<(FrameHeader, Vec<u8>)>,
    pub requests: Vec<(u32, Vec<Field>)>,
}

pub(crate) fn read_client_stream(bytes: &[u8]) -> Seen {
    assert!(bytes.starts_with(PREFACE), "no preface");
    let mut rest = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let head = FrameHeader::peek(rest).expect("a whole frame header");
        let end = HEADER_LEN + head.len as usize;
        frames.push((head, rest[HEADER_LEN..end].to_vec()));
        rest = &rest[end..];
    }
    let mut decoder = block::new_decoder();
    let mut requests = Vec::new();
    let mut open: Option<(u32, Vec<u8>)> = None;
    for (head, payload) in &frames {
        match head.kind {
            HEADERS => {
                assert!(open.is_none());
                let parts = super::frame::headers_payload(head, payload).unwrap();
                open = Some((head.stream, parts.fragment.to_vec()));
            }
            CONTINUATION => open.as_mut().unwrap().1.extend_from_slice(payload),
            _ => assert!(open.is_none(), "frame inside a header block"),
        }
        if matches!(head.kind, HEADERS | CONTINUATION) && head.flags & END_HEADERS != 0 {
            let (stream, block) = open.take().unwrap();
            requests.push((stream, block::decode(&mut decoder, &block, 1 << 24).unwrap()));
        }
    }
    Seen { frames, requests }
}
