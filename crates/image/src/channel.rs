//! A bounded channel of byte chunks that reads like a file: the seam between
//! threads of the import pipeline (network → decompress → tar).

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

pub(crate) type Chunk = io::Result<Vec<u8>>;

pub(crate) fn chunk_channel(depth: usize) -> (SyncSender<Chunk>, ChunkReader) {
    let (tx, rx) = std::sync::mpsc::sync_channel(depth);
    (
        tx,
        ChunkReader {
            rx,
            current: Vec::new(),
            pos: 0,
            done: false,
        },
    )
}

/// Reads the chunks in order; an `Err` chunk becomes the read error, and a
/// closed channel is end of stream.
pub(crate) struct ChunkReader {
    rx: Receiver<Chunk>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
