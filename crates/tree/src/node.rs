//! Directory trees with hard links: directories own their children; every
//! non-directory is a [`Leaf`] in a table, so hard links share one leaf.

use std::collections::{btree_map, BTreeMap};
use std::ops::{Deref, DerefMut};

use crate::Digest;

/// Metadata shared by every kind of inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Permission bits including setuid, setgid and sticky (no type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Extended attributes, name to value. Never holds `trusted.overlay.*`
    /// from untrusted input; importers drop those.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Stat {
    /// What a directory gets when an archive implies it without naming it:
    /// 0755, owned by root, mtime 0.
    pub fn default_dir() -> Self {
        Stat {
            mode: 0o755,
            ..Stat::default()
        }
    }

    /// Applies a hard link entry's header to the inode it links to, as
    /// containerd's applier does: owner, mtime, xattrs (added to the inode's)
    /// and, unless the inode is a symlink, the mode.
    pub fn apply_link_header(&mut self, header: &Stat, symlink: bool) {
        self.uid = header.uid;
        self.gid = header.gid;
        if !symlink {
            self.mode = header.mode;
        }
        self.mtime_sec = header.mtime_sec;
        self.mtime_nsec = header.mtime_nsec;
        for (name, value) in &header.xattrs {
            self.xattrs.insert(name.clone(), value.clone());
        }
    }
}

/// Where a regular file's bytes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// Small content kept inside the metadata image.
    Inline(Vec<u8>),
    /// Content in the object store.
    Object { digest: Digest, size: u64 },
    /// Content the store lacked when a lazy pull wrote the image, named by
    /// its plain SHA-256 (from a TOC): the metadata redirects to that name,
    /// which the store's aliases or LAZY serve (docs/lazy-pulls.md).
    Missing { sha256: Digest, size: u64 },
}

impl FileData {
    pub fn size(&self) -> u64 {
        match self {
            FileData::Inline(data) => data.len() as u64,
            FileData::Object { size, .. } | FileData::Missing { size, .. } => *size,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    File(FileData),
    Symlink(Vec<u8>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub stat: Stat,
    pub content: Content,
}

/// A validated path as its names, root first.
pub type TreePath = Vec<Vec<u8>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeafId(pub usize);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Box<Dir>),
    Leaf(LeafId),
    /// Only in layer trees: hides this name in lower layers.
    Whiteout,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    pub stat: Stat,
    /// Only in layer trees: hides every lower entry of this directory.
    pub opaque: bool,
    /// Only in layer trees: the layer never named this directory itself (it
    /// only holds entries below it), so its stat must not replace the lower one.
    pub implicit: bool,
    /// Only in layer trees, with `implicit`: the layer removed what was at
    /// this path before an entry below made the directory again, so it
    /// replaces the lower entry whatever its type, with a default stat.
    pub fresh: bool,
    pub entries: Entries,
}

impl Dir {
    /// How deep directories nest below this one (0 with none), found
    /// without recursion.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut pending = vec![(self, 0usize)];
        while let Some((dir, depth)) = pending.pop() {
            deepest = deepest.max(depth);
            for node in dir.entries.values() {
                if let Node::Dir(child) = node {
                    pending.push((child, depth + 1));
                }
            }
        }
        deepest
    }

    pub fn new(stat: Stat) -> Self {
        Self {
            stat,
            opaque: false,
            implicit: false,
            fresh: false,
            entries: Entries::default(),
        }
    }
}

/// A directory's children by name. Dropping it tears the subtree down with
/// an explicit stack, so a chain of any depth cannot overflow the stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries(BTreeMap<Vec<u8>, Node>);

impl Deref for Entries {
    type Target = BTreeMap<Vec<u8>, Node>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Entries {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Entries {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut pending = vec![std::mem::take(&mut self.0)];
        while let Some(map) = pending.last_mut() {
            let Some((_, node)) = map.pop_first() else {
                pending.pop();
                continue;
            };
            if let Node::Dir(mut child) = node {
                let grandchildren = std::mem::take(&mut child.entries.0);
                if !grandchildren.is_empty() {
                    pending.push(grandchildren);
                }
            }
        }
    }
}

impl IntoIterator for Entries {
    type Item = (Vec<u8>, Node);
    type IntoIter = btree_map::IntoIter<Vec<u8>, Node>;
    fn into_iter(mut self) -> Self::IntoIter {
        std::mem::take(&mut self.0).into_iter()
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = (&'a Vec<u8>, &'a Node);
    type IntoIter = btree_map::Iter<'a, Vec<u8>, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a mut Entries {
    type Item = (&'a Vec<u8>, &'a mut Node);
    type IntoIter = btree_map::IterMut<'a, Vec<u8>, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

impl FromIterator<(Vec<u8>, Node)> for Entries {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Node)>>(iter: I) -> Self {
        Entries(iter.into_iter().collect())
    }
}

/// A directory tree plus the leaf table its [`Node::Leaf`]s index.
///
/// A layer tree may carry whiteouts, opaque flags and hard links to lower
/// layers; a merged tree carries none of those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub root: Dir,
    pub leaves: Vec<Leaf>,
    /// Only in layer trees: what the merge checks against the lower tree
    /// as it was before the layer, in the layer's order: hard links to a
    /// lower file, and directories the layer went through.
    pub lower_links: Vec<LowerCheck>,
}

/// A fact about the lower tree that one of the layer's entries relied on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LowerCheck {
    /// A hard link, read in the layer, to a file the layer did not hold at
    /// that point: `leaf` (a stand-in in the layer's table, shared by later
    /// links to it) becomes the lower tree's leaf at `target`. `path` is
    /// where the link was read, for messages.
    Link {
        leaf: LeafId,
        path: TreePath,
        target: TreePath,
    },
    /// Directories an entry went through as parents while the lower ones
    /// showed, which a later entry replaced or removed: placed at `path`,
    /// every directory of `dirs` that is `implicit` and not `fresh` must be
    /// a directory, or missing, in the lower tree.
    Dirs { path: TreePath, dirs: Box<Dir> },
    /// A later hard link entry's header for the lower file behind stand-in
    /// `leaf` (see [`Stat::apply_link_header`]).
    LinkHeader { leaf: LeafId, stat: Stat },
}

