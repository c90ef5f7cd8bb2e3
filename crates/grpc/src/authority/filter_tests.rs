use super::*;
use crate::authority::frame::{PADDED, PRIORITY};
use crate::authority::testing::*;

/// Feeds `input` in pieces of `step` bytes; the concatenated output and
/// the last outcome (or the first error).
fn run(input: &[u8], step: usize, limits: Limits) -> (Vec<u8>, Result<Outcome, ShimError>) {
    let mut filter = Filter::new(limits);
    let mut out = Vec::new();
    let mut last = Ok(Outcome::Filtering);
    let mut at = 0;
    while at < input.len() {
        let end = input.len().min(at.saturating_add(step.max(1)));
        last = filter.push(&input[at..end], &mut out);
        at = end;
        match last {
            Ok(Outcome::Filtering) => {}
            // The rest goes straight to the server.
            Ok(Outcome::PassThrough) => {
                out.extend_from_slice(&input[at..]);
                break;
            }
            Err(_) => break,
        }
    }
    (out, last)
}

fn feed(input: &[u8]) -> (Vec<u8>, Result<Outcome, ShimError>) {
    run(input, input.len(), Limits::default())
}

/// A connection whose first block is rewritten, then `tail`.
fn rewritten_then(tail: &[u8]) -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[]));
    input.extend(frame(HEADERS, END_HEADERS, 1, &ccore_first_block("%2Ftmp%2Fx.sock")));
    input.extend_from_slice(tail);
    input
}

#[test]
fn ccore_connection_reaches_the_server_with_localhost_on_every_request() {
    let input = ccore_connection("%2Ftmp%2Fx.sock");
    for step in [input.len(), 1, 7, 100] {
        let (out, outcome) = run(&input, step, Limits::default());
        assert_eq!(outcome, Ok(Outcome::Filtering), "step {step}");
        let seen = read_client_stream(&out);
        assert_eq!(
            seen.requests,
            vec![(1, ccore_fields("localhost")), (3, ccore_fields("localhost"))],
            "step {step}"
        );
        // The other frames are untouched, in order.
        let original = read_client_stream(&input);
        let others = |s: &Seen| -> Vec<(FrameHeader, Vec<u8>)> {
            s.frames.iter().filter(|(h, _)| h.kind != HEADERS).cloned().collect()
        };
        assert_eq!(others(&seen), others(&original));
    }
}

#[test]
fn a_valid_authority_passes_through_byte_for_byte() {
    for authority in ["localhost", "strata.invalid:443", "[::1]:50051"] {
        let input = ccore_connection(authority);
        for step in [input.len(), 1, 13] {
            let (out, outcome) = run(&input, step, Limits::default());
            assert_eq!(outcome, Ok(Outcome::PassThrough), "{authority} step {step}");
            assert_eq!(out, input, "{authority} step {step}");
        }
    }
}

#[test]
fn no_authority_passes_through() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82, 0x86, 0x84]));
    input.extend(frame(DATA, 0, 1, b"after"));
    assert_eq!(feed(&input), (input.clone(), Ok(Outcome::PassThrough)));
}

#[test]
fn frames_before_the_first_block_go_out_at_once() {
    let mut filter = Filter::new(Limits::default());
    let mut out = Vec::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
    let headers = frame(HEADERS, END_HEADERS, 1, &ccore_first_block("localhost"));
    input.extend_from_slice(&headers[..20]);
    assert_eq!(filter.push(&input, &mut out), Ok(Outcome::Filtering));
    assert_eq!(out, input[..input.len() - 20]);
    // A DATA frame's payload is forwarded as it arrives.
    let mut filter = Filter::new(Limits::default());
    let mut out = Vec::new();
    let data = frame(DATA, 0, 1, &[9; 100]);
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&data[..50]);
    assert_eq!(filter.push(&input, &mut out), Ok(Outcome::Filtering));
    assert_eq!(out, input);
}

#[test]
fn not_http2_passes_through_untouched() {
    for input in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"PRI * HTTP/1.1", b"\x00\x00\x00\x00"] {
        assert_eq!(feed(input), (input.to_vec(), Ok(Outcome::PassThrough)));
    }
}

#[test]
fn continuation_padding_and_priority_are_understood() {
    let block = ccore_first_block("%2Fa%2Fb.sock");
    let (head, tail) = block.split_at(10);
    // PADDED | PRIORITY HEADERS with 3 bytes of padding, then CONTINUATION.
    let mut payload = vec![3, 0x80, 0, 0, 0, 7];
    payload.extend_from_slice(head);
    payload.extend_from_slice(&[0; 3]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, tail));
    let (out, outcome) = feed(&input);
    assert_eq!(outcome, Ok(Outcome::Filtering));
    let seen = read_client_stream(&out);
    assert_eq!(seen.requests, vec![(1, ccore_fields("localhost"))]);
    let (h, p) = &seen.frames[0];
    assert_eq!(h.flags, PRIORITY | END_STREAM | END_HEADERS);
    assert_eq!(&p[..5], &[0x80, 0, 0, 0, 7]);
}

#[test]
fn a_large_rewritten_block_is_split_at_the_frame_size() {
    let big = "v".repeat(120);
    let mut block = ccore_first_block("%2Fx");
    for i in 0..400 {
        block.push(0x00);
        block.push(6);
        block.extend_from_slice(format!("k{i:05}").as_bytes());
        block.push(120);
        block.extend_from_slice(big.as_bytes());
    }
    let mut input = PREFACE.to_vec();
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    input.extend(frame(HEADERS, 0, 1, chunks[0]));
    for (i, chunk) in chunks.iter().enumerate().skip(1) {
        let flags = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
        input.extend(frame(CONTINUATION, flags, 1, chunk));
    }
    let (out, outcome) = feed(&input);
    assert_eq!(outcome, Ok(Outcome::Filtering));
    let seen = read_client_stream(&out);
    assert!(seen.frames.len() >= 4, "{}", seen.frames.len());
    assert!(seen.frames.iter().all(|(h, _)| h.len <= 16_384));
    assert_eq!(seen.requests[0].1.len(), 7 + 400);
    assert_eq!(seen.requests[0].1[3].1, b"localhost");
}

