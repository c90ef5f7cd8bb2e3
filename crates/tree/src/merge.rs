//! Overlay merge: applies one layer tree on top of a lower tree, with the
//! result containerd's applier gives when it extracts the layer's tar in
//! order onto the lower root filesystem.
//!
//! The layer tree already holds the effect of its entries in tar order (see
//! the builder in `strata-image`): a whiteout or an opaque marker removed
//! what the layer had before it, a later entry replaced an earlier one, and
//! a hard link to a file the layer did not hold is a stand-in leaf
//! ([`LowerCheck::Link`]) at the link's path. What is left for the merge is
//! what needs the lower tree:
//! - a stand-in becomes the lower leaf at its target, which must be a
//!   non-directory there (containerd: `link(2)` fails with ENOENT or EPERM);
//!   every stand-in is checked, even one a later entry replaced, as the
//!   link was made when it was read;
//! - so are the directories an entry went through as implicit parents that
//!   a later entry named, replaced or removed ([`LowerCheck::Dirs`]): each
//!   must be a directory or missing in the lower tree;
//! - a whiteout removes the lower entry; an opaque directory drops every
//!   lower entry below it;
//! - a named directory replaces a lower non-directory and merges into a
//!   lower directory (its stat replaces the lower one); an implicit one
//!   keeps the lower directory's stat, and is refused over a lower
//!   non-directory (containerd's `mkparent` fails with ENOTDIR; over a
//!   symlink it would follow the link, which strata never does), unless the
//!   layer removed that path first (`fresh`).
//!
//! Every walk here uses an explicit stack: depth comes from the input.

use std::collections::BTreeMap;

use crate::{Dir, LeafId, LowerCheck, Node, Tree, TreePath};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("hard link {link:?} points at {target:?}, which exists in no earlier entry or layer")]
    LinkTargetMissing { link: String, target: String },
    #[error("hard link {link:?} points at directory {target:?}")]
    LinkToDirectory { link: String, target: String },
    #[error("the layer puts entries below {path:?}, which is not a directory in the lower layers")]
    NotADirectory { path: String },
}

fn shown(path: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&path.join(&b'/')).into_owned()
}

/// Applies `layer` onto `lower`. Leaves of `lower` that become unreachable
/// stay in the table until [`Tree::compact`].
pub fn merge_layer(lower: &mut Tree, layer: Tree) -> Result<(), MergeError> {
    merge(lower, layer, true)
}

/// [`merge_layer`]; `in_place` lets a layer over an empty tree skip the
/// general merge (tests compare the two).
fn merge(lower: &mut Tree, mut layer: Tree, in_place: bool) -> Result<(), MergeError> {
    let offset = lower.leaves.len();
    let mut remap: Vec<LeafId> = (0..layer.leaves.len()).map(|i| LeafId(offset + i)).collect();
    for check in &layer.lower_links {
        let (leaf, path, target) = match check {
            LowerCheck::Link { leaf, path, target } => (leaf, path, target),
            LowerCheck::Dirs { path, dirs } => {
                check_dirs(&lower.root, path, dirs)?;
                continue;
            }
            LowerCheck::LinkHeader { leaf, stat } => {
                // The stand-in's Link came first and set its slot.
                let target = remap.get(leaf.0).and_then(|id| lower.leaves.get_mut(id.0));
                if let Some(target) = target {
                    let symlink = matches!(target.content, crate::Content::Symlink(_));
                    target.stat.apply_link_header(stat, symlink);
                }
                continue;
            }
        };
        let id = match lower.lookup(target) {
            Some(Node::Leaf(id)) => *id,
            Some(Node::Dir(_)) => {
                return Err(MergeError::LinkToDirectory {
                    link: shown(path),
                    target: shown(target),
                })
            }
            _ => {
                return Err(MergeError::LinkTargetMissing {
                    link: shown(path),
                    target: shown(target),
                })
            }
        };
        if let Some(slot) = remap.get_mut(leaf.0) {
            *slot = id;
        }
    }
    if in_place && lower.leaves.is_empty() && lower.root.entries.is_empty() {
        // Nothing below the layer (a pull's first): it becomes the tree in
        // place, without a copy of its leaf table or its directories, which
        // cost a transient 100 MiB for 1,000,000 entries (`bench/memory`).
        // Every stand-in failed above, so the layer's leaf ids stand.
        lower.leaves = std::mem::take(&mut layer.leaves);
        onto_empty(&mut lower.root, std::mem::take(&mut layer.root));
        return Ok(());
    }
    lower.leaves.append(&mut layer.leaves);
    let root = std::mem::take(&mut layer.root);
    merge_dirs(&mut lower.root, root, &remap, offset)
}

