//! Directory trees with hard links: directories own their children; every
//! non-directory is a [`Leaf`] in a table, so hard links share one leaf.

use std::collections::BTreeMap;

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
}

/// Where a regular file's bytes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// Small content kept inside the metadata image.
    Inline(Vec<u8>),
    /// Content in the object store.
    Object { digest: Digest, size: u64 },
}

impl FileData {
    pub fn size(&self) -> u64 {
        match self {
            FileData::Inline(data) => data.len() as u64,
            FileData::Object { size, .. } => *size,
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
    pub entries: BTreeMap<Vec<u8>, Node>,
}

impl Dir {
    pub fn new(stat: Stat) -> Self {
        Self {
            stat,
            opaque: false,
            implicit: false,
            entries: BTreeMap::new(),
        }
    }
}

/// A directory tree plus the leaf table its [`Node::Leaf`]s index.
///
/// A layer tree may carry whiteouts, opaque flags and unresolved hard links
/// to lower layers; a merged tree carries none of those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub root: Dir,
    pub leaves: Vec<Leaf>,
    /// Hard links whose target is not in this layer: (link path, target path).
    /// They are resolved against the lower tree by the merge.
    pub lower_links: Vec<(TreePath, TreePath)>,
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
        fn walk(dir: &Dir, visit: &mut dyn FnMut(LeafId)) {
            for node in dir.entries.values() {
                match node {
                    Node::Dir(child) => walk(child, visit),
                    Node::Leaf(id) => visit(*id),
                    Node::Whiteout => {}
                }
            }
        }
        walk(&self.root, &mut visit);
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
        fn count_dirs(dir: &Dir) -> u64 {
            1 + dir
                .entries
                .values()
                .map(|node| match node {
                    Node::Dir(child) => count_dirs(child),
                    _ => 0,
                })
                .sum::<u64>()
        }
        let mut seen = vec![false; self.leaves.len()];
        let mut stats = TreeStats {
            dirs: count_dirs(&self.root),
            ..TreeStats::default()
        };
        self.for_each_leaf(|id| {
            if std::mem::replace(&mut seen[id.0], true) {
                return;
            }
            stats.leaves += 1;
            if let Content::File(data) = &self.leaf(id).content {
                stats.files += 1;
                stats.logical_bytes += data.size();
            }
        });
        stats
    }

    /// Drops unreachable leaves and renumbers the rest in path order, so two
    /// equal trees have equal tables whatever their history.
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
        self.leaves = order.iter().map(|&i| old[i].take().expect("each leaf once")).collect();
        fn renumber(dir: &mut Dir, remap: &[Option<usize>]) {
            for node in dir.entries.values_mut() {
                match node {
                    Node::Dir(child) => renumber(child, remap),
                    Node::Leaf(id) => *id = LeafId(remap[id.0].expect("reachable")),
                    Node::Whiteout => {}
                }
            }
        }
        renumber(&mut self.root, &remap);
    }
}
