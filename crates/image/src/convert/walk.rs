//! Splits a layer's tar stream into its entries without changing a byte.
//!
//! The import's tar reader ([`Archive`]) parses each header; a recorder
//! under it keeps the bytes it consumed while doing so, so a format writer
//! gets every entry's raw header bytes (extension headers included, after
//! the previous entry's padding), then the entry's data, and at the end
//! the archive's tail. Written back in order they are the input, which
//! keeps the layer's diff_id.

use std::cell::RefCell;
use std::io::{self, Read};

use super::ConvertError;
use crate::layer::archive::{Archive, ArchiveError, Header};
use crate::Limits;

/// Most header bytes before one entry's data, extension headers included.
const MAX_HEADER_BYTES: usize = 16 << 20;
/// Data is handed on in pieces of at most this size.
const READ_CHUNK: usize = 256 << 10;
const BLOCK: u64 = 512;

/// One tar entry, as the import's reader parses it.
pub(super) struct TarEntry {
    pub header: Header,
    /// How many of the raw bytes handed with the entry are the previous
    /// entry's padding (the rest are this entry's header blocks).
    pub padding_before: usize,
}

/// What a format writer does with the pieces of a tar stream.
pub(super) trait TarSink {
    /// An entry begins; `raw` is the previous entry's padding, then this
    /// entry's header blocks.
    fn begin(&mut self, raw: &[u8], entry: &TarEntry) -> Result<(), ConvertError>;
    /// A piece of the entry's data, in order.
    fn data(&mut self, bytes: &[u8]) -> Result<(), ConvertError>;
    fn end(&mut self, entry: &TarEntry) -> Result<(), ConvertError>;
    /// The stream after the last entry's data: first its padding (`padding`
    /// bytes), the end-of-archive blocks and what the reader read with
    /// them, then, in further calls with `padding` 0, anything after them.
    fn tail(&mut self, raw: &[u8], padding: usize) -> Result<(), ConvertError>;
}

#[derive(Default)]
struct Recording {
    /// Header bytes since the last entry's data.
    bytes: Vec<u8>,
    headers: bool,
    /// Bytes consumed while the reader reads an entry's data.
    data_bytes: u64,
    /// Every byte read.
    total: u64,
}

/// Passes reads through, keeping what the tar reader reads for headers.
struct Recorder<'a> {
    inner: &'a mut dyn Read,
    state: &'a RefCell<Recording>,
}

impl Read for Recorder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.borrow_mut();
        state.total += n as u64;
        if state.headers {
            if state.bytes.len() + n > MAX_HEADER_BYTES {
                return Err(io::Error::other(format!(
                    "over {MAX_HEADER_BYTES} bytes of tar headers before one entry's data"
                )));
            }
            state.bytes.extend_from_slice(&buf[..n]);
        } else {
            state.data_bytes += n as u64;
        }
        Ok(n)
    }
}

/// Counts of what was walked.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Walked {
    pub entries: u64,
    pub files: u64,
    /// Bytes of the tar stream.
    pub bytes: u64,
}

/// Reads the whole tar stream `input` into `sink`, to its last byte.
pub(super) fn walk<S: TarSink + ?Sized>(
    input: &mut dyn Read,
    layer: &str,
    limits: &Limits,
    sink: &mut S,
) -> Result<Walked, ConvertError> {
    let state = RefCell::new(Recording::default());
    let mut recorder = Recorder {
        inner: input,
        state: &state,
    };
    let mut walked = Walked::default();
    {
        let mut archive = Archive::new(&mut recorder, limits.max_path_bytes);
        let mut buf = vec![0; READ_CHUNK];
        let mut padding = 0usize;
        loop {
            state.borrow_mut().headers = true;
            let next = archive.next();
            let mut raw = {
                let mut s = state.borrow_mut();
                s.headers = false;
                s.data_bytes = 0;
                std::mem::take(&mut s.bytes)
            };
            let Some(header) = next.map_err(|e| archive_error(layer, e))? else {
                sink.tail(&raw, padding.min(raw.len()))?;
                break;
            };
            walked.entries += 1;
            if walked.entries > limits.max_entries {
                return Err(layer_error(layer, format!("more than {} entries", limits.max_entries)));
            }
            let entry = TarEntry {
                header,
                padding_before: padding.min(raw.len()),
            };
            sink.begin(&raw, &entry)?;
            raw.clear();
            state.borrow_mut().bytes = raw;
            let mut data = 0u64;
            loop {
                let n = archive.read(&mut buf).map_err(|e| entry_error(layer, &entry, e))?;
                if n == 0 {
                    break;
                }
                data += n as u64;
                sink.data(&buf[..n])?;
            }
            if state.borrow().data_bytes != data {
                return Err(entry_error(
                    layer,
                    &entry,
                    "a sparse file: its data in the tar is not its content, so no format here can index it",
                ));
            }
            if entry.header.typeflag == b'0' || entry.header.typeflag == b'7' {
                walked.files += 1;
            }
            sink.end(&entry)?;
            padding = usize::try_from((BLOCK - data % BLOCK) % BLOCK).unwrap_or(0);
        }
    }
    // Whatever follows the end-of-archive blocks is part of the stream too.
    let mut rest = vec![0; 1 << 20];
    loop {
        let n = crate::decompress::read_full(&mut recorder, &mut rest)
            .map_err(|e| layer_error(layer, format!("reading tar: {e}")))?;
        if n == 0 {
            walked.bytes = state.borrow().total;
            return Ok(walked);
        }
        sink.tail(&rest[..n], 0)?;
    }
}