/// Counts over the reachable part of a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub dirs: u64,
    pub leaves: u64,
    pub files: u64,
    /// Sum of regular-file sizes, counting each hard-linked inode once.
    pub logical_bytes: u64,
}

impl Tree {
    pub fn new(root_stat: Stat) -> Self {
        Self {
            root: Dir::new(root_stat),
            leaves: Vec::new(),
            lower_links: Vec::new(),
        }
    }

    pub fn push_leaf(&mut self, leaf: Leaf) -> LeafId {
        self.leaves.push(leaf);
        LeafId(self.leaves.len() - 1)
    }

    pub fn leaf(&self, id: LeafId) -> &Leaf {
        &self.leaves[id.0]
    }

    pub fn leaf_mut(&mut self, id: LeafId) -> &mut Leaf {
        &mut self.leaves[id.0]
    }

    /// Looks up a node by path components.
    pub fn lookup(&self, path: &[Vec<u8>]) -> Option<&Node> {
        let (last, parents) = path.split_last()?;
        let mut dir = &self.root;
        for name in parents {
            match dir.entries.get(name)? {
                Node::Dir(child) => dir = child,
                _ => return None,
            }
        }
        dir.entries.get(last)
    }

    /// Visits every reachable leaf id, in sorted path order, once per link.
    pub fn for_each_leaf(&self, mut visit: impl FnMut(LeafId)) {
        let mut stack = vec![self.root.entries.values()];
        while let Some(iter) = stack.last_mut() {
            match iter.next() {
                None => {
                    stack.pop();
                }
                Some(Node::Dir(child)) => stack.push(child.entries.values()),
                Some(Node::Leaf(id)) => visit(*id),
                Some(Node::Whiteout) => {}
            }
        }
    }

    /// Object digests of every reachable file, sorted and deduplicated.
    pub fn object_digests(&self) -> Vec<Digest> {
        let mut out = Vec::new();
        self.for_each_leaf(|id| {
            if let Content::File(FileData::Object { digest, .. }) = &self.leaf(id).content {
                out.push(*digest);
            }
        });
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn stats(&self) -> TreeStats {
        let mut seen = vec![false; self.leaves.len()];
        let mut stats = TreeStats::default();
        let mut stack = vec![&self.root];
        while let Some(dir) = stack.pop() {
            stats.dirs += 1;
            for node in dir.entries.values() {
                match node {
                    Node::Dir(child) => stack.push(child),
                    Node::Leaf(id) => {
                        if std::mem::replace(&mut seen[id.0], true) {
                            continue;
                        }
                        stats.leaves += 1;
                        if let Content::File(data) = &self.leaf(*id).content {
                            stats.files += 1;
                            stats.logical_bytes += data.size();
                        }
                    }
                    Node::Whiteout => {}
                }
            }
        }
        stats
    }

    /// Drops unreachable leaves and renumbers the rest in path order, so two
    /// equal trees have equal tables whatever their history. Meant for merged
    /// trees: in a layer tree it would forget unreachable lower links.
    pub fn compact(&mut self) {
        let mut remap: Vec<Option<usize>> = vec![None; self.leaves.len()];
        let mut order = Vec::new();
        self.for_each_leaf(|id| {
            if remap[id.0].is_none() {
                remap[id.0] = Some(order.len());
                order.push(id.0);
            }
        });
        let mut old: Vec<Option<Leaf>> = std::mem::take(&mut self.leaves).into_iter().map(Some).collect();
        self.leaves = order.iter().filter_map(|&i| old[i].take()).collect();
        let mut stack = vec![&mut self.root];
        while let Some(dir) = stack.pop() {
            for node in dir.entries.values_mut() {
                match node {
                    Node::Dir(child) => stack.push(child),
                    Node::Leaf(id) => {
                        if let Some(new) = remap[id.0] {
                            *id = LeafId(new);
                        }
                    }
                    Node::Whiteout => {}
                }
            }
        }
        self.lower_links.retain_mut(|check| match check {
            LowerCheck::Link { leaf, .. } | LowerCheck::LinkHeader { leaf, .. } => match remap[leaf.0] {
                Some(new) => {
                    *leaf = LeafId(new);
                    true
                }
                None => false,
            },
            LowerCheck::Dirs { .. } => true,
        });
    }
}
