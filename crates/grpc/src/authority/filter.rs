//! The client-to-server byte filter of one connection, without I/O: bytes
//! in, bytes out, and a verdict.
//!
//! It starts by checking: the preface and every frame go out unchanged as
//! they arrive, except a header block's frames, held until the block is
//! complete. The first header block decides. If its `:authority` is fine
//! (or absent), the held bytes go out as they came and the filter is done:
//! [`Outcome::PassThrough`], and the caller reads the socket directly from
//! then on. If h2 would refuse it, the filter rewrites: this block and
//! every later one are decoded and encoded again (see [`super::block`]),
//! while the frames between them are forwarded unchanged.
//!
//! While checking, anything it does not understand (not HTTP/2, a broken
//! frame or HPACK block, a block over the limit) also passes through, so
//! the server answers it exactly as it would without the shim. Once
//! rewriting, the filter alone knows the client's HPACK state, so the same
//! faults are [`ShimError`]s and end the connection.

use loona_hpack::Decoder;

use super::block::{self, BlockError};
use super::frame::{
    self, FrameError, FrameHeader, CONTINUATION, END_HEADERS, END_STREAM, HEADERS, HEADER_LEN, PREFACE, PUSH_PROMISE,
};

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Keep feeding the filter.
    Filtering,
    /// Everything so far is in the output; the rest of the stream needs no
    /// filter.
    PassThrough,
}

/// Why a connection that is being rewritten must end.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ShimError {
    #[error("not an HTTP/2 client preface")]
    Preface,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("header block of stream {stream}: {source}")]
    Block {
        stream: u32,
        #[source]
        source: BlockError,
    },
    #[error("frame of {len} bytes over the maximum frame size {max}")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("header block of stream {stream} over {max} bytes")]
    BlockTooLarge { stream: u32, max: usize },
    #[error("frame type {kind:#x} (stream {stream}) inside the header block of stream {open}")]
    Interleaved { kind: u8, stream: u32, open: u32 },
    #[error("CONTINUATION on stream {stream} without a header block")]
    StrayContinuation { stream: u32 },
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
}

/// The bounds of one connection's filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The server's SETTINGS_MAX_FRAME_SIZE: the longest frame a client may
    /// send, and the longest the filter writes.
    pub max_frame: u32,
    /// The longest header block (the fragments of a HEADERS frame and its
    /// CONTINUATION frames) the filter holds.
    pub max_block: usize,
    /// The largest decoded header list (HPACK's size: name + value + 32).
    pub max_list: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            max_block: 1 << 20,
            max_list: 1 << 20,
        }
    }
}

/// A header block being collected.
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

pub(crate) struct Filter {
    /// Input not yet consumed: part of a frame header, or of a header
    /// block's frame. Bounded by a frame header plus `max_frame` plus one
    /// read.
    input: Vec<u8>,
    state: State,
}

struct State {
    limits: Limits,
    preface_seen: bool,
    /// Payload bytes of a forwarded frame still to come.
    forward: u32,
    pending: Option<Pending>,
    /// While checking: the raw frames of the pending block.
    held: Vec<u8>,
    rewriting: bool,
    decoder: Decoder<'static>,
}

/// What one step did.
enum Step {
    /// Consumed input; go on.
    Progress,
    /// Needs more input.
    NeedMore,
    /// Pass the rest through.
    PassThrough,
}

impl Filter {
    pub(crate) fn new(limits: Limits) -> Filter {
        Filter {
            input: Vec::new(),
            state: State {
                limits,
                preface_seen: false,
                forward: 0,
                pending: None,
                held: Vec::new(),
                rewriting: false,
                decoder: block::new_decoder(),
            },
        }
    }

    /// Whether the filter has started rewriting header blocks.
    pub(crate) fn rewriting(&self) -> bool {
        self.state.rewriting
    }

    /// Feeds bytes read from the client; appends what the server is to
    /// read to `out`. After [`Outcome::PassThrough`] or an error, the
    /// filter must not be fed again.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Outcome, ShimError> {
        let mut input = std::mem::take(&mut self.input);
        input.extend_from_slice(data);
        let mut pos = 0;
        let result = self.state.run(&input, &mut pos, out);
        input.drain(..pos);
        self.input = input;
        if self.input.capacity() > 2 * (HEADER_LEN + self.state.limits.max_frame as usize) {
            self.input.shrink_to_fit();
        }
        result
    }

    /// The client closed its side: while still checking, whatever was held
    /// goes out, so the server sees the same truncated stream it would
    /// have seen without the shim. Once rewriting, a partial frame is
    /// dropped.
    pub(crate) fn end(&mut self, out: &mut Vec<u8>) {
        if !self.state.rewriting {
            out.append(&mut self.state.held);
            out.append(&mut self.input);
        }
        self.input.clear();
    }
}

