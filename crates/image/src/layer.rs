//! Streaming import of one layer in a single pass: tar entries become a
//! layer [`Tree`] (metadata) and staged objects (file bodies). Nothing is
//! created at a path the archive names; every path is validated as a list of
//! plain names, and every parent must be a directory of this layer tree.
//!
//! The tar stream is read by [`archive`], which follows Go's archive/tar
//! (containerd's reader) and bounds what headers make it hold. What the
//! EROFS image would not carry faithfully is refused or normalised here:
//!
//! - a character device 0/0 is a whiteout of its name: containerd's
//!   applier creates it as such a device in an overlayfs upper dir, where
//!   it is one;
//! - xattr names and values must be ones setxattr takes, and
//!   `security.capability` a revision 2 or 3 `vfs_cap_data` ([`xattr`]);
//! - `trusted.overlay.*` is dropped (it would steer overlayfs), and so are
//!   `user.overlay.{opaque,whiteout,whiteouts}`, which composefs's reader
//!   takes as its own markers (with a warning); other `user.overlay.*` stay;
//! - AUFS's metadata at the root (`.wh..wh.plnk`, ...) is skipped, as
//!   Docker does;
//! - every file's full size, sparse holes included, counts against the
//!   layer's byte limit, and every entry against the image's entry limit.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_erofs::INLINE_MAX;
use strata_store::{ObjectRef, ObjectStager, Store};
use strata_tree::{split_path, Content, FileData, Leaf, Stat, Tree};

pub(crate) mod archive;
mod builder;
pub(crate) use archive::Header;
mod toc_check;
mod xattr;
use archive::{Archive, ArchiveError};
use builder::{NewNode, TreeBuilder};
pub(crate) use toc_check::{tar_entry, TocCheck};

use crate::decompress::{self, Compression, Expected};
use crate::{Descriptor, ImportError, Progress};

/// Bodies up to this size are hashed in memory before anything is written,
/// so a content the store has is never written at all.
const IN_MEMORY_MAX: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes per layer.
    pub max_layer_bytes: u64,
    /// Tar entries per layer.
    pub max_entries: u64,
    /// Path components per entry.
    pub max_depth: usize,
    /// Bytes in an entry's path (and a link's target).
    pub max_path_bytes: usize,
    /// Tar entries across all layers of one image. A pull holds about
    /// 700 bytes per entry at its peak (layer trees, merged tree, EROFS
    /// writer), so the default bounds it near 1.4 GB while staying several
    /// times above the largest real images (a few hundred thousand entries).
    pub max_entries_per_image: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 64 << 30,
            max_entries: 10_000_000,
            max_depth: 1024,
            max_path_bytes: 4096,
            max_entries_per_image: 2_000_000,
        }
    }
}

/// A layer parsed and verified, its objects staged but not yet published.
pub struct LayerImport {
    pub tree: Tree,
    pub stager: ObjectStager,
    pub objects: Vec<ObjectRef>,
}

/// xattrs composefs's reader takes for its own overlay markers; an EROFS
/// image cannot carry them from a layer, so they are dropped with a warning.
const COMPOSEFS_MARKERS: [&[u8]; 3] = [
    b"user.overlay.opaque",
    b"user.overlay.whiteout",
    b"user.overlay.whiteouts",
];

/// The entries one image may still have, shared by its layers' imports.
#[derive(Debug)]
pub(crate) struct EntryBudget {
    used: AtomicU64,
    limit: u64,
}

