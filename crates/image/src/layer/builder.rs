//! The layer tree as a layer's entries build it, in tar order. Pure: no I/O,
//! only the tree.
//!
//! Each entry takes effect when it is read, as in containerd's naive applier
//! (`archive.Apply`), which defines what an image means:
//! - a missing parent is made as an implicit directory (0755, root, mtime
//!   0); a parent that is a non-directory of this layer is refused, and so
//!   is one over a lower non-directory, even if a later entry replaces or
//!   removes it (`mkparent` fails with ENOTDIR; the merge checks those);
//! - an entry replaces what is at its path (this layer's or a lower one's),
//!   except that a directory named again keeps its children;
//! - `.wh.NAME` removes `NAME`, this layer's own earlier entry included
//!   (`os.RemoveAll`; the overlay applier would fail on such a layer);
//! - `.wh..wh..opq` removes, at that point, everything below its directory
//!   that this layer has not unpacked: lower entries, and this layer's
//!   implicit directories with all they hold. Later entries stay;
//! - a hard link removes what is at its path, then links to its target as
//!   the tree is at that moment: this layer's leaf, or else the lower file
//!   (a [`LowerCheck::Link`] stand-in that later links share, resolved by
//!   the merge). A target this layer removed, replaced by a directory or left
//!   below a non-directory is missing, as it is for `link(2)`.
//!
//! A hard link entry's header (owner, mode, mtime, xattrs) goes to the inode
//! it links to, as in containerd ([`TreeBuilder::hard_link_with_stat`]).
//!
//! Where strata differs on purpose: a layer that
//! removes a directory it named earlier is accepted (containerd's mtime pass
//! at the end of the layer fails with ENOENT); names through a symlink are
//! refused (containerd follows the symlink inside the root).

use std::collections::{HashMap, HashSet};

use strata_tree::{split_path, Content, Dir, Leaf, LeafId, LowerCheck, Node, Stat, Tree, TreePath};

use crate::ImportError;

/// What one tar entry adds to the layer tree.
pub(super) enum NewNode {
    Dir(Stat),
    Leaf(Leaf),
}

/// Builds one layer's tree from its entries.
pub(super) struct TreeBuilder<'a> {
    layer: &'a str,
    max_depth: usize,
    pub(super) tree: Tree,
    /// Paths an entry of this layer unpacked whose node was removed since:
    /// an opaque marker keeps a directory made again at such a path, like
    /// containerd's set of unpacked paths does. Paths are interned as ids.
    ghosts: HashSet<usize>,
    path_ids: HashMap<(usize, Vec<u8>), usize>,
    /// Nodes the opaque markers of this layer have visited so far.
    opaque_work: u64,
    /// Leaves that stand for a lower file.
    stand_ins: HashSet<LeafId>,
}

/// Nodes all opaque markers of one layer may visit: each marker walks what
/// the layer holds below its directory, so many markers after many entries
/// would cost their product.
const OPAQUE_WORK_MAX: u64 = 100_000_000;

/// The id of the root in `path_ids`.
const ROOT_ID: usize = 0;

impl<'a> TreeBuilder<'a> {
    pub(super) fn new(layer: &'a str, max_depth: usize) -> Self {
        let mut tree = Tree::new(Stat::default_dir());
        tree.root.implicit = true;
        TreeBuilder {
            layer,
            max_depth,
            tree,
            ghosts: HashSet::new(),
            path_ids: HashMap::new(),
            opaque_work: 0,
            stand_ins: HashSet::new(),
        }
    }