/// What [`merge_dirs`] gives onto an empty `lower` root, in place: the
/// layer's directories without their whiteouts and layer-only flags.
fn onto_empty(lower: &mut Dir, mut layer: Dir) {
    if !layer.implicit {
        lower.stat = std::mem::take(&mut layer.stat);
    }
    lower.entries = std::mem::take(&mut layer.entries);
    let mut stack = vec![&mut lower.entries];
    while let Some(entries) = stack.pop() {
        entries.retain(|_, node| !matches!(node, Node::Whiteout));
        for node in entries.values_mut() {
            if let Node::Dir(dir) = node {
                dir.opaque = false;
                dir.implicit = false;
                dir.fresh = false;
                stack.push(&mut dir.entries);
            }
        }
    }
}

/// Merges `layer` into `lower`, depth first with an explicit stack.
fn merge_dirs(lower: &mut Dir, layer: Dir, remap: &[LeafId], offset: usize) -> Result<(), MergeError> {
    // Every directory visited, as (parent index, name), to name a path in an error.
    let mut names: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
    let mut stack = vec![(lower, layer, 0usize)];
    while let Some((lower, mut layer, at)) = stack.pop() {
        if layer.opaque {
            lower.entries.clear();
        }
        if !layer.implicit {
            lower.stat = std::mem::take(&mut layer.stat);
        }
        let mut subdirs = BTreeMap::new();
        for (name, node) in std::mem::take(&mut layer.entries) {
            match node {
                Node::Whiteout => {
                    lower.entries.remove(&name);
                }
                Node::Leaf(id) => {
                    let id = remap.get(id.0).copied().unwrap_or(LeafId(id.0 + offset));
                    lower.entries.insert(name, Node::Leaf(id));
                }
                Node::Dir(child) => {
                    let merge_into_lower = match lower.entries.get(&name) {
                        Some(Node::Dir(_)) => !child.fresh,
                        Some(Node::Leaf(_)) if child.implicit && !child.fresh => {
                            return Err(MergeError::NotADirectory {
                                path: path_of(&names, at, &name),
                            })
                        }
                        _ => false,
                    };
                    if !merge_into_lower {
                        let fresh = Dir::new(child.stat.clone());
                        lower.entries.insert(name.clone(), Node::Dir(Box::new(fresh)));
                    }
                    subdirs.insert(name, child);
                }
            }
        }
        if subdirs.is_empty() {
            continue;
        }
        for (name, node) in lower.entries.iter_mut() {
            let (Some(child), Node::Dir(dir)) = (subdirs.remove(name), node) else {
                continue;
            };
            names.push((at, name.clone()));
            stack.push((&mut **dir, *child, names.len() - 1));
        }
    }
    Ok(())
}