/// Hostile frames: `(name, bytes)` to follow a rewritten first block, or
/// to follow the preface while still checking.
fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    let mut over = vec![0u8; 9];
    over[..3].copy_from_slice(&[0x00, 0x40, 0x01]); // 16385 bytes
    vec![
        ("frame over max", over),
        ("length 2^24-1", vec![0xff, 0xff, 0xff, 0x01, 0x04, 0, 0, 0, 3]),
        ("bad padding", frame(HEADERS, PADDED | END_HEADERS, 3, &[9, 0x82])),
        ("short priority", frame(HEADERS, PRIORITY | END_HEADERS, 3, &[0, 0])),
        ("stray continuation", frame(CONTINUATION, END_HEADERS, 3, &[0x82])),
        ("interleaved", {
            let mut b = frame(HEADERS, 0, 3, &[0x82]);
            b.extend(frame(DATA, 0, 3, b"x"));
            b
        }),
        ("continuation of another stream", {
            let mut b = frame(HEADERS, 0, 3, &[0x82]);
            b.extend(frame(CONTINUATION, END_HEADERS, 5, &[0x86]));
            b
        }),
        ("push promise", frame(0x5, END_HEADERS, 3, &[0, 0, 0, 4, 0x82])),
        ("bad hpack index", frame(HEADERS, END_HEADERS, 3, &[0x80 | 120])),
        (
            "hpack size update over the limit",
            frame(HEADERS, END_HEADERS, 3, &[0x3f, 0xe1, 0x7f, 0x82]),
        ),
        ("truncated hpack integer", frame(HEADERS, END_HEADERS, 3, &[0xff, 0xff])),
    ]
}

#[test]
fn hostile_frames_end_a_rewritten_connection() {
    for (name, tail) in hostile() {
        let (_, outcome) = feed(&rewritten_then(&tail));
        assert!(outcome.is_err(), "{name}: {outcome:?}");
    }
}

#[test]
fn hostile_frames_pass_through_while_checking() {
    for (name, tail) in hostile() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&tail);
        let (out, outcome) = feed(&input);
        assert_eq!(outcome, Ok(Outcome::PassThrough), "{name}");
        assert_eq!(out, input, "{name}");
    }
}

#[test]
fn block_and_list_limits() {
    let limits = Limits {
        max_block: 4096,
        max_list: 8192,
        ..Limits::default()
    };
    // A block of 5000 bytes in two frames.
    let mut big = frame(HEADERS, 0, 3, &[0x82; 3000]);
    big.extend(frame(CONTINUATION, END_HEADERS, 3, &[0x82; 2000]));
    let (_, outcome) = run(&rewritten_then(&big), usize::MAX, limits);
    assert!(
        matches!(outcome, Err(ShimError::BlockTooLarge { stream: 3, .. })),
        "{outcome:?}"
    );
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&big);
    assert_eq!(run(&input, usize::MAX, limits), (input, Ok(Outcome::PassThrough)));
    // 300 references to a 200-byte entry: a 300-byte block, 60 kB decoded.
    let mut block = vec![0x40, 1, b'k', 127, 200 - 127];
    block.extend([b'v'; 200]);
    block.extend([0x80 | 62; 300]);
    let (_, outcome) = run(
        &rewritten_then(&frame(HEADERS, END_HEADERS, 3, &block)),
        usize::MAX,
        limits,
    );
    assert!(matches!(
        outcome,
        Err(ShimError::Block {
            source: BlockError::ListTooLarge { .. },
            ..
        })
    ));
}

#[test]
fn end_of_stream_flushes_held_bytes_only_while_checking() {
    let mut filter = Filter::new(Limits::default());
    let mut out = Vec::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &[0x82]));
    input.extend_from_slice(&[0, 0, 3]);
    assert_eq!(filter.push(&input, &mut out), Ok(Outcome::Filtering));
    filter.end(&mut out);
    assert_eq!(out, input);

    let mut filter = Filter::new(Limits::default());
    let mut out = Vec::new();
    let input = rewritten_then(&[0, 0, 3, 1]);
    assert_eq!(filter.push(&input, &mut out), Ok(Outcome::Filtering));
    assert!(filter.rewriting());
    let before = out.len();
    filter.end(&mut out);
    assert_eq!(out.len(), before);
}

/// xorshift64: deterministic noise without a dependency.
fn noise(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn garbage_never_panics_and_output_stays_bounded() {
    let mut state = 0x5eed_u64;
    let base = ccore_connection("%2Ftmp%2Fx.sock");
    for round in 0..3000u32 {
        let mut input = if round % 2 == 0 {
            rewritten_then(&[])
        } else {
            base.clone()
        };
        // Flip some bytes, then append noise biased to frame-like shapes.
        for _ in 0..(noise(&mut state) % 4) {
            let i = usize::try_from(noise(&mut state) % input.len() as u64).unwrap();
            input[i] = noise(&mut state).to_le_bytes()[0];
        }
        for _ in 0..(noise(&mut state) % 200) {
            let r = noise(&mut state).to_le_bytes();
            input.push(if r[1] < 64 { r[0] & 0x0f } else { r[0] });
        }
        let step = usize::try_from(noise(&mut state) % 64 + 1).unwrap();
        let _ = run(&input, step, Limits::default());
    }
}