    fn entry_err(&self, path: &[u8], reason: impl ToString) -> ImportError {
        ImportError::Entry {
            layer: self.layer.to_owned(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.to_string(),
        }
    }

    /// The directory that holds `parents`, making missing ones implicit.
    fn parent_dir(&mut self, parents: &[Vec<u8>], raw_path: &[u8]) -> Result<&mut Dir, ImportError> {
        parent_dir(&mut self.tree.root, parents).map_err(|name| ImportError::Entry {
            layer: self.layer.to_owned(),
            path: String::from_utf8_lossy(raw_path).into_owned(),
            reason: format!(
                "goes through {:?}, which is not a directory in this layer",
                String::from_utf8_lossy(name)
            ),
        })
    }

    pub(super) fn insert(&mut self, path: &[Vec<u8>], node: NewNode, raw_path: &[u8]) -> Result<(), ImportError> {
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
                return self.put_leaf(path, id, raw_path);
            }
            NewNode::Dir(stat) => stat,
        };
        let dir = self.parent_dir(parents, raw_path)?;
        let hidden = dir.opaque;
        match dir.entries.get_mut(name) {
            // A directory named again: new metadata, same children.
            Some(Node::Dir(existing)) => {
                existing.stat = stat;
                if std::mem::replace(&mut existing.implicit, false) && !existing.fresh {
                    // It went through the lower entry, which had to be a directory.
                    let mut went_through = Dir::new(Stat::default_dir());
                    went_through.implicit = true;
                    self.tree.lower_links.push(LowerCheck::Dirs {
                        path: path.to_vec(),
                        dirs: Box::new(went_through),
                    });
                }
            }
            existing => {
                // What this layer had here was removed with whatever lower
                // entry it had replaced, or the parent hides the lower
                // entries: no lower entry shows through.
                let opaque = existing.is_some() || hidden;
                let mut fresh = Dir::new(stat);
                fresh.opaque = opaque;
                dir.entries.insert(name.clone(), Node::Dir(Box::new(fresh)));
            }
        }
        Ok(())
    }

    /// Puts leaf `id` at `path`, removing what was there.
    fn put_leaf(&mut self, path: &[Vec<u8>], id: LeafId, raw_path: &[u8]) -> Result<(), ImportError> {
        let (name, parents) = path.split_last().expect("callers pass a non-root path");
        let dir = self.parent_dir(parents, raw_path)?;
        if let Some(old) = dir.entries.insert(name.clone(), Node::Leaf(id)) {
            self.forget(path, old);
        }
        Ok(())
    }

    pub(super) fn whiteout(&mut self, path: &[Vec<u8>], target: &[u8], raw_path: &[u8]) -> Result<(), ImportError> {
        let parents = &path[..path.len() - 1];
        if target == b".wh..opq" {
            self.parent_dir(parents, raw_path)?;
            self.make_opaque(parents);
            if self.opaque_work > OPAQUE_WORK_MAX {
                return Err(self.entry_err(
                    raw_path,
                    format!("opaque markers of this layer walk over {OPAQUE_WORK_MAX} entries"),
                ));
            }
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err(self.entry_err(raw_path, "whiteout names no entry"));
        }
        let dir = self.parent_dir(parents, raw_path)?;
        if let Some(old) = dir.entries.insert(target.to_vec(), Node::Whiteout) {
            let mut removed = parents.to_vec();
            removed.push(target.to_vec());
            self.forget(&removed, old);
        }
        Ok(())
    }

    /// A hard link entry whose header's metadata is not applied: the target
    /// keeps its own.
    #[cfg(test)]
    pub(super) fn hard_link(&mut self, path: Vec<Vec<u8>>, target: &[u8], raw_path: &[u8]) -> Result<(), ImportError> {
        self.hard_link_with_stat(path, target, None, raw_path)
    }

    /// A hard link entry; `header`, if given, is applied to the inode it
    /// links to, as containerd does (see [`Stat::apply_link_header`]).
    pub(super) fn hard_link_with_stat(
        &mut self,
        path: Vec<Vec<u8>>,
        target: &[u8],
        header: Option<Stat>,
        raw_path: &[u8],
    ) -> Result<(), ImportError> {
        let target_path = split_path(target, self.max_depth).map_err(|e| self.entry_err(raw_path, e))?;
        if path.is_empty() || target_path.is_empty() {
            return Err(self.entry_err(raw_path, "hard link to or from the root"));
        }
        self.parent_dir(&path[..path.len() - 1], raw_path)?;
        let missing = || self.entry_err(raw_path, "hard link target exists in no earlier entry or layer");
        // The link's own path is emptied first, so a target at or below it is gone.
        if target_path.starts_with(&path) {
            return Err(missing());
        }
        let id = match find_target(&self.tree.root, &target_path) {
            Target::Layer(id) => id,
            Target::Lower => {
                // A stand-in: its content is never used, the merge replaces it.
                let id = self.tree.push_leaf(Leaf {
                    stat: Stat::default(),
                    content: Content::Fifo,
                });
                self.stand_ins.insert(id);
                self.tree.lower_links.push(LowerCheck::Link {
                    leaf: id,
                    path: path.clone(),
                    target: target_path,
                });
                id
            }
            Target::Missing => return Err(missing()),
            Target::Dir => return Err(self.entry_err(raw_path, "hard link to a directory")),
            Target::NotDir => return Err(self.entry_err(raw_path, "hard link target goes through a non-directory")),
        };
        if let Some(header) = header {
            if self.stand_ins.contains(&id) {
                self.tree
                    .lower_links
                    .push(LowerCheck::LinkHeader { leaf: id, stat: header });
            } else {
                let leaf = self.tree.leaf_mut(id);
                let symlink = matches!(leaf.content, Content::Symlink(_));
                leaf.stat.apply_link_header(&header, symlink);
            }
        }
        self.put_leaf(&path, id, raw_path)
    }

    /// Applies `.wh..wh..opq` in the directory at `dir_path`: drops lower
    /// entries below it and every implicit directory this layer did not
    /// unpack (with what it holds); keeps leaves and named directories.
    fn make_opaque(&mut self, dir_path: &[Vec<u8>]) {
        let start_id = self.intern_path(dir_path);
        let mut removed: Vec<(usize, TreePath, Node)> = Vec::new();
        let Ok(start) = parent_dir(&mut self.tree.root, dir_path) else {
            return;
        };
        let (ghosts, path_ids) = (&self.ghosts, &mut self.path_ids);
        let mut path = dir_path.to_vec();
        // (directory, its path id, length of its parent's path, its name)
        let mut stack: Vec<(&mut Dir, usize, usize, Option<Vec<u8>>)> = vec![(start, start_id, path.len(), None)];
        while let Some((dir, id, parent_len, name)) = stack.pop() {
            path.truncate(parent_len);
            path.extend(name);
            dir.opaque = true;
            self.opaque_work += dir.entries.len() as u64 + 1;
            let drop_names: Vec<Vec<u8>> = dir
                .entries
                .iter()
                .filter(|(name, node)| match node {
                    Node::Leaf(_) => false,
                    Node::Whiteout => true,
                    Node::Dir(child) => {
                        child.implicit && !path_ids.get(&(id, name.to_vec())).is_some_and(|c| ghosts.contains(c))
                    }
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in drop_names {
                if let Some(node) = dir.entries.remove(&name) {
                    let mut at = path.clone();
                    at.push(name.clone());
                    removed.push((intern(path_ids, id, &name), at, node));
                }
            }
            for (name, node) in dir.entries.iter_mut() {
                if let Node::Dir(child) = node {
                    stack.push((&mut **child, intern(path_ids, id, name), path.len(), Some(name.clone())));
                }
            }
        }
        for (id, at, node) in removed {
            self.forget_at(id, &at, node);
        }
    }

    /// Records what `node`, just removed from `path`, leaves behind: the
    /// paths an entry unpacked in it, and the lower directories it went through.
    fn forget(&mut self, path: &[Vec<u8>], node: Node) {
        if matches!(node, Node::Whiteout) {
            return;
        }
        let id = self.intern_path(path);
        self.forget_at(id, path, node);
    }

    fn forget_at(&mut self, id: usize, path: &[Vec<u8>], node: Node) {
        let mut stack = vec![(id, &node)];
        while let Some((id, node)) = stack.pop() {
            match node {
                Node::Whiteout => {}
                Node::Leaf(_) => {
                    self.ghosts.insert(id);
                }
                Node::Dir(dir) => {
                    if !dir.implicit {
                        self.ghosts.insert(id);
                    }
                    for (name, child) in dir.entries.iter() {
                        stack.push((intern(&mut self.path_ids, id, name), child));
                    }
                }
            }
        }
        if let Node::Dir(dir) = node {
            if let Some(dirs) = went_through(dir) {
                self.tree.lower_links.push(LowerCheck::Dirs {
                    path: path.to_vec(),
                    dirs,
                });
            }
        }
    }

    fn intern_path(&mut self, path: &[Vec<u8>]) -> usize {
        path.iter()
            .fold(ROOT_ID, |id, name| intern(&mut self.path_ids, id, name))
    }
}

/// The id of `name` in the directory with id `parent`.
fn intern(path_ids: &mut HashMap<(usize, Vec<u8>), usize>, parent: usize, name: &[u8]) -> usize {
    let next = path_ids.len() + 1;
    *path_ids.entry((parent, name.to_vec())).or_insert(next)
}

/// The directory that holds `parents` below `root`, making missing ones
/// implicit; on failure, the name that is not a directory.
fn parent_dir<'d, 'p>(root: &'d mut Dir, parents: &'p [Vec<u8>]) -> Result<&'d mut Dir, &'p [u8]> {
    let mut dir = root;
    for name in parents {
        // Below a directory that hides the lower entries, a new directory
        // hides them too, and replaces whatever the lower layer had.
        let hidden = dir.opaque;
        let entry = dir.entries.entry(name.clone()).or_insert_with(|| {
            let mut fresh = Dir::new(Stat::default_dir());
            fresh.implicit = true;
            fresh.fresh = hidden;
            fresh.opaque = hidden;
            Node::Dir(Box::new(fresh))
        });
        if matches!(entry, Node::Whiteout) {
            // Removed earlier in this layer: made again empty, with a
            // default stat, over whatever the lower layers had.
            let mut fresh = Dir::new(Stat::default_dir());
            fresh.implicit = true;
            fresh.fresh = true;
            fresh.opaque = true;
            *entry = Node::Dir(Box::new(fresh));
        }
        match entry {
            Node::Dir(child) => dir = child,
            _ => return Err(name),
        }
    }
    Ok(dir)
}

/// The directories of a removed subtree that went through lower ones
/// (implicit, not fresh), with the directories above them, or None.
fn went_through(removed: Box<Dir>) -> Option<Box<Dir>> {
    let needs_dir = |dir: &Dir| dir.implicit && !dir.fresh;
    if removed.fresh {
        return None;
    }
    let mut removed = removed;
    let mut any = needs_dir(&removed);
    let mut stack = vec![&mut *removed];
    while let Some(dir) = stack.pop() {
        dir.entries
            .retain(|_, node| matches!(node, Node::Dir(child) if !child.fresh));
        for node in dir.entries.values_mut() {
            if let Node::Dir(child) = node {
                any |= needs_dir(child);
                stack.push(child);
            }
        }
    }
    any.then_some(removed)
}

/// Where a hard link's target is, as the layer stands when the link is read.
enum Target {
    Layer(LeafId),
    Lower,
    Missing,
    Dir,
    NotDir,
}

fn find_target(root: &Dir, path: &[Vec<u8>]) -> Target {
    let mut dir = root;
    for (i, name) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match dir.entries.get(name) {
            None if dir.opaque => return Target::Missing,
            None => return Target::Lower,
            Some(Node::Whiteout) => return Target::Missing,
            Some(Node::Leaf(id)) if last => return Target::Layer(*id),
            Some(Node::Leaf(_)) => return Target::NotDir,
            Some(Node::Dir(_)) if last => return Target::Dir,
            Some(Node::Dir(child)) => dir = child,
        }
    }
    Target::Dir
}

