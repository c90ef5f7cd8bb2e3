//! Streaming import of one layer in a single pass: tar entries become a
//! layer [`Tree`] (metadata) and staged objects (file bodies). Nothing is
//! created at a path the archive names; every path is validated as a list of
//! plain names, and every parent must be a directory of this layer tree.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use strata_erofs::INLINE_MAX;
use strata_store::{ObjectRef, ObjectStager, Store};
use strata_tree::{split_path, Content, Dir, FileData, Leaf, Node, Stat, Tree};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 64 << 30,
            max_entries: 10_000_000,
            max_depth: 1024,
            max_path_bytes: 4096,
        }
    }
}

/// A layer parsed and verified, its objects staged but not yet published.
pub struct LayerImport {
    pub tree: Tree,
    pub stager: ObjectStager,
    pub objects: Vec<ObjectRef>,
}

/// Imports the layer blob `raw` (as described by `desc`), verifying its
/// digest and, when given, its diff_id.
pub fn import_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: Option<&str>,
    raw: Box<dyn Read + Send>,
    limits: &Limits,
    progress: &Arc<Progress>,
) -> Result<LayerImport, ImportError> {
    let compression = Compression::from_media_type(&desc.media_type)?;
    let expected = Expected {
        layer: desc.digest.clone(),
        blob_digest: desc.digest.clone(),
        diff_id: diff_id.map(str::to_owned),
        limit: limits.max_layer_bytes,
    };
    let (mut reader, verdict) = decompress::spawn(raw, compression, expected, progress.clone());
    let mut builder = LayerBuilder::new(store, &desc.digest, limits, progress)?;
    let parsed = builder.read_archive(&mut reader);
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
    let mut objects = builder.objects;
    objects.sort_unstable();
    objects.dedup();
    Ok(LayerImport {
        tree: builder.tree,
        stager: builder.stager,
        objects,
    })
}

struct LayerBuilder<'a> {
    layer: &'a str,
    limits: &'a Limits,
    progress: &'a Progress,
    tree: Tree,
    stager: ObjectStager,
    objects: Vec<ObjectRef>,
    buf: Vec<u8>,
}

enum NewNode {
    Dir(Stat),
    Leaf(Leaf),
}

impl<'a> LayerBuilder<'a> {
    fn new(store: &Store, layer: &'a str, limits: &'a Limits, progress: &'a Progress) -> Result<Self, ImportError> {
        let mut tree = Tree::new(Stat::default_dir());
        tree.root.implicit = true;
        Ok(LayerBuilder {
            layer,
            limits,
            progress,
            tree,
            stager: store.stager()?,
            objects: Vec::new(),
            buf: Vec::new(),
        })
    }

