//! Renamed lower directories: copying one out of the parent's tree and
//! laying the upper entries over it. Both walk with explicit stacks, so a
//! tree of any depth uses no more of the thread's stack than a flat one.

use std::collections::HashMap;

use strata_tree::{Dir, LeafId, Node, Tree};

/// Copies `lower` (a directory of `from`) into `into`, keeping hard links
/// within it (`ids` maps `from`'s leaves to those pushed into `into`).
/// Each directory and leaf made takes one from `budget`; `None` once it is
/// spent (renames nested inside renames copy the same entries again).
pub(super) fn copy_lower_dir(from: &Tree, lower: &Dir, into: &mut Tree, budget: &mut u64) -> Option<Dir> {
    let mut ids: HashMap<LeafId, LeafId> = HashMap::new();
    let mut spend = || {
        *budget = budget.checked_sub(1)?;
        Some(())
    };
    // Each frame: the source dir's entries still to copy, the copy so far,
    // and the name it gets in its parent.
    let mut stack = vec![(lower.entries.iter(), Dir::new(lower.stat.clone()), Vec::new())];
    let mut copied = None;
    while let Some((entries, copy, _)) = stack.last_mut() {
        match entries.next() {
            Some((name, Node::Dir(d))) => {
                spend()?;
                stack.push((d.entries.iter(), Dir::new(d.stat.clone()), name.clone()));
            }
            Some((name, Node::Leaf(id))) => {
                let new = match ids.get(id) {
                    Some(new) => *new,
                    None => {
                        spend()?;
                        let new = into.push_leaf(from.leaf(*id).clone());
                        ids.insert(*id, new);
                        new
                    }
                };
                copy.entries.insert(name.clone(), Node::Leaf(new));
            }
            Some((_, Node::Whiteout)) => {}
            None => {
                let Some((_, done, name)) = stack.pop() else { break };
                match stack.last_mut() {
                    Some((_, parent, _)) => {
                        parent.entries.insert(name, Node::Dir(Box::new(done)));
                    }
                    None => copied = Some(done),
                }
            }
        }
    }
    Some(copied.unwrap_or_default())
}

