use super::*;

const SIZE: u64 = 1000;

/// The blob: byte i is i mod 251.
fn blob() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

fn bytes_of(range: &Range<u64>) -> Vec<u8> {
    let at = |x: u64| usize::try_from(x).unwrap();
    blob()[at(range.start)..at(range.end)].to_vec()
}

/// What a hostile body must be refused with.
type Expected = fn(&MultipartError) -> bool;

/// A body as Go's net/http writes it, the parts in the order given.
fn body(boundary: &str, parts: &[Range<u64>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {}-{}/{SIZE}\r\n\r\n",
                r.start,
                r.end - 1
            )
            .as_bytes(),
        );
        out.extend_from_slice(&bytes_of(r));
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[test]
fn boundaries_are_read_from_the_content_type() {
    for (value, want) in [
        ("multipart/byteranges; boundary=abc123", Ok("abc123")),
        ("Multipart/ByteRanges;BOUNDARY=\"a b:c\"", Ok("a b:c")),
        ("multipart/byteranges; charset=x; boundary=z", Ok("z")),
    ] {
        assert_eq!(boundary(value), want, "{value}");
    }
    let long = format!("multipart/byteranges; boundary={}", "x".repeat(71));
    for value in [
        "multipart/byteranges",
        "multipart/byteranges; boundary=",
        "multipart/byteranges; boundary=\"unterminated",
        "multipart/mixed; boundary=abc",
        "application/octet-stream",
        "multipart/byteranges; boundary=a\u{7f}b",
        &long,
    ] {
        assert!(matches!(boundary(value), Err(MultipartError::NoBoundary(_))), "{value}");
    }
}

#[test]
fn content_ranges_are_checked() {
    assert_eq!(content_range("bytes 0-9/1000", SIZE), Ok(0..10));
    assert_eq!(content_range(" bytes 990-999/*", SIZE), Ok(990..1000));
    for value in [
        "bytes 10-9/1000",
        "bytes 0-1000/1000",
        "bytes -5/1000",
        "bytes 0-/1000",
        "bytes +1-2/1000",
        "bytes 0-18446744073709551615/*",
        "bytes 0-99999999999999999999/1000",
        "items 0-9/1000",
        "bytes 0-9",
        "bytes */1000",
    ] {
        assert!(
            matches!(content_range(value, SIZE), Err(MultipartError::BadContentRange(_))),
            "{value}"
        );
    }
    assert!(matches!(
        content_range("bytes 0-9/1001", SIZE),
        Err(MultipartError::WrongTotal { total: 1001, .. })
    ));
}

#[test]
fn parts_give_the_asked_bytes_in_the_asked_order() {
    let asked = [0..10, 100..150, 990..1000];
    let want: Vec<_> = asked.iter().map(bytes_of).collect();
    // In order, reversed, and coalesced (one part holding two ranges).
    for parts in [
        vec![0..10, 100..150, 990..1000],
        vec![990..1000, 100..150, 0..10],
        vec![0..150, 990..1000],
    ] {
        assert_eq!(
            split(&body("B0UND", &parts), "B0UND", &asked, SIZE).unwrap(),
            want,
            "{parts:?}"
        );
    }
}

#[test]
fn lenient_framing_is_accepted() {
    let asked = [5..8, 20..30];
    let want: Vec<_> = asked.iter().map(bytes_of).collect();
    let text = body("xyz", &asked);
    // A preamble, bare LFs, transport padding and an epilogue.
    let mut lenient = b"preamble text\r\n".to_vec();
    lenient.extend_from_slice(&text);
    lenient.extend_from_slice(b"epilogue");
    assert_eq!(split(&lenient, "xyz", &asked, SIZE).unwrap(), want);
    // Bare LFs, a header in lower case, and an unknown total.
    let mut lf = Vec::new();
    for r in &asked {
        lf.extend_from_slice(format!("--xyz \t\ncontent-range: bytes {}-{}/*\n\n", r.start, r.end - 1).as_bytes());
        lf.extend_from_slice(&bytes_of(r));
        lf.push(b'\n');
    }
    lf.extend_from_slice(b"--xyz--");
    assert_eq!(split(&lf, "xyz", &asked, SIZE).unwrap(), want);
}

