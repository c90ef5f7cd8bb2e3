//! A layer's tar against its verified TOC, when the whole blob is read
//! (pure). A partial pull builds the layer from the TOC and a whole pull
//! from the tar; a layer whose two descriptions disagree would give two
//! images, so a whole pull refuses it (`docs/partial-pulls.md`, "Trust").
//!
//! The rule, path by path (a path may appear several times; its tar entries
//! and its TOC entries are paired in order):
//!
//! - every tar entry has a TOC entry and every TOC entry a tar entry;
//! - the kinds agree (directory, regular file, symlink, hard link, device,
//!   fifo); a regular file's size and SHA-256, a symlink's target, a hard
//!   link's (normalised) target and a device's numbers are equal;
//! - mode (permissions, setuid, setgid, sticky), uid, gid and the xattrs
//!   are equal: the tree a partial pull makes takes them from the TOC;
//! - the entries come in the same order: a whiteout removes only what
//!   came before it, and a hard link takes its target as it is then.
//!
//! Not compared: mtimes (eStargz records them rounded to the second, so a
//! faithful TOC may differ from its tar by a fraction of one) and owner
//! names (strata keeps numeric ids). In an eStargz layer the format's own
//! root entries (`stargz.index.json`, the landmarks) are left out on both
//! sides: both pulls hide them.

use std::collections::{BTreeMap, HashMap};

use super::estargz::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME};
use super::{EntryKind, Sha256Digest, Toc, TocEntry, TocFormat};

/// One tar entry as the comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Names joined by `/`, as [`TocEntry::path`]; the root is empty.
    pub path: Vec<u8>,
    pub kind: TarKind,
    /// Permission bits, setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarKind {
    Dir,
    /// The body's length and SHA-256, as read.
    File {
        size: u64,
        sha256: Sha256Digest,
    },
    Symlink(Vec<u8>),
    /// The target normalised like a path.
    Hardlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// Where and how the tar and the TOC disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contradiction {
    pub path: String,
    pub detail: String,
}

/// eStargz's own entries at the root, which both pulls hide.
fn is_format_entry(format: TocFormat, path: &[u8]) -> bool {
    format == TocFormat::Estargz
        && [TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK]
            .iter()
            .any(|name| name.as_bytes() == path)
}

/// Checks the tar's entries, in tar order, against `toc`.
pub fn crosscheck(toc: &Toc, tar: &[TarEntry]) -> Result<(), Contradiction> {
    let mut by_path: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (index, entry) in toc.entries.iter().enumerate() {
        if !is_format_entry(toc.format, entry.path.as_bytes()) {
            by_path.entry(entry.path.as_bytes()).or_default().push(index);
        }
    }
    let mut next: HashMap<&[u8], usize> = HashMap::new();
    let mut paired = vec![false; toc.entries.len()];
    // The TOC entry the previous tar entry paired with.
    let mut previous: Option<usize> = None;
    for entry in tar.iter().filter(|e| !is_format_entry(toc.format, &e.path)) {
        let contradiction = |detail: String| Contradiction {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            detail,
        };
        let Some(indices) = by_path.get(&entry.path[..]) else {
            return Err(contradiction(format!(
                "the tar has a {} the TOC does not list",
                kind_of_tar(&entry.kind)
            )));
        };
        let seen = next.entry(&entry.path[..]).or_insert(0);
        let Some(&index) = indices.get(*seen) else {
            return Err(contradiction(format!(
                "the tar has more entries for it than the TOC's {}",
                indices.len()
            )));
        };
        *seen += 1;
        paired[index] = true;
        if let Some(detail) = compare(&toc.entries[index], entry) {
            return Err(contradiction(detail));
        }
        if let Some(before) = previous.filter(|&before| before > index) {
            return Err(contradiction(format!(
                "the tar has it after {:?}, the TOC before",
                toc.entries[before].path
            )));
        }
        previous = Some(index);
    }
    match toc
        .entries
        .iter()
        .zip(&paired)
        .find(|(e, paired)| !**paired && !is_format_entry(toc.format, e.path.as_bytes()))
    {
        Some((entry, _)) => Err(Contradiction {
            path: entry.path.clone(),
            detail: format!("the TOC lists a {} the tar does not have", kind_of_toc(&entry.kind)),
        }),
        None => Ok(()),
    }
}