fn layer_error(layer: &str, reason: String) -> ConvertError {
    ConvertError::Layer {
        layer: layer.to_owned(),
        reason,
    }
}

fn entry_error(layer: &str, entry: &TarEntry, reason: impl ToString) -> ConvertError {
    ConvertError::Entry {
        layer: layer.to_owned(),
        path: String::from_utf8_lossy(&entry.header.path).into_owned(),
        reason: reason.to_string(),
    }
}

fn archive_error(layer: &str, e: ArchiveError) -> ConvertError {
    match e {
        ArchiveError::Io(e) => layer_error(layer, format!("reading tar: {e}")),
        ArchiveError::Header(reason) => layer_error(layer, format!("reading tar: {reason}")),
        ArchiveError::Entry { path, reason } => ConvertError::Entry {
            layer: layer.to_owned(),
            path: String::from_utf8_lossy(&path).into_owned(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps every byte it is handed, and the entries' names.
    #[derive(Default)]
    struct Copy {
        bytes: Vec<u8>,
        names: Vec<String>,
        data: Vec<u8>,
    }

    impl TarSink for Copy {
        fn begin(&mut self, raw: &[u8], entry: &TarEntry) -> Result<(), ConvertError> {
            assert!(raw[entry.padding_before..].len() >= 512);
            self.bytes.extend_from_slice(raw);
            self.names
                .push(String::from_utf8_lossy(&entry.header.path).into_owned());
            Ok(())
        }
        fn data(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
            self.bytes.extend_from_slice(bytes);
            self.data.extend_from_slice(bytes);
            Ok(())
        }
        fn end(&mut self, _: &TarEntry) -> Result<(), ConvertError> {
            Ok(())
        }
        fn tail(&mut self, raw: &[u8], _: usize) -> Result<(), ConvertError> {
            self.bytes.extend_from_slice(raw);
            Ok(())
        }
    }

    fn sample_tar(extra_tail: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let long = format!("{}/file.txt", "d".repeat(150));
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        builder.append_data(&mut header, &long, &b"hello"[..]).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder.append_data(&mut header, "dir/", &b""[..]).unwrap();
        builder
            .append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(700);
        builder.append_data(&mut header, "dir/big", &[7u8; 700][..]).unwrap();
        let mut bytes = builder.into_inner().unwrap();
        bytes.extend_from_slice(extra_tail);
        bytes
    }

    #[test]
    fn the_pieces_are_the_stream() {
        for tail in [&b""[..], &[0u8; 9216][..], b"trailing junk"] {
            let tar = sample_tar(tail);
            let mut sink = Copy::default();
            let walked = walk(&mut &tar[..], "l", &Limits::default(), &mut sink).unwrap();
            assert_eq!(walked.entries, 3);
            assert_eq!(walked.files, 2);
            assert_eq!(walked.bytes, tar.len() as u64);
            assert_eq!(sink.bytes, tar);
            assert_eq!(sink.names[0], format!("{}/file.txt", "d".repeat(150)));
            assert_eq!(sink.data.len(), 705);
        }
    }

    #[test]
    fn runaway_headers_are_refused() {
        let mut tar = Vec::new();
        let mut builder = tar::Builder::new(&mut tar);
        let value = vec![b'x'; 900 << 10];
        for _ in 0..20 {
            builder
                .append_pax_extensions([("SCHILY.xattr.user.k", &value[..])])
                .unwrap();
        }
        builder.finish().unwrap();
        drop(builder);
        let e = walk(&mut &tar[..], "l", &Limits::default(), &mut Copy::default()).unwrap_err();
        assert!(e.to_string().contains("bytes of tar headers"), "{e}");
    }
}
