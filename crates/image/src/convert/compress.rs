//! The output side of a layer conversion: the blob file (counted and
//! hashed as it is written), gzip members and zstd frames that start and
//! end where a format needs them, each reusing one compressor context.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use sha2::{Digest as _, Sha256};
use zstd::stream::raw::{CParameter, Operation as _, OutBuffer};

use crate::toc::Sha256Digest;

const OUT_BUF: usize = 256 << 10;

/// The converted blob as it is written: its length and SHA-256.
pub(super) struct BlobWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter {
    pub fn new(file: File) -> Self {
        BlobWriter {
            out: BufWriter::with_capacity(OUT_BUF, file),
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far: where the next byte goes.
    pub fn position(&self) -> u64 {
        self.len
    }

    /// Flushes; the file, the blob's digest and size.
    pub fn finish(self) -> io::Result<(File, Sha256Digest, u64)> {
        let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok((file, Sha256Digest(self.hasher.finalize().into()), self.len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// gzip members written one after another: raw deflate from one reused
/// context, with the gzip header and trailer written here (as Go's gzip
/// writer makes them: no name, mtime 0, OS unknown).
pub(super) struct GzipMembers {
    deflate: flate2::Compress,
    crc: flate2::Crc,
    open: bool,
    buf: Vec<u8>,
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

impl GzipMembers {
    pub fn new(level: u32) -> Self {
        GzipMembers {
            deflate: flate2::Compress::new(flate2::Compression::new(level), false),
            crc: flate2::Crc::new(),
            open: false,
            buf: Vec::with_capacity(OUT_BUF),
        }
    }

    /// Compresses `data` into the open member, opening one if none is.
    pub fn write(&mut self, out: &mut impl Write, mut data: &[u8]) -> io::Result<()> {
        if !self.open {
            out.write_all(&GZIP_HEADER)?;
            self.open = true;
        }
        self.crc.update(data);
        loop {
            self.buf.clear();
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(data, &mut self.buf, flate2::FlushCompress::None)
                .map_err(io::Error::other)?;
            let consumed = usize::try_from(self.deflate.total_in() - before).unwrap_or(data.len());
            data = &data[consumed.min(data.len())..];
            out.write_all(&self.buf)?;
            if data.is_empty() && self.buf.len() < self.buf.capacity() {
                return Ok(());
            }
        }
    }

    /// Ends the open member, if any; the next write starts another.
    pub fn close(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.open {
            return Ok(());
        }
        loop {
            self.buf.clear();
            let status = self
                .deflate
                .compress_vec(&[], &mut self.buf, flate2::FlushCompress::Finish)
                .map_err(io::Error::other)?;
            out.write_all(&self.buf)?;
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
        out.write_all(&self.crc.sum().to_le_bytes())?;
        out.write_all(&self.crc.amount().to_le_bytes())?;
        self.deflate.reset();
        self.crc.reset();
        self.open = false;
        Ok(())
    }
}

/// zstd frames written one after another from one reused context, each
/// with a content checksum.
pub(super) struct ZstdFrames {
    encoder: zstd::stream::raw::Encoder<'static>,
    open: bool,
    buf: Vec<u8>,
}

impl ZstdFrames {
    pub fn new(level: i32) -> io::Result<Self> {
        let mut encoder = zstd::stream::raw::Encoder::new(level)?;
        encoder.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(ZstdFrames {
            encoder,
            open: false,
            buf: vec![0; OUT_BUF],
        })
    }

    pub fn write(&mut self, out: &mut impl Write, mut data: &[u8]) -> io::Result<()> {
        self.open = true;
        while !data.is_empty() {
            let status = self.encoder.run_on_buffers(data, &mut self.buf)?;
            out.write_all(&self.buf[..status.bytes_written])?;
            data = &data[status.bytes_read..];
        }
        Ok(())
    }

    /// Ends the open frame, if any; the next write starts another.
    pub fn close(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.open {
            return Ok(());
        }
        loop {
            let mut output = OutBuffer::around(&mut self.buf[..]);
            let remaining = self.encoder.finish(&mut output, true)?;
            let written = output.pos();
            out.write_all(&self.buf[..written])?;
            if remaining == 0 {
                break;
            }
        }
        self.encoder.reinit()?;
        self.open = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn gzip_members_each_decompress_alone_and_together() {
        let mut out = Vec::new();
        let mut gz = GzipMembers::new(6);
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        gz.write(&mut out, b"first ").unwrap();
        gz.write(&mut out, b"member").unwrap();
        gz.close(&mut out).unwrap();
        let second = out.len();
        gz.write(&mut out, &big).unwrap();
        gz.close(&mut out).unwrap();
        gz.close(&mut out).unwrap(); // nothing open: nothing written
        let mut one = Vec::new();
        flate2::read::GzDecoder::new(&out[..second])
            .read_to_end(&mut one)
            .unwrap();
        assert_eq!(one, b"first member");
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all.len(), 12 + big.len());
        assert_eq!(&all[12..], &big[..]);
    }

    #[test]
    fn zstd_frames_each_decompress_alone_and_together() {
        let mut out = Vec::new();
        let mut frames = ZstdFrames::new(3).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        frames.write(&mut out, b"first frame").unwrap();
        frames.close(&mut out).unwrap();
        let second = out.len();
        frames.write(&mut out, &big).unwrap();
        frames.close(&mut out).unwrap();
        frames.close(&mut out).unwrap();
        assert_eq!(zstd::decode_all(&out[..second]).unwrap(), b"first frame");
        assert_eq!(zstd::decode_all(&out[second..]).unwrap(), big);
        assert_eq!(zstd::decode_all(&out[..]).unwrap().len(), 11 + big.len());
    }
}
