//! One header block: decoded with the connection's HPACK decoder (which
//! follows the client's encoder), checked for an `:authority` that h2 would
//! refuse, and encoded again without the dynamic table. Pure.

use std::borrow::Cow;

use loona_hpack::decoder::DecoderError;
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;

/// What an `:authority` h2 cannot parse becomes: what Go's gRPC (and so
/// containerd) sends on a unix socket.
pub(crate) const LOCALHOST: &[u8] = b"localhost";

const AUTHORITY: &[u8] = b":authority";

/// SETTINGS_HEADER_TABLE_SIZE as strata's server advertises it (h2's
/// default, which hyper and tonic keep): the largest dynamic table a
/// client's size update may ask for.
pub(crate) const HEADER_TABLE_SIZE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub(crate) enum BlockError {
    #[error("HPACK: {0}")]
    Hpack(#[from] DecoderError),
    #[error("decoded header list over {max} bytes")]
    ListTooLarge { max: usize },
}

/// The decoder for a new connection: h2's initial table size and limit.
pub(crate) fn new_decoder() -> Decoder<'static> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
    decoder
}

/// One decoded header field.
pub(crate) type Field = (Vec<u8>, Vec<u8>);

/// Decodes a complete header block. The list's size, counted as HPACK
/// counts it (name + value + 32 per field), may not pass `max_list`: a
/// small block can name large table entries many times over.
pub(crate) fn decode(decoder: &mut Decoder<'_>, block: &[u8], max_list: usize) -> Result<Vec<Field>, BlockError> {
    let mut fields = Vec::new();
    let mut size = 0usize;
    decoder.decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
        // The decoder has no way to stop from here; past the limit it goes
        // on over the (bounded) block without keeping anything.
        size = size.saturating_add(name.len() + value.len() + 32);
        if size <= max_list {
            fields.push((name.into_owned(), value.into_owned()));
        }
    })?;
    if size > max_list {
        return Err(BlockError::ListTooLarge { max: max_list });
    }
    Ok(fields)
}

/// Whether h2 accepts `value` as `:authority`: the very check its server
/// applies (`http::uri::Authority`), so the two cannot disagree.
pub(crate) fn authority_ok(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// The first `:authority` h2 would refuse, if any.
pub(crate) fn bad_authority(fields: &[Field]) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(name, value)| name == AUTHORITY && !authority_ok(value))
        .map(|(_, value)| value.as_slice())
}

/// Encodes `fields` in order, each as a literal without indexing (RFC 7541
/// §6.2.2) with raw strings, so the block neither reads nor changes the
/// receiver's dynamic table. An `:authority` h2 would refuse becomes
/// [`LOCALHOST`].
pub(crate) fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for (name, value) in fields {
        let value = if name == AUTHORITY && !authority_ok(value) {
            LOCALHOST
        } else {
            value.as_slice()
        };
        out.push(0x00);
        encode_string(name, out);
        encode_string(value, out);
    }
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn authorities_as_h2_sees_them() {
        let table: &[(&str, bool)] = &[
            ("localhost", true),
            ("localhost:8080", true),
            ("127.0.0.1:50051", true),
            ("[::1]:1", true),
            ("strata.invalid", true),
            ("user%40x@host", true),
            ("%2Frun%2Fstrata%2Fstrata.sock", false),
            ("tmp%2Fsr%2Fs.sock", false),
            ("/run/strata/strata.sock", false),
            ("", false),
            ("a b", false),
            ("host:1:2", false),
            ("\u{e9}", false),
        ];
        for &(value, ok) in table {
            assert_eq!(authority_ok(value.as_bytes()), ok, "{value:?}");
        }
        assert!(!authority_ok(b"\xff"));
    }

    #[test]
    fn encode_rewrites_only_a_refused_authority_and_keeps_order() {
        let input = fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/x.Y/Z"),
            (":authority", "%2Ftmp%2Fx.sock"),
            ("te", "trailers"),
            ("grpc-timeout", "1S"),
        ]);
        let mut block = Vec::new();
        encode(&input, &mut block);
        let decoded = decode(&mut new_decoder(), &block, 1 << 20).unwrap();
        let mut expected = input.clone();
        expected[3].1 = b"localhost".to_vec();
        assert_eq!(decoded, expected);
        assert_eq!(bad_authority(&input), Some(&b"%2Ftmp%2Fx.sock"[..]));
        assert_eq!(bad_authority(&decoded), None);

        let valid = fields(&[(":authority", "localhost"), ("x", "")]);
        let mut block = Vec::new();
        encode(&valid, &mut block);
        assert_eq!(decode(&mut new_decoder(), &block, 1 << 20).unwrap(), valid);
    }

    #[test]
    fn encoding_leaves_the_dynamic_table_alone() {
        // An encoded block must not add entries: a later reference to
        // index 62 still fails in a decoder that saw only our output.
        let mut block = Vec::new();
        encode(&fields(&[("name", "value")]), &mut block);
        let mut decoder = new_decoder();
        decode(&mut decoder, &block, 1 << 20).unwrap();
        assert_eq!(
            decode(&mut decoder, &[0x80 | 62], 1 << 20),
            Err(BlockError::Hpack(DecoderError::HeaderIndexOutOfBounds))
        );
    }

    #[test]
    fn long_strings_use_multi_byte_lengths() {
        let long = "v".repeat(300);
        let input = fields(&[("k", &long)]);
        let mut block = Vec::new();
        encode(&input, &mut block);
        assert_eq!(&block[..4], &[0x00, 1, b'k', 0x7f]);
        assert_eq!(decode(&mut new_decoder(), &block, 1 << 20).unwrap(), input);
    }

    #[test]
    fn the_list_limit_counts_repeated_references() {
        // One 1000-byte entry, then 2000 one-byte references to it: a
        // 2 KB block that decodes to 2 MB.
        let mut block = vec![0x40, 1, b'k'];
        encode_integer_into(1000, 7, 0, &mut block).unwrap();
        block.extend(std::iter::repeat_n(b'v', 1000));
        block.extend(std::iter::repeat_n(0x80 | 62, 2000));
        assert_eq!(
            decode(&mut new_decoder(), &block, 1 << 20),
            Err(BlockError::ListTooLarge { max: 1 << 20 })
        );
        assert_eq!(decode(&mut new_decoder(), &block, 4 << 20).unwrap().len(), 2001);
    }

    #[test]
    fn hostile_blocks_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            &[0x80],                                     // index 0
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],       // integer too long
            &[0xff],                                     // truncated integer
            &[0x80 | 62],                                // empty dynamic table
            &[0x40, 0x05, b'a'],                         // string past the end
            &[0x40, 0x7f, 0xff, 0xff, 0xff, 0x0f],       // huge string length
            &[0x00, 0x81, 0xff, 0x00],                   // Huffman: EOS / padding
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00], // Huffman: EOS in string
            &[0x3f, 0xe1, 0x1f],                         // size update over 4096
            &[0x20],                                     // size update at the end
            &[0x7f, 0xff, 0xff, 0xff, 0x7f],             // name index out of range
        ];
        for case in cases {
            assert!(decode(&mut new_decoder(), case, 1 << 20).is_err(), "{case:x?}");
        }
        // Every prefix of a valid block either decodes or errs.
        let mut block = Vec::new();
        encode(&fields(&[(":authority", "%2Fa"), ("k", &"v".repeat(200))]), &mut block);
        for end in 0..block.len() {
            let _ = decode(&mut new_decoder(), &block[..end], 1 << 20);
        }
    }
}