/// Applies an upper directory over a copy of its lower one, as overlayfs
/// shows them merged: whiteouts delete, opaque dirs replace, dirs merge.
/// Whiteouts and opaque marks are used up; none are left in the result.
pub(super) fn apply_upper(lower: &mut Dir, upper: Dir) {
    let Dir { stat, entries, .. } = upper;
    let mut base = std::mem::take(lower);
    base.stat = stat;
    // Each frame: the merged dir so far, the upper entries still to apply,
    // and the name it gets in its parent.
    let mut stack = vec![(base, entries.into_iter(), Vec::new())];
    while let Some((merged, entries, _)) = stack.last_mut() {
        match entries.next() {
            Some((name, Node::Whiteout)) => {
                merged.entries.remove(&name);
            }
            Some((name, Node::Dir(up))) => {
                let Dir {
                    stat, entries, opaque, ..
                } = *up;
                let mut base = match merged.entries.remove(&name) {
                    Some(Node::Dir(low)) if !opaque => *low,
                    _ => Dir::default(),
                };
                base.stat = stat;
                stack.push((base, entries.into_iter(), name));
            }
            Some((name, leaf)) => {
                merged.entries.insert(name, leaf);
            }
            None => {
                let Some((done, _, name)) = stack.pop() else { break };
                match stack.last_mut() {
                    Some((parent, _, _)) => {
                        parent.entries.insert(name, Node::Dir(Box::new(done)));
                    }
                    None => *lower = done,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_tree::{Content, FileData, Leaf, Stat};

    use super::*;

    /// A chain `d/d/…/d` `depth` levels deep with a file at the bottom.
    fn chain(tree: &mut Tree, depth: usize) -> Dir {
        let leaf = tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: Content::File(FileData::Inline(b"x".to_vec())),
        });
        let mut dir = Dir::new(Stat::default_dir());
        dir.entries.insert(b"f".to_vec(), Node::Leaf(leaf));
        for _ in 0..depth {
            let mut up = Dir::new(Stat::default_dir());
            up.entries.insert(b"d".to_vec(), Node::Dir(Box::new(dir)));
            dir = up;
        }
        dir
    }

    fn depth(dir: &Dir) -> usize {
        let mut n = 0;
        let mut at = dir;
        while let Some(Node::Dir(d)) = at.entries.get(&b"d"[..]) {
            n += 1;
            at = d;
        }
        n
    }

    /// Each directory and new leaf takes one from the budget; a hard link
    /// within the copy takes none. A spent budget copies nothing more.
    #[test]
    fn copies_spend_a_budget() {
        let mut from = Tree::new(Stat::default_dir());
        let mut lower = chain(&mut from, 3);
        let Node::Leaf(file) = chain(&mut from, 0).entries[&b"f"[..]] else {
            panic!("a leaf")
        };
        lower.entries.insert(b"a".to_vec(), Node::Leaf(file));
        lower.entries.insert(b"b".to_vec(), Node::Leaf(file));
        // Three directories below `lower`, and two leaves.
        let mut into = Tree::new(Stat::default_dir());
        let mut budget = 5;
        assert!(copy_lower_dir(&from, &lower, &mut into, &mut budget).is_some());
        assert_eq!(budget, 0);
        let mut budget = 4;
        assert!(copy_lower_dir(&from, &lower, &mut into, &mut budget).is_none());
    }

    #[test]
    fn deep_copies_and_merges_fit_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let mut from = Tree::new(Stat::default_dir());
                let lower = chain(&mut from, 20_000);
                let mut into = Tree::new(Stat::default_dir());
                let mut budget = u64::MAX;
                let mut copy = copy_lower_dir(&from, &lower, &mut into, &mut budget).unwrap();
                assert_eq!(depth(&copy), 20_000);
                let mut upper = chain(&mut into, 20_000);
                upper.entries.insert(b"new".to_vec(), Node::Whiteout);
                apply_upper(&mut copy, upper);
                assert_eq!(depth(&copy), 20_000);
                assert!(!copy.entries.contains_key(&b"new"[..]));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn apply_follows_overlay_rules() {
        let mut tree = Tree::new(Stat::default_dir());
        let f = tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: Content::Fifo,
        });
        let mut lower = Dir::new(Stat::default_dir());
        let mut keep = Dir::new(Stat::default_dir());
        keep.entries.insert(b"old".to_vec(), Node::Leaf(f));
        lower
            .entries
            .insert(b"keep".to_vec(), Node::Dir(Box::new(keep.clone())));
        lower.entries.insert(b"opaque".to_vec(), Node::Dir(Box::new(keep)));
        lower.entries.insert(b"gone".to_vec(), Node::Leaf(f));
        let mut upper = Dir::new(Stat::default_dir());
        let mut merge = Dir::new(Stat::default_dir());
        merge.entries.insert(b"new".to_vec(), Node::Leaf(f));
        let mut opaque = merge.clone();
        opaque.opaque = true;
        upper.entries.insert(b"keep".to_vec(), Node::Dir(Box::new(merge)));
        upper.entries.insert(b"opaque".to_vec(), Node::Dir(Box::new(opaque)));
        upper.entries.insert(b"gone".to_vec(), Node::Whiteout);
        apply_upper(&mut lower, upper);
        let names = |d: &Dir, n: &[u8]| match d.entries.get(n) {
            Some(Node::Dir(d)) => d.entries.keys().cloned().collect::<Vec<_>>(),
            _ => panic!("no dir"),
        };
        assert_eq!(names(&lower, b"keep"), vec![b"new".to_vec(), b"old".to_vec()]);
        assert_eq!(names(&lower, b"opaque"), vec![b"new".to_vec()]);
        assert!(!lower.entries.contains_key(&b"gone"[..]));
    }
}
