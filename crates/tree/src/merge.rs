//! Overlay merge: applies one layer tree on top of a lower tree, the way
//! containerd applies a layer tar onto a root filesystem.

use crate::{Dir, Node, Tree};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("hard link {link:?} points at {target:?}, which exists in no earlier entry or layer")]
    LinkTargetMissing { link: String, target: String },
    #[error("hard link {link:?} points at directory {target:?}")]
    LinkToDirectory { link: String, target: String },
    #[error("hard link {link:?} needs parent directory {parent:?}, which is not a directory")]
    LinkParentNotDir { link: String, parent: String },
}

fn shown(path: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&path.join(&b'/')).into_owned()
}

/// Applies `layer` onto `lower`: whiteouts remove, opaque directories hide
/// lower entries, everything else replaces or merges. Leaves of `lower` that
/// become unreachable stay in the table until [`Tree::compact`].
pub fn merge_layer(lower: &mut Tree, layer: Tree) -> Result<(), MergeError> {
    // Hard links into lower layers resolve against the tree as it was before
    // this layer, like a tar applied in order onto the lower root.
    let mut links = Vec::with_capacity(layer.lower_links.len());
    for (link, target) in &layer.lower_links {
        match lower.lookup(target) {
            Some(Node::Leaf(id)) => links.push((link.clone(), *id)),
            Some(Node::Dir(_)) => {
                return Err(MergeError::LinkToDirectory {
                    link: shown(link),
                    target: shown(target),
                })
            }
            _ => {
                return Err(MergeError::LinkTargetMissing {
                    link: shown(link),
                    target: shown(target),
                })
            }
        }
    }

    let offset = lower.leaves.len();
    lower.leaves.extend(layer.leaves);
    merge_dir(&mut lower.root, layer.root, offset);

    for (link, id) in links {
        let (name, parents) = link.split_last().expect("a link is never the root");
        let mut dir = &mut lower.root;
        for (depth, parent) in parents.iter().enumerate() {
            let entry = dir
                .entries
                .entry(parent.clone())
                .or_insert_with(|| Node::Dir(Box::new(Dir::new(crate::Stat::default_dir()))));
            match entry {
                Node::Dir(child) => dir = child,
                _ => {
                    return Err(MergeError::LinkParentNotDir {
                        link: shown(&link),
                        parent: shown(&parents[..=depth]),
                    })
                }
            }
        }
        dir.entries.insert(name.clone(), Node::Leaf(id));
    }
    Ok(())
}

fn merge_dir(lower: &mut Dir, layer: Dir, offset: usize) {
    if layer.opaque {
        lower.entries.clear();
    }
    if !layer.implicit {
        lower.stat = layer.stat;
    }
    for (name, node) in layer.entries {
        match node {
            Node::Whiteout => {
                lower.entries.remove(&name);
            }
            Node::Leaf(id) => {
                lower.entries.insert(name, Node::Leaf(shift(id, offset)));
            }
            Node::Dir(child) => match lower.entries.get_mut(&name) {
                Some(Node::Dir(existing)) => merge_dir(existing, *child, offset),
                _ => {
                    let mut fresh = Dir::new(child.stat.clone());
                    merge_dir(&mut fresh, *child, offset);
                    lower.entries.insert(name, Node::Dir(Box::new(fresh)));
                }
            },
        }
    }
}

fn shift(id: crate::LeafId, offset: usize) -> crate::LeafId {
    crate::LeafId(id.0 + offset)
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
        layer.lower_links.push((p("etc/link"), p("etc/passwd")));

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

    #[test]
    fn link_errors() {
        let mut lower = Tree::new(Stat::default_dir());
        file(&mut lower, "d/f", b"x");
        let mut layer = Tree::new(Stat::default_dir());
        layer.lower_links.push((p("l"), p("missing")));
        let err = merge_layer(&mut lower.clone(), layer).unwrap_err();
        assert!(matches!(err, MergeError::LinkTargetMissing { .. }));
        let mut layer = Tree::new(Stat::default_dir());
        layer.lower_links.push((p("l"), p("d")));
        let err = merge_layer(&mut lower, layer).unwrap_err();
        assert!(matches!(err, MergeError::LinkToDirectory { .. }));
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