    fn entry_err(&self, path: &[u8], reason: impl ToString) -> ImportError {
        ImportError::Entry {
            layer: self.layer.to_owned(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.to_string(),
        }
    }

    fn read_archive(&mut self, reader: &mut dyn Read) -> Result<(), ImportError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.tar_err(e))?;
        let mut count = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| self.tar_err(e))?;
            count += 1;
            if count > self.limits.max_entries {
                return Err(ImportError::TooManyEntries {
                    layer: self.layer.to_owned(),
                    limit: self.limits.max_entries,
                });
            }
            self.add_entry(entry)?;
        }
        Ok(())
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

    fn tar_err(&self, e: std::io::Error) -> ImportError {
        ImportError::Layer {
            layer: self.layer.to_owned(),
            reason: format!("reading tar: {e}"),
        }
    }

    fn add_entry(&mut self, mut entry: tar::Entry<'_, &mut dyn Read>) -> Result<(), ImportError> {
        use tar::EntryType as T;
        let raw_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            return Ok(());
        }
        self.check_path_len(&raw_path)?;
        let path = split_path(&raw_path, self.limits.max_depth).map_err(|e| self.entry_err(&raw_path, e))?;
        let stat = self.read_stat(&mut entry, &raw_path)?;

        if let Some(name) = path.last() {
            if let Some(target) = name.strip_prefix(b".wh.") {
                return self.whiteout(&path, target, &raw_path);
            }
        }

        let node = match kind {
            T::Directory => NewNode::Dir(stat),
            T::Regular | T::Continuous | T::GNUSparse => {
                let data = self.read_body(&mut entry, &raw_path)?;
                Progress::add(&self.progress.files, 1);
                NewNode::Leaf(Leaf {
                    stat,
                    content: Content::File(data),
                })
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.entry_err(&raw_path, "symlink without a target"))?;
                NewNode::Leaf(Leaf {
                    stat,
                    content: Content::Symlink(target.into_owned()),
                })
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.entry_err(&raw_path, "hard link without a target"))?
                    .into_owned();
                return self.hard_link(path, &target, &raw_path);
            }
            T::Char | T::Block => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let rdev = makedev(major, minor);
                let content = if kind == T::Char {
                    Content::CharDevice(rdev)
                } else {
                    Content::BlockDevice(rdev)
                };
                NewNode::Leaf(Leaf { stat, content })
            }
            T::Fifo => NewNode::Leaf(Leaf {
                stat,
                content: Content::Fifo,
            }),
            other => return Err(self.entry_err(&raw_path, format!("unsupported tar entry type {other:?}"))),
        };
        self.insert(&path, node, &raw_path)
    }

    fn read_stat(&self, entry: &mut tar::Entry<'_, &mut dyn Read>, raw_path: &[u8]) -> Result<Stat, ImportError> {
        let header = entry.header();
        let bad = |what: &str| self.entry_err(raw_path, format!("invalid {what} in tar header"));
        let mut stat = Stat {
            mode: header.mode().map_err(|_| bad("mode"))? & 0o7777,
            uid: u32::try_from(header.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?,
            gid: u32::try_from(header.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?,
            mtime_sec: i64::try_from(header.mtime().map_err(|_| bad("mtime"))?).map_err(|_| bad("mtime"))?,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        };
        let Some(pax) = entry.pax_extensions().map_err(|_| bad("PAX header"))? else {
            return Ok(stat);
        };
        for ext in pax {
            let ext = ext.map_err(|_| bad("PAX record"))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let text = || std::str::from_utf8(value).map_err(|_| bad(key));
            match key {
                "uid" => stat.uid = text()?.parse().map_err(|_| bad("uid"))?,
                "gid" => stat.gid = text()?.parse().map_err(|_| bad("gid"))?,
                "mtime" => (stat.mtime_sec, stat.mtime_nsec) = parse_pax_time(text()?).ok_or_else(|| bad("mtime"))?,
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        // trusted.overlay.* would let an image steer overlayfs
                        // (redirects, metacopy); it never comes from a layer.
                        if !name.starts_with("trusted.overlay.") {
                            stat.xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
                        }
                    }
                }
            }
        }
        Ok(stat)
    }

    fn read_body(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        raw_path: &[u8],
    ) -> Result<FileData, ImportError> {
        let size = entry.size();
        let io_err = |s: &Self, e: std::io::Error| s.entry_err(raw_path, format!("reading file body: {e}"));
        if size <= IN_MEMORY_MAX {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let read = entry.read_to_end(&mut buf);
            if let Err(e) = read {
                return Err(io_err(self, e));
            }
            if buf.len() as u64 != size {
                return Err(self.entry_err(raw_path, "file body shorter than its header says"));
            }
            let data = if buf.len() <= INLINE_MAX {
                FileData::Inline(buf.clone())
            } else {
                let staged = self.stager.add_bytes(&buf)?;
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
            let n = entry.read(&mut chunk).map_err(|e| io_err(self, e))?;
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

    fn note(&mut self, staged: strata_store::StagedObject) {
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

    /// The directory that holds `parents`, creating implicit directories.
    fn parent_dir(&mut self, parents: &[Vec<u8>], raw_path: &[u8]) -> Result<&mut Dir, ImportError> {
        let mut dir = &mut self.tree.root;
        for name in parents {
            let entry = dir.entries.entry(name.clone()).or_insert_with(|| {
                let mut fresh = Dir::new(Stat::default_dir());
                fresh.implicit = true;
                Node::Dir(Box::new(fresh))
            });
            if matches!(entry, Node::Whiteout) {
                // Whited out earlier in this layer: the directory this layer
                // creates hides whatever the lower layers had.
                let mut fresh = Dir::new(Stat::default_dir());
                fresh.implicit = true;
                fresh.opaque = true;
                *entry = Node::Dir(Box::new(fresh));
            }
            match entry {
                Node::Dir(child) => dir = child,
                _ => {
                    return Err(ImportError::Entry {
                        layer: self.layer.to_owned(),
                        path: String::from_utf8_lossy(raw_path).into_owned(),
                        reason: format!(
                            "goes through {:?}, which is not a directory in this layer",
                            String::from_utf8_lossy(name)
                        ),
                    })
                }
            }
        }
        Ok(dir)
    }

    fn insert(&mut self, path: &[Vec<u8>], node: NewNode, raw_path: &[u8]) -> Result<(), ImportError> {
        let Some((name, parents)) = path.split_last() else {
            return match node {
                NewNode::Dir(stat) => {
                    self.tree.root.stat = stat;
                    self.tree.root.implicit = false;
                    Ok(())
                }
                NewNode::Leaf(_) => Err(self.entry_err(raw_path, "the root must be a directory")),
            };
        };
        let stat = match node {
            NewNode::Leaf(leaf) => {
                let id = self.tree.push_leaf(leaf);
                let dir = self.parent_dir(parents, raw_path)?;
                dir.entries.insert(name.clone(), Node::Leaf(id));
                return Ok(());
            }
            NewNode::Dir(stat) => stat,
        };
        let dir = self.parent_dir(parents, raw_path)?;
        match dir.entries.get_mut(name) {
            // A directory named again: new metadata, same children.
            Some(Node::Dir(existing)) => {
                existing.stat = stat;
                existing.implicit = false;
            }
            existing => {
                // Replacing a whiteout of this layer hides the lower directory.
                let opaque = matches!(existing, Some(Node::Whiteout));
                let mut fresh = Dir::new(stat);
                fresh.opaque = opaque;
                dir.entries.insert(name.clone(), Node::Dir(Box::new(fresh)));
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, path: &[Vec<u8>], target: &[u8], raw_path: &[u8]) -> Result<(), ImportError> {
        let parents = &path[..path.len() - 1];
        if target == b".wh..opq" {
            self.parent_dir(parents, raw_path)?.opaque = true;
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err(self.entry_err(raw_path, "whiteout names no entry"));
        }
        let dir = self.parent_dir(parents, raw_path)?;
        match dir.entries.get_mut(target) {
            // Whiteouts only hide lower layers; this layer's own entry stays.
            Some(Node::Dir(existing)) => existing.opaque = true,
            Some(_) => {}
            None => {
                dir.entries.insert(target.to_vec(), Node::Whiteout);
            }
        }
        Ok(())
    }

    fn hard_link(&mut self, path: Vec<Vec<u8>>, target: &[u8], raw_path: &[u8]) -> Result<(), ImportError> {
        let target_path = split_path(target, self.limits.max_depth).map_err(|e| self.entry_err(raw_path, e))?;
        if path.is_empty() || target_path.is_empty() {
            return Err(self.entry_err(raw_path, "hard link to or from the root"));
        }
        match self.tree.lookup(&target_path) {
            Some(Node::Leaf(id)) => {
                let id = *id;
                let (name, parents) = path.split_last().expect("not the root");
                self.parent_dir(parents, raw_path)?
                    .entries
                    .insert(name.clone(), Node::Leaf(id));
                Ok(())
            }
            Some(Node::Dir(_)) => Err(self.entry_err(raw_path, "hard link to a directory")),
            // Not in this layer (yet): it must be in a lower layer, checked at merge.
            _ => {
                self.parent_dir(&path[..path.len() - 1], raw_path)?;
                self.tree.lower_links.push((path, target_path));
                Ok(())
            }
        }
    }
}

/// glibc's `makedev`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// PAX times: `SECONDS[.FRACTION]`, possibly negative.
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if frac.is_empty() {
        return Some((secs, 0));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    if secs < 0 && nanos > 0 {
        Some((secs - 1, 1_000_000_000 - nanos))
    } else {
        Some((secs, nanos))
    }
}

#[cfg(test)]
mod tests;