/// How the TOC's entry and the tar's differ, if they do.
fn compare(toc: &TocEntry, tar: &TarEntry) -> Option<String> {
    let kinds = || {
        format!(
            "the TOC has a {}, the tar a {}",
            kind_of_toc(&toc.kind),
            kind_of_tar(&tar.kind)
        )
    };
    let detail = match (&toc.kind, &tar.kind) {
        (EntryKind::Dir, TarKind::Dir) | (EntryKind::Fifo, TarKind::Fifo) => None,
        (EntryKind::File(content), TarKind::File { size, sha256 }) => {
            if content.size != *size {
                Some(format!("the TOC says {} bytes, the tar has {size}", content.size))
            } else if content.digest != *sha256 {
                Some(format!(
                    "the tar's bytes hash to {sha256}, the TOC says {}",
                    content.digest
                ))
            } else {
                None
            }
        }
        (EntryKind::Symlink { target }, TarKind::Symlink(tar_target))
        | (EntryKind::Hardlink { target }, TarKind::Hardlink(tar_target)) => (target.as_bytes() != &tar_target[..])
            .then(|| {
                format!(
                    "{} target: the TOC says {target:?}, the tar {:?}",
                    kind_of_toc(&toc.kind),
                    String::from_utf8_lossy(tar_target)
                )
            }),
        (EntryKind::CharDevice { major, minor }, TarKind::CharDevice { major: a, minor: b })
        | (EntryKind::BlockDevice { major, minor }, TarKind::BlockDevice { major: a, minor: b }) => {
            ((major, minor) != (a, b)).then(|| format!("device: the TOC says {major}:{minor}, the tar {a}:{b}"))
        }
        _ => Some(kinds()),
    };
    if detail.is_some() {
        return detail;
    }
    if toc.mode != tar.mode {
        return Some(format!("mode: the TOC says {:o}, the tar {:o}", toc.mode, tar.mode));
    }
    if (toc.uid, toc.gid) != (tar.uid, tar.gid) {
        return Some(format!(
            "owner: the TOC says {}:{}, the tar {}:{}",
            toc.uid, toc.gid, tar.uid, tar.gid
        ));
    }
    if toc.xattrs != tar.xattrs {
        let differs = toc
            .xattrs
            .iter()
            .chain(&tar.xattrs)
            .map(|(name, _)| name)
            .find(|name| toc.xattrs.get(*name) != tar.xattrs.get(*name))
            .expect("the maps differ");
        let shown = |value: Option<&Vec<u8>>| match value {
            Some(v) => format!("{} bytes", v.len()),
            None => "none".to_owned(),
        };
        return Some(format!(
            "xattr {}: the TOC has {}, the tar {}",
            String::from_utf8_lossy(differs),
            shown(toc.xattrs.get(differs)),
            shown(tar.xattrs.get(differs))
        ));
    }
    None
}

fn kind_of_toc(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "directory",
        EntryKind::File(_) => "regular file",
        EntryKind::Symlink { .. } => "symlink",
        EntryKind::Hardlink { .. } => "hard link",
        EntryKind::CharDevice { .. } => "character device",
        EntryKind::BlockDevice { .. } => "block device",
        EntryKind::Fifo => "fifo",
    }
}

fn kind_of_tar(kind: &TarKind) -> &'static str {
    match kind {
        TarKind::Dir => "directory",
        TarKind::File { .. } => "regular file",
        TarKind::Symlink(_) => "symlink",
        TarKind::Hardlink(_) => "hard link",
        TarKind::CharDevice { .. } => "character device",
        TarKind::BlockDevice { .. } => "block device",
        TarKind::Fifo => "fifo",
    }
}

#[cfg(test)]
mod tests;