impl EntryBudget {
    pub(crate) fn new(limit: u64) -> Self {
        EntryBudget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Gives back `n` entries taken by an import that was abandoned (a
    /// partial pull that falls back to a whole one).
    pub(crate) fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    fn take(&self, layer: &str) -> Result<(), ImportError> {
        if self.used.fetch_add(1, Ordering::Relaxed) >= self.limit {
            return Err(ImportError::TooManyImageEntries {
                layer: layer.to_owned(),
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// Imports the layer blob `raw` (as described by `desc`), verifying its
/// size, its digest and, when given, its diff_id.
pub fn import_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: Option<&str>,
    raw: Box<dyn Read + Send>,
    limits: &Limits,
    progress: &Arc<Progress>,
) -> Result<LayerImport, ImportError> {
    let budget = EntryBudget::new(limits.max_entries_per_image);
    import_layer_in(store, desc, diff_id, raw, limits, progress, &budget, None)?.settle(store)
}

/// A layer read whole whose comparison with its TOC, if it announces one,
/// is still to come: the comparison reads the layer's contents back, which
/// a pull does beside the sync of what its layers wrote ([`crate::pull`]).
pub(crate) struct UncheckedImport {
    pub import: LayerImport,
    pub check: Option<TocCheck>,
}

impl UncheckedImport {
    /// Concludes the comparison now, recording the index rows it yields.
    pub(crate) fn settle(self, store: &Store) -> Result<LayerImport, ImportError> {
        if let Some(check) = self.check {
            let rows = check.conclude(&self.import.stager.contents())?;
            store.record_contents(&rows, &[])?;
        }
        Ok(self.import)
    }
}

/// [`import_layer`], drawing entries from an image-wide budget, and leaving
/// the comparison with the TOC to the caller; `known_toc` is the layer's
/// TOC where a partial attempt already read and verified it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn import_layer_in(
    store: &Store,
    desc: &Descriptor,
    diff_id: Option<&str>,
    raw: Box<dyn Read + Send>,
    limits: &Limits,
    progress: &Arc<Progress>,
    budget: &EntryBudget,
    known_toc: Option<crate::toc::Toc>,
) -> Result<UncheckedImport, ImportError> {
    let started = std::time::Instant::now();
    let compression = Compression::from_media_type(&desc.media_type)?;
    let expected = Expected {
        layer: desc.digest.clone(),
        blob_digest: desc.digest.clone(),
        blob_size: desc.size,
        diff_id: diff_id.map(str::to_owned),
        limit: limits.max_layer_bytes,
    };
    // A layer with a TOC is compared with it; see toc_check.
    let check = TocCheck::for_layer(desc, limits).map(|check| check.knowing(known_toc));
    let raw = match &check {
        Some(check) => check.tap(raw),
        None => raw,
    };
    let (mut reader, verdict) = decompress::spawn(raw, compression, expected, progress.clone());
    let mut builder = LayerBuilder::new(store.stager()?, &desc.digest, limits, progress);
    builder.hide_estargz_metadata = is_estargz(desc);
    builder.check = check;
    let parsed = builder.read_archive(&mut reader, budget);
    // Read the rest, even after a tar error, so the digests cover every byte
    // (the tar end marker may also come before the stream's end).
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    drop(reader);
    let verified = verdict.join().unwrap_or_else(|_| {
        Err(ImportError::Layer {
            layer: desc.digest.clone(),
            reason: "decompressor thread panicked".into(),
        })
    });
    // A digest failure explains a tar failure (truncation, corruption), so it wins.
    verified?;
    parsed?;
    let read = started.elapsed();
    let check = builder.check.take();
    let import = builder.finish();
    // Small files live inline in EROFS images: the store keeps them by SHA-256.
    store.record_contents(&[], &crate::partial::small_contents(&import.tree))?;
    tracing::debug!(
        layer = %desc.digest,
        seconds = started.elapsed().as_secs_f64(),
        read_s = read.as_secs_f64(),
        "imported a layer whole"
    );
    Ok(UncheckedImport { import, check })
}

/// A layer with eStargz's TOC annotation: its `stargz.index.json` and
/// landmark files at the root are the format's, not the image's.
pub(crate) fn is_estargz(desc: &Descriptor) -> bool {
    desc.annotations
        .contains_key(crate::toc::estargz::TOC_DIGEST_ANNOTATION)
}

/// eStargz's own entries at a layer's root, hidden from the image.
fn is_estargz_metadata(path: &[Vec<u8>]) -> bool {
    use crate::toc::estargz::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME};
    matches!(path, [name] if [TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK]
        .iter()
        .any(|n| n.as_bytes() == &name[..]))
}

/// Where a regular file's bytes come from.
pub(crate) enum Body<'r, 'a> {
    /// The tar entry's body, read now.
    Tar(&'r mut Archive<'a>),
    /// Already staged or inline (a partial pull fetched and checked it).
    Known(FileData),
}

pub(crate) struct LayerBuilder<'a> {
    layer: &'a str,
    limits: &'a Limits,
    progress: &'a Progress,
    tree: TreeBuilder<'a>,
    stager: ObjectStager,
    objects: Vec<ObjectRef>,
    buf: Vec<u8>,
    /// File bytes this layer has written (sparse holes included).
    written: u64,
    /// Entries so far, against `limits.max_entries`.
    count: u64,
    pub(crate) hide_estargz_metadata: bool,
    /// Set for a whole read of a layer with a TOC.
    check: Option<TocCheck>,
}

impl<'a> LayerBuilder<'a> {
    pub(crate) fn new(stager: ObjectStager, layer: &'a str, limits: &'a Limits, progress: &'a Progress) -> Self {
        LayerBuilder {
            layer,
            limits,
            progress,
            tree: TreeBuilder::new(layer, limits.max_depth),
            stager,
            objects: Vec::new(),
            buf: Vec::new(),
            written: 0,
            count: 0,
            hide_estargz_metadata: false,
            check: None,
        }
    }

    /// The layer's tree, stager and objects.
    pub(crate) fn finish(self) -> LayerImport {
        let mut objects = self.objects;
        objects.sort_unstable();
        objects.dedup();
        LayerImport {
            tree: self.tree.tree,
            stager: self.stager,
            objects,
        }
    }

    /// Entries counted so far.
    pub(crate) fn entries(&self) -> u64 {
        self.count
    }

    /// Counts one entry against the layer's and the image's limits.
    pub(crate) fn count_entry(&mut self, budget: &EntryBudget) -> Result<(), ImportError> {
        self.count += 1;
        if self.count > self.limits.max_entries {
            return Err(ImportError::TooManyEntries {
                layer: self.layer.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        budget.take(self.layer)
    }

    /// Counts a file's bytes against the layer's limit.
    fn count_bytes(&mut self, size: u64, raw_path: &[u8]) -> Result<(), ImportError> {
        // Sparse holes count: the limit bounds what is written, not what was sent.
        self.written = self.written.saturating_add(size);
        if self.written > self.limits.max_layer_bytes {
            return Err(self.entry_err(
                raw_path,
                format!(
                    "a file of {size} bytes takes the layer past the limit of {} bytes (raise --max-layer-bytes if it is genuine)",
                    self.limits.max_layer_bytes
                ),
            ));
        }
        Ok(())
    }

    fn entry_err(&self, path: &[u8], reason: impl ToString) -> ImportError {
        ImportError::Entry {
            layer: self.layer.to_owned(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.to_string(),
        }
    }

    fn read_archive(&mut self, reader: &mut dyn Read, budget: &EntryBudget) -> Result<(), ImportError> {
        let mut archive = Archive::new(reader, self.limits.max_path_bytes);
        while let Some(header) = archive.next().map_err(|e| self.archive_err(e))? {
            if header.typeflag == b'g' {
                continue; // Global PAX headers: ignored, as containerd does.
            }
            self.count_entry(budget)?;
            if self.check.is_some() {
                self.add_checked(header, &mut archive)?;
            } else {
                self.add_entry(header, Body::Tar(&mut archive))?;
            }
        }
        Ok(())
    }

    fn archive_err(&self, e: ArchiveError) -> ImportError {
        match e {
            ArchiveError::Io(e) => ImportError::Layer {
                layer: self.layer.to_owned(),
                reason: format!("reading tar: {e}"),
            },
            ArchiveError::Header(reason) => ImportError::Layer {
                layer: self.layer.to_owned(),
                reason: format!("reading tar: {reason}"),
            },
            ArchiveError::Entry { path, reason } => self.entry_err(&path, reason),
        }
    }

    fn check_path_len(&self, raw_path: &[u8]) -> Result<(), ImportError> {
        if raw_path.len() <= self.limits.max_path_bytes {
            return Ok(());
        }
        Err(ImportError::Entry {
            layer: self.layer.to_owned(),
            path: String::from_utf8_lossy(&raw_path[..raw_path.len().min(64)]).into_owned() + "...",
            reason: format!(
                "path of {} bytes is over the limit of {}",
                raw_path.len(),
                self.limits.max_path_bytes
            ),
        })
    }

    /// One entry, taking effect in the layer's order.
    pub(crate) fn add_entry(&mut self, header: Header, body: Body<'_, '_>) -> Result<(), ImportError> {
        let raw_path = &header.path[..];
        self.check_path_len(raw_path)?;
        let path = split_path(raw_path, self.limits.max_depth).map_err(|e| self.entry_err(raw_path, e))?;
        if is_aufs_metadata(&path) {
            return Ok(()); // Docker skips AUFS's own files.
        }
        if self.hide_estargz_metadata && is_estargz_metadata(&path) {
            return Ok(()); // The same in full and partial pulls.
        }
        let stat = self.read_stat(&header)?;

        if let Some(name) = path.last() {
            if let Some(target) = name.strip_prefix(b".wh.") {
                return self.tree.whiteout(&path, target, raw_path);
            }
        }

        let node = match header.typeflag {
            b'5' => NewNode::Dir(stat),
            b'0' | b'7' => {
                let data = match body {
                    Body::Tar(archive) => self.read_body(archive, header.size, raw_path)?,
                    Body::Known(data) => {
                        self.count_bytes(header.size, raw_path)?;
                        data
                    }
                };
                Progress::add(&self.progress.files, 1);
                NewNode::Leaf(Leaf {
                    stat,
                    content: Content::File(data),
                })
            }
            b'2' => {
                let target = header.link.clone();
                if target.contains(&0) {
                    return Err(self.entry_err(raw_path, "symlink target contains a NUL byte"));
                }
                NewNode::Leaf(Leaf {
                    stat,
                    content: Content::Symlink(target),
                })
            }
            b'1' => return self.tree.hard_link_with_stat(path, &header.link, Some(stat), raw_path),
            kind @ (b'3' | b'4') => {
                let bad = |what: &str| self.entry_err(raw_path, format!("invalid device {what} in tar header"));
                let major = u32::try_from(header.dev_major).map_err(|_| bad("major"))?;
                let minor = u32::try_from(header.dev_minor).map_err(|_| bad("minor"))?;
                let rdev = makedev(major, minor);
                let content = if kind == b'3' {
                    if rdev == 0 && !path.is_empty() {
                        // What containerd's applier makes of it on overlayfs.
                        let (name, _) = path.split_last().expect("not the root");
                        let name = name.clone();
                        return self.tree.whiteout(&path, &name, raw_path);
                    }
                    Content::CharDevice(rdev)
                } else {
                    Content::BlockDevice(rdev)
                };
                NewNode::Leaf(Leaf { stat, content })
            }
            b'6' => NewNode::Leaf(Leaf {
                stat,
                content: Content::Fifo,
            }),
            other => {
                return Err(self.entry_err(raw_path, format!("unsupported tar entry type {:?}", char::from(other))))
            }
        };
        self.tree.insert(&path, node, raw_path)
    }

    fn read_stat(&self, header: &Header) -> Result<Stat, ImportError> {
        let raw_path = &header.path[..];
        let bad = |what: &str| self.entry_err(raw_path, format!("invalid {what} in tar header"));
        let mut stat = Stat {
            mode: u32::try_from(header.mode & 0o7777).map_err(|_| bad("mode"))?,
            uid: u32::try_from(header.uid).map_err(|_| bad("uid"))?,
            gid: u32::try_from(header.gid).map_err(|_| bad("gid"))?,
            mtime_sec: header.mtime.0,
            mtime_nsec: header.mtime.1,
            xattrs: BTreeMap::new(),
        };
        for (name, value) in &header.xattrs {
            // trusted.overlay.* would let an image steer overlayfs
            // (redirects, metacopy); it never comes from a layer.
            if name.starts_with(b"trusted.overlay.") {
                continue;
            }
            if COMPOSEFS_MARKERS.contains(&&name[..]) {
                tracing::warn!(
                    layer = self.layer,
                    path = %String::from_utf8_lossy(raw_path),
                    xattr = %String::from_utf8_lossy(name),
                    "dropping an xattr EROFS images cannot hold (composefs reads it as its own marker)"
                );
                continue;
            }
            xattr::check(name, value).map_err(|why| self.entry_err(raw_path, why))?;
            stat.xattrs.insert(name.clone(), value.clone());
        }
        Ok(stat)
    }

    fn read_body(&mut self, archive: &mut Archive<'_>, size: u64, raw_path: &[u8]) -> Result<FileData, ImportError> {
        self.count_bytes(size, raw_path)?;
        let io_err = |s: &Self, e: std::io::Error| s.entry_err(raw_path, format!("reading file body: {e}"));
        if size <= IN_MEMORY_MAX {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let read = archive.read_to_end(&mut buf);
            if let Err(e) = read {
                return Err(io_err(self, e));
            }
            let data = if buf.len() <= INLINE_MAX {
                self.hash_body(&buf);
                FileData::Inline(buf.clone())
            } else {
                let staged = self.stager.add_bytes(&buf)?;
                if !staged.new {
                    // Its object may be cold on disk: hashed here instead.
                    self.hash_body(&buf);
                }
                self.note(staged);
                FileData::Object {
                    digest: staged.digest,
                    size: staged.size,
                }
            };
            self.buf = buf;
            return Ok(data);
        }
        let mut writer = self.stager.writer()?;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = archive.read(&mut chunk).map_err(|e| io_err(self, e))?;
            if n == 0 {
                break;
            }
            writer.write(&chunk[..n])?;
        }
        let staged = self.stager.finish(writer)?;
        if staged.size != size {
            return Err(self.entry_err(raw_path, "file body shorter than its header says"));
        }
        self.note(staged);
        Ok(FileData::Object {
            digest: staged.digest,
            size: staged.size,
        })
    }

    pub(crate) fn note(&mut self, staged: strata_store::StagedObject) {
        let counter = if staged.new {
            &self.progress.new_objects
        } else {
            &self.progress.dedup_hits
        };
        Progress::add(counter, 1);
        self.objects.push(ObjectRef {
            digest: staged.digest,
            size: staged.size,
        });
    }
}

/// AUFS's own files at the root (`.wh..wh.plnk`, `.wh..wh.aufs`,
/// `.wh..wh.orph`, what is under them), which Docker skips; the root's
/// opaque marker `.wh..wh..opq` is not one of them.
fn is_aufs_metadata(path: &[Vec<u8>]) -> bool {
    path.first()
        .is_some_and(|first| first.starts_with(b".wh..wh.") && !(path.len() == 1 && first == b".wh..wh..opq"))
}

/// glibc's `makedev`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

#[cfg(test)]
mod tests;