#[test]
fn a_boundary_inside_the_data_is_data() {
    // The part's length comes from its Content-Range, not from a search.
    let data: &[u8] = b"\r\n--b\r\nContent-Range: bytes 0-1/*\r\n\r\nxy\r\n--b--\r\n";
    let asked = [0..data.len() as u64];
    let mut text = format!("--b\r\nContent-Range: bytes 0-{}/*\r\n\r\n", data.len() - 1).into_bytes();
    text.extend_from_slice(data);
    text.extend_from_slice(b"\r\n--b--\r\n");
    assert_eq!(split(&text, "b", &asked, SIZE).unwrap(), [data.to_vec()]);
}

#[test]
fn hostile_bodies_are_refused() {
    let asked = [0..10, 100..150];
    let ok = body("b", &asked);
    let replace = |from: &str, to: &str| String::from_utf8_lossy(&ok).replacen(from, to, 1).into_bytes();
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        ("empty", Vec::new(), |e| matches!(e, MultipartError::Malformed { .. })),
        ("no boundary", b"just data".to_vec(), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
        ("other boundary", body("c", &asked), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
        ("only the close", b"--b--\r\n".to_vec(), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
        (
            "missing part",
            body("b", &[0..10]),
            |e| matches!(e, MultipartError::Missing(r) if *r == (100..150)),
        ),
        ("part too short for the ask", body("b", &[0..10, 100..149]), |e| {
            matches!(e, MultipartError::Missing(_))
        }),
        ("overlapping parts", body("b", &[0..10, 5..150]), |e| {
            matches!(e, MultipartError::Overlap(..))
        }),
        ("duplicate part", body("b", &[0..10, 0..10]), |e| {
            matches!(e, MultipartError::TooManyParts { .. } | MultipartError::Overlap(..))
        }),
        ("unasked part", body("b", &[0..10, 100..150, 200..210]), |e| {
            matches!(e, MultipartError::TooManyParts { .. })
        }),
        (
            "coalesced and unasked parts",
            body("b", &[0..150, 200..210]),
            |e| matches!(e, MultipartError::UnaskedPart(r) if *r == (200..210)),
        ),
        ("truncated", ok[..ok.len() - 60].to_vec(), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
        ("no close", ok[..ok.len() - 8].to_vec(), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
        ("data longer than its range", replace("bytes 0-9/", "bytes 0-8/"), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
        (
            "data shorter than its range",
            replace("bytes 0-9/", "bytes 0-12/"),
            |e| matches!(e, MultipartError::Malformed { .. }),
        ),
        ("wrong total", replace("/1000", "/999"), |e| {
            matches!(e, MultipartError::WrongTotal { .. })
        }),
        (
            "range past the end",
            replace("bytes 100-149/1000", "bytes 995-1044/1000"),
            |e| matches!(e, MultipartError::BadContentRange(_)),
        ),
        ("no Content-Range", replace("Content-Range", "Content-Rang"), |e| {
            matches!(e, MultipartError::PartWithoutRange)
        }),
        (
            "two Content-Ranges",
            replace(
                "Content-Type: application/octet-stream",
                "Content-Range: bytes 0-9/1000",
            ),
            |e| matches!(e, MultipartError::PartWithoutRange),
        ),
        (
            "header without colon",
            replace("Content-Type: application", "Content-Type application"),
            |e| matches!(e, MultipartError::Malformed { .. }),
        ),
        (
            "huge header",
            replace(
                "Content-Type: ",
                &format!("X-Pad: {}\r\nContent-Type: ", "p".repeat(2000)),
            ),
            |e| matches!(e, MultipartError::HeadersTooLong),
        ),
        (
            // Its LF is the first byte past the budget (found by fuzzing:
            // the budget's subtraction overflowed).
            "header line one byte over the budget",
            replace(
                "Content-Type: ",
                &format!("X-Pad: {}\r\nContent-Type: ", "p".repeat(MAX_PART_HEADERS - 8)),
            ),
            |e| matches!(e, MultipartError::HeadersTooLong),
        ),
        ("junk after a boundary", replace("--b\r\n", "--bx\r\n"), |e| {
            matches!(e, MultipartError::Malformed { .. })
        }),
    ];
    for (name, text, expected) in cases {
        match split(&text, "b", &asked, SIZE) {
            Err(e) => assert!(expected(&e), "{name}: {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
}

#[test]
fn a_long_preamble_is_refused() {
    let asked = [0..10];
    let mut text = vec![b'x'; MAX_PREAMBLE + 1];
    text.push(b'\n');
    text.extend_from_slice(&body("b", &asked));
    assert!(matches!(
        split(&text, "b", &asked, SIZE),
        Err(MultipartError::Malformed { .. })
    ));
}
