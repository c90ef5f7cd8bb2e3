//! Answers to ranged blob requests from an untrusted registry: a
//! `multipart/byteranges` body, a Content-Type, a Content-Range. Each
//! parses cleanly or fails cleanly, and an accepted body gives exactly the
//! bytes asked for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_image::source::multipart;

/// The size of the blob the ranges are asked of.
const SIZE: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the asked ranges (1 to 8 ranges of 1 to 32
    // bytes, 1000 bytes apart); the rest is the body, boundary "B".
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let count = u64::from(pick % 8) + 1;
    let len = u64::from(pick >> 3) + 1;
    let asked: Vec<_> = (0..count).map(|i| i * 1000..i * 1000 + len).collect();
    if let Ok(parts) = multipart::split(body, "B", &asked, SIZE) {
        assert_eq!(parts.len(), asked.len());
        for (part, range) in parts.iter().zip(&asked) {
            assert_eq!(part.len() as u64, range.end - range.start);
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(boundary) = multipart::boundary(text) {
            assert!(!boundary.is_empty() && boundary.len() <= 70);
        }
        if let Ok(range) = multipart::content_range(text, SIZE) {
            assert!(range.start < range.end && range.end <= SIZE);
        }
    }
});
