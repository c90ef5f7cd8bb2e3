//! FUSE passthrough backing ids a LAZY server inherits from the server it
//! replaces (docs/lazy-pulls.md, "Hand-over").

use fuser::{BackingId, ReplyOpen};

/// Takes ownership of backing id `id`, which a killed predecessor
/// registered on this FUSE connection and never closed. The returned
/// `BackingId` closes it when dropped.
///
/// The caller must own `id`: registered on this connection, not closed,
/// and wrapped once only (the LAZY session journal says so). A wrong id
/// is not memory-unsafe: the kernel refuses an unknown one (EIO to that
/// open) and a close of it fails with an error.
pub fn adopt_fuse_backing(reply: &ReplyOpen, id: u32) -> BackingId {
    // SAFETY: `wrap_backing` is unsafe only because two owners of one id
    // would close it twice; the journal hands each id to one owner.
    #[allow(unsafe_code)]
    unsafe {
        reply.wrap_backing(id)
    }
}