#[cfg(test)]
mod tests {
    use strata_tree::{merge_layer, FileData};

    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/')
            .filter(|n| !n.is_empty())
            .map(|n| n.as_bytes().to_vec())
            .collect()
    }

    enum Op<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
        Whiteout(&'a str),
    }

    /// Builds a layer from `ops`; the first failing op's error.
    fn layer(ops: &[Op]) -> Result<Tree, ImportError> {
        let mut b = TreeBuilder::new("test", 64);
        for op in ops {
            match *op {
                Op::File(path, body) => {
                    let leaf = Leaf {
                        stat: Stat::default(),
                        content: Content::File(FileData::Inline(body.to_vec())),
                    };
                    b.insert(&p(path), NewNode::Leaf(leaf), path.as_bytes())?
                }
                Op::Dir(path) => b.insert(&p(path), NewNode::Dir(Stat::default_dir()), path.as_bytes())?,
                Op::Link(path, target) => b.hard_link(p(path), target.as_bytes(), path.as_bytes())?,
                Op::Whiteout(path) => {
                    let names = p(path);
                    let (name, _) = names.split_last().unwrap();
                    b.whiteout(&names, &name[4..], path.as_bytes())?
                }
            }
        }
        Ok(b.tree)
    }

    /// Applies the layers in order; the merged tree or the first error.
    fn apply(layers: &[&[Op]]) -> Result<Tree, String> {
        let mut tree = Tree::new(Stat::default_dir());
        for ops in layers {
            let built = layer(ops).map_err(|e| e.to_string())?;
            merge_layer(&mut tree, built).map_err(|e| e.to_string())?;
        }
        tree.compact();
        Ok(tree)
    }

    fn body(tree: &Tree, path: &str) -> Option<Vec<u8>> {
        match tree.lookup(&p(path))? {
            Node::Leaf(id) => match &tree.leaf(*id).content {
                Content::File(FileData::Inline(b)) => Some(b.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    const LOWER: &[Op] = &[Op::File("a", b"lower a"), Op::Dir("usr/bin")];

    /// Issue 17's worst case: the whiteout comes first, so the link finds
    /// nothing (containerd: ENOENT), whatever comes after it.
    #[test]
    fn link_to_a_file_whited_out_before_it_is_refused() {
        let upper = [
            Op::Whiteout(".wh.a"),
            Op::Link("usr/bin/ls", "a"),
            Op::File("usr/bin/ls", b"real ls"),
        ];
        let err = apply(&[LOWER, &upper]).unwrap_err();
        assert!(err.contains("exists in no earlier entry"), "{err}");
    }

    #[test]
    fn later_entry_replaces_a_link_to_a_lower_file() {
        let upper = [Op::Link("usr/bin/ls", "a"), Op::File("usr/bin/ls", b"real ls")];
        let tree = apply(&[LOWER, &upper]).unwrap();
        assert_eq!(body(&tree, "usr/bin/ls").unwrap(), b"real ls");
        assert_eq!(body(&tree, "a").unwrap(), b"lower a");
        // Replaced or not, the link was made: its target had to exist.
        let missing = [Op::Link("usr/bin/ls", "nothing"), Op::File("usr/bin/ls", b"x")];
        assert!(apply(&[LOWER, &missing]).is_err());
    }

    #[test]
    fn later_entry_turns_the_links_parent_into_a_file_or_a_directory() {
        let to_file = [Op::Link("d/l", "a"), Op::File("d", b"file d")];
        let tree = apply(&[LOWER, &to_file]).unwrap();
        assert_eq!(body(&tree, "d").unwrap(), b"file d");
        let to_dir = [Op::Link("d/l", "a"), Op::Dir("d")];
        let tree = apply(&[LOWER, &to_dir]).unwrap();
        assert_eq!(body(&tree, "d/l").unwrap(), b"lower a");
    }

    #[test]
    fn link_to_a_link_of_the_layer_to_a_lower_file() {
        let upper = [Op::Link("x", "a"), Op::Link("y", "x")];
        let tree = apply(&[LOWER, &upper]).unwrap();
        let ids: Vec<_> = ["a", "x", "y"].iter().map(|n| tree.lookup(&p(n)).cloned()).collect();
        assert!(ids.iter().all(|id| id == &ids[0] && matches!(id, Some(Node::Leaf(_)))));
        assert_eq!(tree.leaves.len(), 1);
    }

    #[test]
    fn whiteout_after_the_layers_own_entry_removes_it() {
        let upper = [
            Op::File("a", b"new"),
            Op::Whiteout(".wh.a"),
            Op::File("b", b"b"),
            Op::Whiteout(".wh.b"),
        ];
        let tree = apply(&[LOWER, &upper]).unwrap();
        assert!(tree.lookup(&p("a")).is_none() && tree.lookup(&p("b")).is_none());
        // A whiteout before the entry leaves the entry.
        let upper = [Op::Whiteout(".wh.a"), Op::File("a", b"new")];
        assert_eq!(body(&apply(&[LOWER, &upper]).unwrap(), "a").unwrap(), b"new");
    }

    /// containerd's walk at the marker removes what the layer did not unpack
    /// itself, implicit parents included; entries after it stay.
    #[test]
    fn opaque_marker_removes_implicit_parents_and_keeps_named_entries() {
        let upper = [
            Op::File("x/y", b"y"),
            Op::Dir("d"),
            Op::File("d/f", b"f"),
            Op::Whiteout(".wh..wh..opq"),
            Op::File("z", b"z"),
        ];
        let tree = apply(&[LOWER, &upper]).unwrap();
        let names: Vec<_> = tree.root.entries.keys().cloned().collect();
        assert_eq!(names, [b"d".to_vec(), b"z".to_vec()]);
        assert_eq!(body(&tree, "d/f").unwrap(), b"f");
    }

    /// containerd applies a link entry's header to the inode it links to,
    /// in this layer or a lower one.
    #[test]
    fn link_header_metadata_goes_to_the_linked_inode() {
        let header = |uid: u32| Stat {
            mode: 0o600,
            uid,
            xattrs: [(b"user.k".to_vec(), b"v".to_vec())].into(),
            ..Stat::default()
        };
        let mut b = TreeBuilder::new("test", 64);
        let leaf = Leaf {
            stat: Stat::default(),
            content: Content::File(FileData::Inline(b"f".to_vec())),
        };
        b.insert(&p("f"), NewNode::Leaf(leaf), b"f").unwrap();
        b.hard_link_with_stat(p("g"), b"f", Some(header(9)), b"g").unwrap();
        b.hard_link_with_stat(p("x"), b"a", Some(header(7)), b"x").unwrap();
        b.hard_link_with_stat(p("y"), b"x", Some(header(8)), b"y").unwrap();
        let mut tree = apply(&[LOWER]).unwrap();
        merge_layer(&mut tree, b.tree).unwrap();
        let stat_of = |path: &str| match tree.lookup(&p(path)) {
            Some(Node::Leaf(id)) => tree.leaf(*id).stat.clone(),
            _ => panic!("{path}"),
        };
        assert_eq!(stat_of("f"), header(9));
        // The lower file, through both links; the last header wins.
        assert_eq!(stat_of("a"), header(8));
        assert_eq!(stat_of("x"), header(8));
    }

    /// containerd's `mkparent` fails on a lower file, even if a later entry
    /// of the layer removes or replaces that path.
    #[test]
    fn implicit_parent_over_a_lower_file_is_refused_even_when_removed_later() {
        for later in [
            Op::Whiteout(".wh.a"),
            Op::Dir("a"),
            Op::File("a", b"x"),
            Op::Whiteout(".wh..wh..opq"),
        ] {
            let err = apply(&[LOWER, &[Op::File("a/x", b"x"), later]]).unwrap_err();
            assert!(err.contains("not a directory in the lower layers"), "{err}");
        }
        // Removed first, the path is free.
        let tree = apply(&[LOWER, &[Op::Whiteout(".wh.a"), Op::File("a/x", b"x")]]).unwrap();
        assert_eq!(body(&tree, "a/x").unwrap(), b"x");
    }
}
