//! A regular file's data cut into chunks of a fixed size, each compressed
//! on its own: where each starts in the blob, and the digests the TOC
//! gives (the file's, each chunk's, and tar-split's CRC-64 if wanted).

use sha2::{Digest as _, Sha256};

use super::tar_split::Crc64;
use super::ConvertError;
use crate::toc::Sha256Digest;

/// Where a format's compressed stream puts chunks.
pub(super) trait ChunkStream {
    /// Ends whatever member or frame is open; where the chunk starts.
    fn start_chunk(&mut self) -> Result<u64, ConvertError>;
    /// Compresses a piece of the chunk.
    fn write(&mut self, piece: &[u8]) -> Result<(), ConvertError>;
    /// After the chunk's last byte.
    fn end_chunk(&mut self) -> Result<(), ConvertError>;
}

pub(super) struct Chunk {
    /// Where its compressed bytes start in the blob.
    pub offset: u64,
    pub file_offset: u64,
    pub len: u64,
    pub digest: Sha256Digest,
}

/// A finished file.
pub(super) struct FileDigests {
    pub digest: Sha256Digest,
    pub crc: Option<u64>,
    pub chunks: Vec<Chunk>,
}

struct Open {
    offset: u64,
    file_offset: u64,
    len: u64,
    /// None when the chunk is the whole file: its digest is the file's.
    hash: Option<Sha256>,
    written: u64,
}

pub(super) struct FileChunks {
    size: u64,
    chunk_size: u64,
    hash: Sha256,
    crc: Option<Crc64>,
    written: u64,
    open: Option<Open>,
    done: Vec<Chunk>,
}

impl FileChunks {
    pub fn new(size: u64, chunk_size: u64, with_crc: bool) -> Self {
        FileChunks {
            size,
            chunk_size: chunk_size.max(1),
            hash: Sha256::new(),
            crc: with_crc.then(Crc64::new),
            written: 0,
            open: None,
            done: Vec::new(),
        }
    }

    /// The file's next bytes, into `stream`; more than the file's size is refused.
    pub fn feed(&mut self, mut bytes: &[u8], stream: &mut impl ChunkStream) -> Result<(), ConvertError> {
        while !bytes.is_empty() {
            let chunk = match &mut self.open {
                Some(chunk) => chunk,
                None => {
                    let len = self.chunk_size.min(self.size - self.written);
                    if len == 0 {
                        return Err(ConvertError::io("reading a file's data")(std::io::Error::other(
                            "more data than its header's size",
                        )));
                    }
                    self.open.insert(Open {
                        offset: stream.start_chunk()?,
                        file_offset: self.written,
                        len,
                        hash: (len != self.size).then(Sha256::new),
                        written: 0,
                    })
                }
            };
            let take = usize::try_from(chunk.len - chunk.written).map_or(bytes.len(), |left| left.min(bytes.len()));
            let (piece, rest) = bytes.split_at(take);
            stream.write(piece)?;
            self.hash.update(piece);
            if let Some(crc) = &mut self.crc {
                crc.update(piece);
            }
            if let Some(hash) = &mut chunk.hash {
                hash.update(piece);
            }
            chunk.written += piece.len() as u64;
            self.written += piece.len() as u64;
            if chunk.written == chunk.len {
                let chunk = self.open.take().expect("the open chunk");
                stream.end_chunk()?;
                self.done.push(Chunk {
                    offset: chunk.offset,
                    file_offset: chunk.file_offset,
                    len: chunk.len,
                    // The whole file's digest is filled in by finish().
                    digest: chunk
                        .hash
                        .map_or(Sha256Digest([0; 32]), |h| Sha256Digest(h.finalize().into())),
                });
            }
            bytes = rest;
        }
        Ok(())
    }

    /// The digests, once every byte is in; `None` if the data ended early.
    pub fn finish(self) -> Option<FileDigests> {
        if self.written != self.size {
            return None;
        }
        let digest = Sha256Digest(self.hash.finalize().into());
        let mut chunks = self.done;
        if let [whole] = &mut chunks[..] {
            whole.digest = digest;
        }
        Some(FileDigests {
            digest,
            crc: self.crc.map(Crc64::sum),
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls; each chunk's pieces are counted as one offset step.
    #[derive(Default)]
    struct Calls {
        position: u64,
        log: Vec<String>,
    }

    impl ChunkStream for Calls {
        fn start_chunk(&mut self) -> Result<u64, ConvertError> {
            self.log.push(format!("start@{}", self.position));
            Ok(self.position)
        }
        fn write(&mut self, piece: &[u8]) -> Result<(), ConvertError> {
            self.position += piece.len() as u64;
            Ok(())
        }
        fn end_chunk(&mut self) -> Result<(), ConvertError> {
            self.log.push("end".into());
            Ok(())
        }
    }

    #[test]
    fn chunks_cover_the_file_with_their_digests() {
        let data: Vec<u8> = (0..25u8).collect();
        let mut calls = Calls::default();
        let mut file = FileChunks::new(25, 10, true);
        for piece in data.chunks(7) {
            file.feed(piece, &mut calls).unwrap();
        }
        assert_eq!(calls.log, ["start@0", "end", "start@10", "end", "start@20", "end"]);
        let done = file.finish().unwrap();
        assert_eq!(done.digest, Sha256Digest::of(&data));
        let spans: Vec<_> = done.chunks.iter().map(|c| (c.file_offset, c.len)).collect();
        assert_eq!(spans, [(0, 10), (10, 10), (20, 5)]);
        assert_eq!(done.chunks[2].digest, Sha256Digest::of(&data[20..]));
        let mut crc = Crc64::new();
        crc.update(&data);
        assert_eq!(done.crc, Some(crc.sum()));

        let mut whole = FileChunks::new(25, 100, false);
        whole.feed(&data, &mut calls).unwrap();
        assert!(whole.feed(b"x", &mut calls).is_err());
        let done = whole.finish().unwrap();
        assert_eq!(done.chunks[0].digest, Sha256Digest::of(&data));
        assert_eq!(done.crc, None);
        let mut short = FileChunks::new(25, 100, false);
        short.feed(&data[..3], &mut calls).unwrap();
        assert!(short.finish().is_none());
    }
}
