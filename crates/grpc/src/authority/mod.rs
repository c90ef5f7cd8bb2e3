//! The `:authority` shim: lets gRPC's C core (grpcio ≥ 1.57, C++) call
//! strata's socket.
//!
//! Such a client sends the percent-encoded socket path as HTTP/2's
//! `:authority` (`%2Frun%2Fstrata%2Fstrata.sock`). h2's server parses it
//! with `http::uri::Authority`, which refuses `%` in a host, and resets
//! every stream with PROTOCOL_ERROR ("malformed authority"). h2 has no
//! option to relax that, hyper and tonic give no hook before it, and
//! carrying a patched h2 would mean maintaining a fork of the whole HTTP/2
//! stack for one check. So the fix sits below them, on the bytes: each
//! accepted connection is wrapped in an [`AuthorityShim`] whose reads go
//! through a filter (`filter.rs`) that rewrites such an `:authority` to
//! `localhost`, which is what Go's gRPC (containerd) sends.
//!
//! Costs and guarantees:
//! - The first header block of a connection decides. If its `:authority`
//!   is one h2 takes (containerd's case), the bytes held for the check go
//!   out unchanged and the shim then reads the socket directly: no copy, no
//!   frame parsing, nothing per frame. A later request on such a
//!   connection with a refused authority is reset by h2, as without the
//!   shim.
//! - Otherwise every header block of the connection, from that one on, is
//!   decoded with an HPACK decoder that follows the client's encoder
//!   (`loona-hpack`) and encoded again as literals without indexing, so
//!   h2's decoder never depends on a dynamic table entry it did not see.
//!   Other frames are copied as they arrive. Padding of HEADERS frames is
//!   dropped; priority fields and END_STREAM are kept.
//! - Server-to-client bytes are never touched; writes go straight to the
//!   socket.
//! - Bounded: frames up to the server's SETTINGS_MAX_FRAME_SIZE (which
//!   [`crate::server`] sets from [`MAX_FRAME_SIZE`]), header blocks up to
//!   1 MiB, decoded header lists up to 1 MiB. A fault on a connection being
//!   rewritten ends that connection with an I/O error; the server keeps
//!   serving the others. While the shim is still checking, a fault passes
//!   the connection through for h2 to judge.
//! - HPACK details h2 would refuse that the rewrite hides: a dynamic table
//!   size update after the first field of a block (loona-hpack takes it
//!   anywhere). Never-indexed fields become plain literals; h2 does not
//!   track that flag either.
//! - Re-encoded blocks are larger (no Huffman, no indexing) but never
//!   larger than the decoded list, so whatever fits h2's 16 KiB header
//!   list limit still fits two frames; h2 allows five per block here.
//!
//! The HPACK codec is `loona-hpack` (pinned), the maintained successor of
//! `hpack` 0.3 (2015) and `fluke-hpack`; only its decoder and integer
//! encoder are used (its `Encoder` always indexes). `httlib-hpack` was
//! ruled out: it indexes past the end of a truncated integer and panics.
//! The `:authority` check is `http::uri::Authority`, h2's own, so the two
//! cannot disagree about what needs a rewrite.

mod block;
mod filter;
mod frame;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use filter::{Filter, Limits, Outcome};

/// The SETTINGS_MAX_FRAME_SIZE strata's server advertises; the shim holds
/// clients to it.
pub const MAX_FRAME_SIZE: u32 = frame::DEFAULT_MAX_FRAME_SIZE;

/// How much one read from the socket takes while filtering.
const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose client-to-server bytes pass the
/// `:authority` filter until it has decided; see the module doc.
pub struct AuthorityShim<IO> {
    io: IO,
    read: Read,
}

enum Read {
    Filtering(Box<Filtering>),
    /// The filter is done: reads go straight to the socket.
    Direct,
    /// The filter refused the stream; every read is the end of it.
    Closed,
}

struct Filtering {
    filter: Filter,
    chunk: Vec<u8>,
    /// Filtered bytes the server has yet to read, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Once `out` is drained: switch to `Direct` (the filter passed the
    /// connection through) or report the end of the stream.
    then: Then,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Filter,
    Direct,
    Eof,
}

impl<IO> AuthorityShim<IO> {
    pub fn new(io: IO) -> Self {
        Self::with_limits(io, Limits::default())
    }

    fn with_limits(io: IO, limits: Limits) -> Self {
        AuthorityShim {
            io,
            read: Read::Filtering(Box::new(Filtering {
                filter: Filter::new(limits),
                chunk: vec![0; READ_CHUNK],
                out: Vec::new(),
                out_pos: 0,
                then: Then::Filter,
            })),
        }
    }

    /// Whether the connection's header blocks are being rewritten.
    pub fn rewriting(&self) -> bool {
        matches!(&self.read, Read::Filtering(f) if f.filter.rewriting())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityShim<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let f = match &mut this.read {
                Read::Direct => return Pin::new(&mut this.io).poll_read(cx, buf),
                Read::Closed => return Poll::Ready(Ok(())),
                Read::Filtering(f) => f,
            };
            if f.out_pos < f.out.len() {
                let n = buf.remaining().min(f.out.len() - f.out_pos);
                buf.put_slice(&f.out[f.out_pos..f.out_pos + n]);
                f.out_pos += n;
                if f.out_pos == f.out.len() {
                    f.out.clear();
                    f.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match f.then {
                Then::Direct => {
                    this.read = Read::Direct;
                    continue;
                }
                Then::Eof => {
                    this.read = Read::Closed;
                    continue;
                }
                Then::Filter => {}
            }
            let mut chunk = ReadBuf::new(&mut f.chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                f.filter.end(&mut f.out);
                f.then = Then::Eof;
                continue;
            }
            match f.filter.push(chunk.filled(), &mut f.out) {
                Ok(Outcome::Filtering) => {}
                Ok(Outcome::PassThrough) => f.then = Then::Direct,
                Err(e) => {
                    tracing::debug!(error = %e, "authority shim: closing the connection");
                    this.read = Read::Closed;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityShim<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for AuthorityShim<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