impl State {
    fn run(&mut self, input: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<Outcome, ShimError> {
        loop {
            let step = match self.step(input, pos, out) {
                Ok(step) => step,
                Err(e) if self.rewriting => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "authority shim: passing the connection through");
                    Step::PassThrough
                }
            };
            match step {
                Step::Progress => {}
                Step::NeedMore => return Ok(Outcome::Filtering),
                Step::PassThrough => {
                    out.append(&mut self.held);
                    out.extend_from_slice(&input[*pos..]);
                    *pos = input.len();
                    return Ok(Outcome::PassThrough);
                }
            }
        }
    }

    fn step(&mut self, input: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<Step, ShimError> {
        let avail = &input[*pos..];
        if self.forward > 0 {
            if avail.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = avail.len().min(self.forward as usize);
            out.extend_from_slice(&avail[..n]);
            *pos += n;
            self.forward -= u32::try_from(n).unwrap_or(self.forward);
            return Ok(Step::Progress);
        }
        if !self.preface_seen {
            let n = avail.len().min(PREFACE.len());
            if avail[..n] != PREFACE[..n] {
                return Err(ShimError::Preface);
            }
            if n < PREFACE.len() {
                return Ok(Step::NeedMore);
            }
            out.extend_from_slice(PREFACE);
            *pos += n;
            self.preface_seen = true;
            return Ok(Step::Progress);
        }
        let Some(head) = FrameHeader::peek(avail) else {
            return Ok(Step::NeedMore);
        };
        if head.len > self.limits.max_frame {
            return Err(ShimError::FrameTooLarge {
                len: head.len,
                max: self.limits.max_frame,
            });
        }
        if let Some(p) = &self.pending {
            if head.kind != CONTINUATION || head.stream != p.stream {
                return Err(ShimError::Interleaved {
                    kind: head.kind,
                    stream: head.stream,
                    open: p.stream,
                });
            }
        }
        match head.kind {
            HEADERS | CONTINUATION => {
                let end = HEADER_LEN + head.len as usize;
                let Some(frame) = avail.get(..end) else {
                    return Ok(Step::NeedMore);
                };
                *pos += end;
                if !self.rewriting {
                    self.held.extend_from_slice(frame);
                }
                self.header_frame(&head, &frame[HEADER_LEN..], out)
            }
            PUSH_PROMISE => Err(ShimError::PushPromise),
            _ => {
                out.extend_from_slice(&avail[..HEADER_LEN]);
                *pos += HEADER_LEN;
                self.forward = head.len;
                Ok(Step::Progress)
            }
        }
    }

    /// A complete HEADERS or CONTINUATION frame (checked to belong to the
    /// pending block, if there is one).
    fn header_frame(&mut self, head: &FrameHeader, payload: &[u8], out: &mut Vec<u8>) -> Result<Step, ShimError> {
        let (pending, fragment) = if head.kind == HEADERS {
            let parts = frame::headers_payload(head, payload)?;
            let pending = self.pending.insert(Pending {
                stream: head.stream,
                end_stream: head.flags & END_STREAM != 0,
                priority: parts.priority,
                block: Vec::new(),
            });
            (pending, parts.fragment)
        } else {
            let Some(pending) = self.pending.as_mut() else {
                return Err(ShimError::StrayContinuation { stream: head.stream });
            };
            (pending, payload)
        };
        if pending.block.len() + fragment.len() > self.limits.max_block {
            return Err(ShimError::BlockTooLarge {
                stream: pending.stream,
                max: self.limits.max_block,
            });
        }
        pending.block.extend_from_slice(fragment);
        if head.flags & END_HEADERS == 0 {
            return Ok(Step::Progress);
        }
        let Some(pending) = self.pending.take() else {
            return Ok(Step::Progress);
        };
        self.finish_block(pending, out)
    }

    fn finish_block(&mut self, p: Pending, out: &mut Vec<u8>) -> Result<Step, ShimError> {
        let stream = p.stream;
        let fields = block::decode(&mut self.decoder, &p.block, self.limits.max_list)
            .map_err(|source| ShimError::Block { stream, source })?;
        if !self.rewriting {
            let Some(bad) = block::bad_authority(&fields) else {
                return Ok(Step::PassThrough);
            };
            tracing::debug!(
                authority = %String::from_utf8_lossy(bad),
                "authority shim: h2 refuses this :authority; rewriting the connection's header blocks"
            );
            self.rewriting = true;
            self.held = Vec::new();
        }
        let mut encoded = Vec::with_capacity(p.block.len() + p.block.len() / 2);
        block::encode(&fields, &mut encoded);
        frame::write_header_block(stream, p.end_stream, p.priority, &encoded, self.limits.max_frame, out);
        Ok(Step::Progress)
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
