//! A TOC's entries -> the layer tree, through the very builder a tar import
//! uses ([`LayerBuilder`]), so whiteouts, opaque markers, hard links, the
//! dropped and checked xattrs and eStargz's own files behave exactly as in a
//! full pull. Each entry becomes the tar header it stands for; a regular
//! file's body is the content fetched (or found) for its SHA-256.

use std::collections::HashMap;

use strata_store::{ObjectStager, StagedObject};
use strata_tree::FileData;

use super::fetch::Got;
use super::PartialError;
use crate::layer::{Body, EntryBudget, Header, LayerBuilder};
use crate::toc::{EntryKind, Sha256Digest, Toc, TocEntry, TocFormat};
use crate::{LayerImport, Limits, Progress};

/// Builds the layer's tree from `toc`; every non-empty file's content is in
/// `contents`.
pub(crate) fn build(
    toc: &Toc,
    layer: &str,
    contents: &HashMap<Sha256Digest, Got>,
    stager: ObjectStager,
    limits: &Limits,
    progress: &Progress,
    budget: &EntryBudget,
) -> Result<LayerImport, PartialError> {
    let mut builder = LayerBuilder::new(stager, layer, limits, progress);
    builder.hide_estargz_metadata = toc.format == TocFormat::Estargz;
    let built = add_all(&mut builder, toc, contents, budget);
    if let Err(e) = built {
        // Taken before the entry that failed too (take counts a refusal).
        budget.release(builder.entries());
        return Err(e);
    }
    Ok(builder.finish())
}

fn add_all(
    builder: &mut LayerBuilder<'_>,
    toc: &Toc,
    contents: &HashMap<Sha256Digest, Got>,
    budget: &EntryBudget,
) -> Result<(), PartialError> {
    let mut noted = std::collections::HashSet::new();
    for entry in &toc.entries {
        builder
            .count_entry(budget)
            .map_err(|e| PartialError::Tree(Box::new(e)))?;
        let header = header(entry);
        let body = match &entry.kind {
            EntryKind::File(content) if content.size == 0 => Body::Known(FileData::Inline(Vec::new())),
            EntryKind::File(content) => {
                let got = contents.get(&content.digest).ok_or_else(|| PartialError::Missing {
                    path: entry.path.clone(),
                    digest: content.digest,
                })?;
                if let Some(mut staged) = got.staged {
                    // A content several entries share is new only once.
                    staged.new &= noted.insert(content.digest);
                    builder.note(staged);
                }
                Body::Known(got.data.clone())
            }
            _ => Body::Known(FileData::Inline(Vec::new())),
        };
        builder
            .add_entry(header, body)
            .map_err(|e| PartialError::Tree(Box::new(e)))?;
    }
    Ok(())
}

/// A content the store already had, as the builder notes it.
pub(crate) fn had(object: strata_store::ObjectRef) -> Got {
    Got {
        data: FileData::Object {
            digest: object.digest,
            size: object.size,
        },
        staged: Some(StagedObject {
            digest: object.digest,
            size: object.size,
            new: false,
        }),
    }
}

/// The tar header `entry` stands for.
fn header(entry: &TocEntry) -> Header {
    let (typeflag, link, size, (major, minor)) = match &entry.kind {
        EntryKind::Dir => (b'5', Vec::new(), 0, (0, 0)),
        EntryKind::File(content) => (b'0', Vec::new(), content.size, (0, 0)),
        EntryKind::Symlink { target } => (b'2', target.as_bytes().to_vec(), 0, (0, 0)),
        EntryKind::Hardlink { target } => (b'1', target.as_bytes().to_vec(), 0, (0, 0)),
        EntryKind::CharDevice { major, minor } => (b'3', Vec::new(), 0, (*major, *minor)),
        EntryKind::BlockDevice { major, minor } => (b'4', Vec::new(), 0, (*major, *minor)),
        EntryKind::Fifo => (b'6', Vec::new(), 0, (0, 0)),
    };
    Header {
        typeflag,
        path: entry.path.as_bytes().to_vec(),
        link,
        mode: i64::from(entry.mode),
        uid: i64::from(entry.uid),
        gid: i64::from(entry.gid),
        mtime: (entry.mtime_sec, entry.mtime_nsec),
        atime: None,
        ctime: None,
        dev_major: i64::from(major),
        dev_minor: i64::from(minor),
        size,
        xattrs: entry.xattrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}