/// Checks that every implicit, not fresh, directory of `dirs` (placed at
/// `path`) is a directory or missing in `lower`.
fn check_dirs(lower: &Dir, path: &[Vec<u8>], dirs: &Dir) -> Result<(), MergeError> {
    let Some((name, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut at = lower;
    for parent in parents {
        match at.entries.get(parent) {
            Some(Node::Dir(child)) => at = child,
            // A lower non-directory on the way was replaced before.
            _ => return Ok(()),
        }
    }
    let needs_dir = |dir: &Dir| dir.implicit && !dir.fresh;
    let mut names: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
    let mut stack = vec![(at, name.as_slice(), dirs, 0usize)];
    while let Some((lower_parent, name, dir, parent_at)) = stack.pop() {
        match lower_parent.entries.get(name) {
            Some(Node::Dir(lower_dir)) => {
                names.push((parent_at, name.to_vec()));
                let here = names.len() - 1;
                for (child_name, node) in dir.entries.iter() {
                    if let Node::Dir(child) = node {
                        stack.push((lower_dir, child_name, child, here));
                    }
                }
            }
            Some(_) if needs_dir(dir) => {
                let below = path_of(&names, parent_at, name);
                let full: TreePath = parents
                    .iter()
                    .cloned()
                    .chain(std::iter::once(below.into_bytes()))
                    .collect();
                return Err(MergeError::NotADirectory { path: shown(&full) });
            }
            _ => {}
        }
    }
    Ok(())
}

/// The path of `name` in the directory `names[at]`.
fn path_of(names: &[(usize, Vec<u8>)], mut at: usize, name: &[u8]) -> String {
    let mut path: TreePath = vec![name.to_vec()];
    while at != 0 {
        let (parent, dir_name) = &names[at];
        path.push(dir_name.clone());
        at = *parent;
    }
    path.reverse();
    shown(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Content, FileData, Leaf, Stat};

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/').map(|n| n.as_bytes().to_vec()).collect()
    }

    fn file(tree: &mut Tree, path: &str, body: &[u8]) {
        let id = tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: Content::File(FileData::Inline(body.to_vec())),
        });
        insert(tree, path, Node::Leaf(id));
    }

    fn insert(tree: &mut Tree, path: &str, node: Node) {
        let names = p(path);
        let (last, parents) = names.split_last().unwrap();
        let mut dir = &mut tree.root;
        for name in parents {
            let entry = dir.entries.entry(name.clone()).or_insert_with(|| {
                let mut d = Dir::new(Stat::default_dir());
                d.implicit = true;
                Node::Dir(Box::new(d))
            });
            let Node::Dir(child) = entry else { panic!() };
            dir = child;
        }
        dir.entries.insert(last.clone(), node);
    }

    fn lower_link(tree: &mut Tree, path: &str, target: &str) {
        let leaf = tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: Content::Fifo,
        });
        insert(tree, path, Node::Leaf(leaf));
        tree.lower_links.push(LowerCheck::Link {
            leaf,
            path: p(path),
            target: p(target),
        });
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

    #[test]
    fn whiteout_opaque_replace_and_links() {
        let mut lower = Tree::new(Stat::default_dir());
        file(&mut lower, "etc/passwd", b"root");
        file(&mut lower, "etc/gone", b"x");
        file(&mut lower, "opt/a", b"a");
        file(&mut lower, "doc/x", b"x");

        let mut layer = Tree::new(Stat::default_dir());
        layer.root.implicit = true;
        insert(&mut layer, "etc/gone", Node::Whiteout);
        insert(&mut layer, "doc", Node::Whiteout);
        file(&mut layer, "opt/b", b"b");
        let Some(Node::Dir(opt)) = layer.root.entries.get_mut(b"opt".as_slice()) else {
            panic!()
        };
        opt.opaque = true;
        file(&mut layer, "etc/passwd", b"new");
        lower_link(&mut layer, "etc/link", "etc/passwd");

        merge_layer(&mut lower, layer).unwrap();
        lower.compact();
        assert_eq!(body(&lower, "etc/passwd").unwrap(), b"new");
        assert!(lower.lookup(&p("etc/gone")).is_none());
        assert!(lower.lookup(&p("doc")).is_none());
        assert!(lower.lookup(&p("opt/a")).is_none(), "opaque dir hides lower");
        assert_eq!(body(&lower, "opt/b").unwrap(), b"b");
        // The link resolved against the lower tree, before the layer replaced passwd.
        assert_eq!(body(&lower, "etc/link").unwrap(), b"root");
        assert_eq!(lower.leaves.len(), 3, "compact drops overwritten leaves");
    }

    /// A layer over an empty tree, merged in place, gives what the general
    /// merge gives.
    #[test]
    fn onto_empty_matches_the_general_merge() {
        let mut implicit_root = Tree::new(Stat::default_dir());
        implicit_root.root.implicit = true;
        file(&mut implicit_root, "a/b/c", b"c");
        file(&mut implicit_root, "a/x", b"x");
        insert(&mut implicit_root, "a/gone", Node::Whiteout);
        insert(&mut implicit_root, "a/b/gone", Node::Whiteout);
        insert(&mut implicit_root, "top", Node::Whiteout);
        file(&mut implicit_root, "o/p", b"p");
        file(&mut implicit_root, "f/q", b"q");
        let Some(Node::Dir(o)) = implicit_root.root.entries.get_mut(b"o".as_slice()) else {
            panic!()
        };
        o.opaque = true;
        o.implicit = false;
        o.stat.uid = 5;
        let Some(Node::Dir(f)) = implicit_root.root.entries.get_mut(b"f".as_slice()) else {
            panic!()
        };
        f.fresh = true;
        f.stat.mode = 0o700;
        let mut dirs = Dir::new(Stat::default_dir());
        dirs.implicit = true;
        implicit_root.lower_links.push(LowerCheck::Dirs {
            path: p("a"),
            dirs: Box::new(dirs),
        });
        let mut named_root = implicit_root.clone();
        named_root.root.implicit = false;
        named_root.root.opaque = true;
        named_root.root.stat.mtime_sec = 9;
        let mut linked = named_root.clone();
        lower_link(&mut linked, "l", "a/x");

        for layer in [implicit_root, named_root, linked, Tree::new(Stat::default())] {
            let mut lower = Tree::new(Stat::default_dir());
            lower.root.stat.gid = 3;
            let (mut in_place, mut general) = (lower.clone(), lower.clone());
            let fast = merge(&mut in_place, layer.clone(), true);
            let slow = merge(&mut general, layer, false);
            assert_eq!(fast, slow);
            if slow.is_ok() {
                assert_eq!(in_place, general);
            }
        }
    }

    #[test]
    fn link_errors() {
        let mut lower = Tree::new(Stat::default_dir());
        file(&mut lower, "d/f", b"x");
        let mut layer = Tree::new(Stat::default_dir());
        lower_link(&mut layer, "l", "missing");
        let err = merge_layer(&mut lower.clone(), layer).unwrap_err();
        assert!(matches!(err, MergeError::LinkTargetMissing { .. }));
        let mut layer = Tree::new(Stat::default_dir());
        lower_link(&mut layer, "l", "d");
        let err = merge_layer(&mut lower, layer).unwrap_err();
        assert!(matches!(err, MergeError::LinkToDirectory { .. }));
    }

    #[test]
    fn implicit_dir_over_a_lower_file_is_refused_unless_fresh() {
        let mut lower = Tree::new(Stat::default_dir());
        file(&mut lower, "a", b"file");
        let mut layer = Tree::new(Stat::default_dir());
        layer.root.implicit = true;
        file(&mut layer, "a/x", b"x");
        let err = merge_layer(&mut lower.clone(), layer.clone()).unwrap_err();
        assert_eq!(err, MergeError::NotADirectory { path: "a".into() });
        let Some(Node::Dir(a)) = layer.root.entries.get_mut(b"a".as_slice()) else {
            panic!()
        };
        a.fresh = true;
        merge_layer(&mut lower, layer).unwrap();
        assert_eq!(body(&lower, "a/x").unwrap(), b"x");
    }

    #[test]
    fn implicit_dir_keeps_lower_stat() {
        let mut lower = Tree::new(Stat::default_dir());
        let mut etc = Dir::new(Stat {
            mode: 0o700,
            uid: 7,
            ..Stat::default()
        });
        etc.entries.clear();
        lower.root.entries.insert(b"etc".to_vec(), Node::Dir(Box::new(etc)));
        let mut layer = Tree::new(Stat::default_dir());
        layer.root.implicit = true;
        file(&mut layer, "etc/new", b"n");
        merge_layer(&mut lower, layer).unwrap();
        let Some(Node::Dir(etc)) = lower.lookup(&p("etc")) else {
            panic!()
        };
        assert_eq!((etc.stat.mode, etc.stat.uid), (0o700, 7));
        assert_eq!(etc.entries.len(), 1);
    }
}
