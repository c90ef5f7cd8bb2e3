//! tar-split (vbatts/tar-split `tar/storage`): the tar stream without its
//! file data, as the NDJSON that `asm.NewInputTarStream` packs. One
//! segment (`type` 2) holds an entry's raw header bytes, after the previous
//! entry's padding; one file record (`type` 1) stands for its data, with
//! the data's CRC-64 (ISO); the archive's tail is segments too. Written
//! zstd-compressed to a temporary file, never held whole.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, Write};

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::toc::Sha256Digest;

/// What a tar-split record says, as Go's `storage.Entry` encodes it.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    /// Base64: a segment's bytes, or a file's CRC-64; null for no data.
    payload: Option<String>,
    position: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The tar-split of one layer, compressed as it is written.
pub(super) struct TarSplitWriter {
    encoder: zstd::stream::write::Encoder<'static, Hashed>,
    position: u64,
    /// NDJSON bytes written.
    uncompressed: u64,
    line: Vec<u8>,
}

/// The compressed tar-split as it reaches its file: counted and hashed.
struct Hashed {
    file: File,
    hasher: Sha256,
    len: u64,
}

impl Write for Hashed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A finished tar-split: its compressed bytes in `file`, from offset 0.
pub(super) struct TarSplit {
    pub file: File,
    pub digest: Sha256Digest,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
}

impl TarSplitWriter {
    pub fn new(file: File, level: i32) -> io::Result<Self> {
        let hashed = Hashed {
            file,
            hasher: Sha256::new(),
            len: 0,
        };
        Ok(TarSplitWriter {
            encoder: zstd::stream::write::Encoder::new(hashed, level)?,
            position: 0,
            uncompressed: 0,
            line: Vec::new(),
        })
    }

    /// Raw tar bytes: one header with what precedes it, or a piece of the tail.
    pub fn segment(&mut self, raw: &[u8]) -> io::Result<()> {
        let payload = base64::engine::general_purpose::STANDARD.encode(raw);
        self.record(Record {
            kind: 2,
            name: "",
            size: 0,
            payload: Some(payload),
            position: self.position,
        })
    }

    /// The data of the entry named `name`: `size` bytes with this CRC-64.
    pub fn file(&mut self, name: &str, size: u64, crc: Option<u64>) -> io::Result<()> {
        let payload = crc.map(|crc| base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()));
        self.record(Record {
            kind: 1,
            name,
            size,
            payload,
            position: self.position,
        })
    }

    fn record(&mut self, record: Record<'_>) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &record)?;
        self.line.push(b'\n');
        self.encoder.write_all(&self.line)?;
        self.uncompressed += self.line.len() as u64;
        self.position += 1;
        Ok(())
    }

    pub fn finish(self) -> io::Result<TarSplit> {
        let uncompressed_len = self.uncompressed;
        let mut hashed = self.encoder.finish()?;
        hashed.file.flush()?;
        hashed.file.rewind()?;
        Ok(TarSplit {
            file: hashed.file,
            digest: Sha256Digest(hashed.hasher.finalize().into()),
            compressed_len: hashed.len,
            uncompressed_len,
        })
    }
}

impl TarSplit {
    /// Copies the compressed tar-split to `out`.
    pub fn copy_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.file).take(self.compressed_len), out)?;
        if copied != self.compressed_len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// CRC-64 with the ISO polynomial, as Go's `hash/crc64` computes it;
/// eight bytes a step through eight tables ("slicing by 8").
#[derive(Clone, Copy)]
pub(super) struct Crc64(u64);

const CRC64_ISO: u64 = 0xD800_0000_0000_0000;

const CRC64_TABLES: [[u64; 256]; 8] = {
    let mut tables = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ CRC64_ISO } else { crc >> 1 };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let previous = tables[t - 1][i];
            tables[t][i] = tables[0][(previous & 0xff) as usize] ^ (previous >> 8);
            i += 1;
        }
        t += 1;
    }
    tables
};

impl Crc64 {
    pub fn new() -> Self {
        Crc64(0)
    }

    pub fn update(&mut self, data: &[u8]) {
        let t = &CRC64_TABLES;
        let mut crc = !self.0;
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            let x = (crc ^ u64::from_le_bytes(bytes)).to_le_bytes();
            crc = t[7][usize::from(x[0])]
                ^ t[6][usize::from(x[1])]
                ^ t[5][usize::from(x[2])]
                ^ t[4][usize::from(x[3])]
                ^ t[3][usize::from(x[4])]
                ^ t[2][usize::from(x[5])]
                ^ t[1][usize::from(x[6])]
                ^ t[0][usize::from(x[7])];
        }
        for &b in words.remainder() {
            crc = t[0][usize::from(b ^ crc.to_le_bytes()[0])] ^ (crc >> 8);
        }
        self.0 = !crc;
    }

    pub fn sum(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_gos() {
        // Go: crc64.Checksum([]byte("hello world"), crc64.MakeTable(crc64.ISO))
        let mut crc = Crc64::new();
        crc.update(b"hello ");
        crc.update(b"world");
        assert_eq!(crc.sum(), 0xb9cf_3f57_2ad9_ac3e);
        assert_eq!(Crc64::new().sum(), 0);
        // Slicing by 8 agrees with the bytewise loop at every length.
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..data.len() {
            let mut fast = Crc64::new();
            fast.update(&data[..len]);
            let mut slow = !0u64;
            for &b in &data[..len] {
                slow = CRC64_TABLES[0][usize::from(b ^ slow.to_le_bytes()[0])] ^ (slow >> 8);
            }
            assert_eq!(fast.sum(), !slow, "{len}");
        }
    }

    #[test]
    fn records_are_tar_splits_ndjson() {
        let mut writer = TarSplitWriter::new(tempfile::tempfile().unwrap(), 3).unwrap();
        writer.segment(b"hdr").unwrap();
        writer.file("a/b", 5, Some(1)).unwrap();
        writer.file("empty", 0, None).unwrap();
        let mut split = writer.finish().unwrap();
        let mut compressed = Vec::new();
        split.copy_to(&mut compressed).unwrap();
        assert_eq!(Sha256Digest::of(&compressed), split.digest);
        let text = String::from_utf8(zstd::decode_all(&compressed[..]).unwrap()).unwrap();
        assert_eq!(text.len() as u64, split.uncompressed_len);
        assert_eq!(
            text,
            "{\"type\":2,\"payload\":\"aGRy\",\"position\":0}\n\
             {\"type\":1,\"name\":\"a/b\",\"size\":5,\"payload\":\"AAAAAAAAAAE=\",\"position\":1}\n\
             {\"type\":1,\"name\":\"empty\",\"payload\":null,\"position\":2}\n"
        );
    }
}
