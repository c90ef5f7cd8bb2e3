//! Round trips of [`write_image`] through [`read_tree`], the limits that keep
//! them exact, and damaged images.

// Test data: the PRNG and patterns cut numbers down on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::erofs::format::FormatVersion;
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};
use composefs::fsverity::{FsVerityHashValue, Sha256HashValue};
use composefs::generic_tree::{Inode, LeafContent, Stat as CfsStat};
use composefs::tree::{FileSystem, RegularFile};
use strata_tree::{Content, Digest, Dir, FileData, Leaf, LeafId, Node, Stat, Tree};

use crate::{read_back, read_tree, write_image, ErofsError, INLINE_MAX, MAX_DEPTH, SYMLINK_MAX};

/// What `read_tree(write_image(tree))` must give: the compacted tree, less
/// the sub-second mtimes composefs's V2 format does not store.
fn representable(tree: &Tree) -> Tree {
    fn dir(d: &mut Dir) {
        d.stat.mtime_nsec = 0;
        for node in d.entries.values_mut() {
            if let Node::Dir(child) = node {
                dir(child);
            }
        }
    }
    let mut tree = tree.clone();
    tree.compact();
    dir(&mut tree.root);
    for leaf in &mut tree.leaves {
        leaf.stat.mtime_nsec = 0;
        // Named in the image by their SHA-256, as objects.
        if let Content::File(FileData::Missing { sha256, size }) = leaf.content {
            leaf.content = Content::File(FileData::Object { digest: sha256, size });
        }
    }
    tree
}

fn assert_round_trip(tree: &Tree) -> Vec<u8> {
    let image = write_image(tree).unwrap();
    let back = read_tree(&image).unwrap();
    assert_eq!(back, representable(tree));
    assert_eq!(read_back(tree).unwrap(), back);
    // Reading is deterministic and writing the result gives the same bytes.
    assert_eq!(write_image(&back).unwrap(), image);
    image
}

fn stat(mode: u32, seed: u32) -> Stat {
    Stat {
        mode,
        uid: seed,
        gid: seed.wrapping_mul(7),
        mtime_sec: 1_700_000_000 + i64::from(seed),
        mtime_nsec: 0,
        xattrs: Default::default(),
    }
}

fn add(tree: &mut Tree, path: &str, node: Node) {
    let names: Vec<&str> = path.split('/').collect();
    let (last, parents) = names.split_last().unwrap();
    let mut dir = &mut tree.root;
    for name in parents {
        let entry = dir
            .entries
            .entry(name.as_bytes().to_vec())
            .or_insert_with(|| Node::Dir(Box::new(Dir::new(Stat::default_dir()))));
        let Node::Dir(child) = entry else {
            panic!("{name} is not a directory")
        };
        dir = child;
    }
    assert!(
        dir.entries.insert(last.as_bytes().to_vec(), node).is_none(),
        "{path} twice"
    );
}

fn leaf(tree: &mut Tree, path: &str, stat: Stat, content: Content) -> LeafId {
    let id = tree.push_leaf(Leaf { stat, content });
    add(tree, path, Node::Leaf(id));
    id
}

fn inline(len: usize) -> Content {
    Content::File(FileData::Inline((0..len).map(|i| (i % 251) as u8).collect()))
}

fn object(seed: u8, size: u64) -> Content {
    Content::File(FileData::Object {
        digest: Digest::of(&[seed]),
        size,
    })
}

/// One of everything `write_image` accepts, with the awkward cases.
fn every_kind() -> Tree {
    let mut root_stat = stat(0o1777, 0);
    root_stat
        .xattrs
        .insert(b"security.selinux".to_vec(), b"system_u:object_r:root_t:s0\0".to_vec());
    let mut tree = Tree::new(root_stat);

    let mut etc = Dir::new(stat(0o2750, 3));
    etc.stat.mtime_sec = -1;
    etc.stat
        .xattrs
        .insert(b"trusted.overlay.foo".to_vec(), b"escaped".to_vec());
    etc.stat.xattrs.insert(b"user.note".to_vec(), Vec::new());
    add(&mut tree, "etc", Node::Dir(Box::new(etc)));
    add(&mut tree, "empty", Node::Dir(Box::new(Dir::new(stat(0o700, 9)))));
    add(&mut tree, "a/b/c/d", Node::Dir(Box::new(Dir::new(stat(0o555, 4)))));

    for len in [0, 1, 64, 65, INLINE_MAX - 1, INLINE_MAX] {
        let mut s = stat(0o644, len as u32);
        s.mtime_nsec = 999_999_999;
        leaf(&mut tree, &format!("etc/inline-{len}"), s, inline(len));
    }
    // The same bytes and stat twice, but two inodes: must stay two leaves.
    leaf(&mut tree, "etc/twin-1", stat(0o644, 1), inline(10));
    leaf(&mut tree, "etc/twin-2", stat(0o644, 1), inline(10));
    leaf(&mut tree, "etc/obj-twin-1", stat(0o644, 1), object(1, 100));
    leaf(&mut tree, "etc/obj-twin-2", stat(0o644, 1), object(1, 100));

    let mut tool = stat(0o4755, 1000);
    tool.uid = u32::MAX;
    tool.gid = u32::MAX - 1;
    tool.mtime_nsec = 5;
    tool.xattrs.insert(b"security.capability".to_vec(), vec![1, 0, 0, 2]);
    tool.xattrs
        .insert(b"trusted.overlay.metacopy".to_vec(), b"user data".to_vec());
    tool.xattrs
        .insert(b"trusted.overlay.redirect".to_vec(), b"/elsewhere".to_vec());
    tool.xattrs
        .insert(b"trusted.overlay.overlay.whiteout".to_vec(), b"double".to_vec());
    let hard = leaf(&mut tree, "usr/bin/tool", tool, object(2, 10_000));
    add(&mut tree, "sbin/tool-link", Node::Leaf(hard));
    add(&mut tree, "usr/bin/tool-again", Node::Leaf(hard));
    let inline_hard = leaf(&mut tree, "usr/share/motd", stat(0o444, 5), inline(INLINE_MAX));
    add(&mut tree, "etc/motd", Node::Leaf(inline_hard));

    leaf(&mut tree, "usr/lib/empty-object", stat(0o600, 6), object(3, 0));
    leaf(&mut tree, "usr/lib/huge-object", stat(0o600, 6), object(4, u64::MAX));
    leaf(&mut tree, "usr/lib/small-object", stat(0o600, 6), object(5, 3));

    let mut odd = stat(0o644, 7);
    for name in [
        &b""[..],
        b"user.",
        b"trusted.",
        b"security.",
        b"lustre.x",
        b"system.posix_acl_access",
        b"system.posix_acl_default",
        b"system.nfs4_acl",
        b"other",
        b"trusted.overlay.",
        b"user.overlay.origin",
    ] {
        odd.xattrs.insert(name.to_vec(), name.iter().rev().copied().collect());
    }
    odd.xattrs
        .insert([b"user.".as_slice(), &[b'n'; 255]].concat(), vec![0xff; 1000]);
    leaf(&mut tree, "odd-xattrs", odd, inline(3));

    leaf(
        &mut tree,
        "etc/link",
        stat(0o777, 8),
        Content::Symlink(b"../usr/bin/tool".to_vec()),
    );
    leaf(
        &mut tree,
        "etc/long-link",
        stat(0o777, 8),
        Content::Symlink(vec![b'x'; SYMLINK_MAX]),
    );
    leaf(&mut tree, "dev/null", stat(0o666, 0), Content::CharDevice(0x0103));
    leaf(&mut tree, "dev/zero-zero", stat(0o600, 0), Content::CharDevice(0));
    leaf(
        &mut tree,
        "dev/big",
        stat(0o600, 0),
        Content::CharDevice(u64::from(u32::MAX)),
    );
    leaf(&mut tree, "dev/sda", stat(0o660, 6), Content::BlockDevice(0x0800));
    leaf(&mut tree, "dev/00", stat(0o600, 0), Content::CharDevice(0));
    leaf(&mut tree, "run/fifo", stat(0o620, 2), Content::Fifo);
    leaf(&mut tree, "run/sock", stat(0o755, 2), Content::Socket);
    // Hex names in the root are fine unless they are 0/0 character devices.
    leaf(&mut tree, "ab", stat(0o600, 0), Content::CharDevice(1));
    leaf(&mut tree, "cd", stat(0o600, 0), Content::Fifo);
    leaf(&mut tree, "ef", stat(0o600, 0), inline(0));
    leaf(&mut tree, "zz", stat(0o600, 0), Content::CharDevice(0));
    leaf(&mut tree, &"n".repeat(255), stat(0o600, 0), inline(1));
    leaf(&mut tree, "\u{e9}t\u{e9} \n\t*?", stat(0o600, 0), inline(2));
    // Pushed out of walk order, and one leaf nothing names.
    tree.leaves.swap(0, 5);
    let swapped = |id: &mut LeafId| {
        *id = match id.0 {
            0 => LeafId(5),
            5 => LeafId(0),
            n => LeafId(n),
        }
    };
    fn visit(dir: &mut Dir, f: &dyn Fn(&mut LeafId)) {
        for node in dir.entries.values_mut() {
            match node {
                Node::Dir(child) => visit(child, f),
                Node::Leaf(id) => f(id),
                Node::Whiteout => {}
            }
        }
    }
    visit(&mut tree.root, &swapped);
    tree.push_leaf(Leaf {
        stat: Stat::default(),
        content: Content::Fifo,
    });
    tree
}

#[test]
fn sample_round_trips() {
    assert_round_trip(&crate::tests::sample());
}

#[test]
fn every_kind_round_trips() {
    let tree = every_kind();
    let image = assert_round_trip(&tree);
    let back = read_tree(&image).unwrap();
    let at = |path: &str| {
        let names: Vec<Vec<u8>> = path.split('/').map(|n| n.as_bytes().to_vec()).collect();
        match back.lookup(&names) {
            Some(Node::Leaf(id)) => *id,
            other => panic!("{path}: {other:?}"),
        }
    };
    // Spot checks on top of the whole-tree comparison.
    assert_eq!(at("usr/bin/tool"), at("sbin/tool-link"));
    assert_eq!(at("usr/bin/tool"), at("usr/bin/tool-again"));
    assert_eq!(at("usr/share/motd"), at("etc/motd"));
    assert_ne!(at("etc/twin-1"), at("etc/twin-2"));
    assert_ne!(at("etc/obj-twin-1"), at("etc/obj-twin-2"));
    let tool = back.leaf(at("usr/bin/tool"));
    assert_eq!(tool.stat.mode, 0o4755);
    assert_eq!(tool.stat.xattrs[&b"trusted.overlay.metacopy"[..]], b"user data");
    assert_eq!(back.leaves.len(), representable(&tree).leaves.len());
    assert_eq!(back.leaves.len(), tree.leaves.len() - 1, "the unreachable leaf is gone");
}

#[test]
fn an_empty_tree_round_trips() {
    assert_round_trip(&Tree::new(Stat::default()));
    assert_round_trip(&Tree::new(stat(0o7777, 1)));
}

#[test]
fn mtime_nsec_is_not_stored() {
    let mut tree = Tree::new(stat(0o755, 1));
    tree.root.stat.mtime_nsec = 1;
    let mut s = stat(0o644, 2);
    s.mtime_nsec = 999_999_999;
    leaf(&mut tree, "f", s, inline(1));
    let back = read_tree(&write_image(&tree).unwrap()).unwrap();
    assert_eq!(
        (back.root.stat.mtime_sec, back.root.stat.mtime_nsec),
        (1_700_000_001, 0)
    );
    assert_eq!(
        (back.leaves[0].stat.mtime_sec, back.leaves[0].stat.mtime_nsec),
        (1_700_000_002, 0)
    );
}

#[test]
fn nested_trees_fit_a_two_mib_stack_on_either_side_of_the_cutoff() {
    // tokio's worker threads have 2 MiB: the depth that is still written on
    // the caller's stack, and one past it that gets the big stack.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for depth in [crate::CALLER_STACK_DEPTH, crate::CALLER_STACK_DEPTH + 1, 600] {
                let path = vec!["d"; depth].join("/");
                let mut tree = Tree::new(Stat::default_dir());
                leaf(&mut tree, &format!("{path}/f"), stat(0o644, 1), inline(1));
                assert_round_trip(&tree);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn deepest_tree_round_trips() {
    // Deep recursion in the writer, composefs and here: give it room.
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(|| {
            let path = vec!["d"; MAX_DEPTH].join("/");
            let mut tree = Tree::new(Stat::default_dir());
            leaf(&mut tree, &format!("{path}/f"), stat(0o644, 1), inline(1));
            assert_round_trip(&tree);
            let mut deeper = Tree::new(Stat::default_dir());
            add(
                &mut deeper,
                &format!("{path}/d"),
                Node::Dir(Box::new(Dir::new(Stat::default_dir()))),
            );
            let err = write_image(&deeper).unwrap_err();
            assert!(
                matches!(&err, ErofsError::Invalid { reason } if reason.contains("nested")),
                "{err}"
            );
            // The same depth written by composefs directly.
            let mut dir = composefs::tree::Directory::<Sha256HashValue>::new(CfsStat::uninitialized());
            for _ in 0..=MAX_DEPTH {
                let mut parent = composefs::tree::Directory::new(CfsStat::uninitialized());
                parent.insert(OsStr::new("d"), Inode::Directory(Box::new(dir)));
                dir = parent;
            }
            let fs = FileSystem {
                root: dir,
                leaves: Vec::new(),
            };
            let image = mkfs_erofs_versioned(&ValidatedFileSystem::new(fs).unwrap(), FormatVersion::V2);
            corrupt(&image, "nest deeper than 2047");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// xorshift64*: reproducible trees without a new dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn random_stat(rng: &mut Rng) -> Stat {
    const NAMES: &[&[u8]] = &[
        b"user.a",
        b"user.b",
        b"security.selinux",
        b"security.ima",
        b"trusted.overlay.x",
        b"trusted.overlay.overlay.y",
        b"trusted.t",
        b"system.posix_acl_access",
        b"lustre.l",
        b"raw",
    ];
    let mut xattrs = std::collections::BTreeMap::new();
    for _ in 0..rng.below(4) {
        let len = *rng.pick(&[0usize, 1, 3, 4, 100, 5000]);
        // Few distinct values, so identical xattrs get shared between inodes.
        let byte = rng.below(3) as u8;
        xattrs.insert(rng.pick(NAMES).to_vec(), vec![byte; len]);
    }
    Stat {
        mode: rng.below(0o10000) as u32,
        uid: *rng.pick(&[0, 1, 65_535, 65_536, u32::MAX]),
        gid: rng.next() as u32,
        mtime_sec: *rng.pick(&[0, -1, 1, 1_700_000_000, i64::MAX, i64::MIN]),
        mtime_nsec: rng.below(1_000_000_000) as u32,
        xattrs,
    }
}

fn random_content(rng: &mut Rng) -> Content {
    match rng.below(9) {
        0 | 1 => {
            let len = *rng.pick(&[0usize, 1, 2, 63, 64, 65, 100, 511, INLINE_MAX]);
            Content::File(FileData::Inline((0..len).map(|_| rng.next() as u8).collect()))
        }
        2 => Content::File(FileData::Object {
            digest: Digest::of(&rng.below(6).to_le_bytes()),
            size: *rng.pick(&[0, 1, 512, 513, 4096, 1 << 40, u64::MAX]),
        }),
        3 => Content::File(FileData::Missing {
            sha256: Digest::of(&rng.below(6).to_le_bytes()),
            size: *rng.pick(&[513, 4096, 1 << 40]),
        }),
        4 => {
            let len = *rng.pick(&[1usize, 10, 500, SYMLINK_MAX]);
            Content::Symlink((0..len).map(|_| b'a' + rng.below(26) as u8).collect())
        }
        5 => Content::CharDevice(*rng.pick(&[0, 1, 0x0103, u64::from(u32::MAX)])),
        6 => Content::BlockDevice(*rng.pick(&[0, 0x0800, u64::from(u32::MAX)])),
        7 => Content::Fifo,
        _ => Content::Socket,
    }
}

fn random_dir(rng: &mut Rng, tree: &mut Tree, depth: u32, in_root: bool) -> Dir {
    let mut dir = Dir::new(random_stat(rng));
    let n = if depth > 3 { 0 } else { rng.below(7) };
    for i in 0..n {
        // Hex names in the root only for what is not a 0/0 device.
        let name = format!("{:02x}", rng.below(40) + i * 40).into_bytes();
        let node = match rng.below(10) {
            0..=2 => Node::Dir(Box::new(random_dir(rng, tree, depth + 1, false))),
            3 if !tree.leaves.is_empty() => Node::Leaf(LeafId(rng.below(tree.leaves.len() as u64) as usize)),
            _ => {
                let mut content = random_content(rng);
                if in_root && content == Content::CharDevice(0) {
                    content = Content::Fifo;
                }
                Node::Leaf(tree.push_leaf(Leaf {
                    stat: random_stat(rng),
                    content,
                }))
            }
        };
        dir.entries.insert(name, node);
    }
    dir
}

#[test]
fn generated_trees_round_trip() {
    let mut rng = Rng(0x5eed_0f57_42a7_a5c3);
    let (mut links, mut accepted) = (0, 0);
    for round in 0..300 {
        let mut tree = Tree::new(Stat::default());
        tree.root = random_dir(&mut rng, &mut tree, 0, true);
        // Hard-linked 0/0 devices are whiteouts to composefs and refused.
        let mut count = vec![0; tree.leaves.len()];
        tree.for_each_leaf(|id| count[id.0] += 1);
        links += count.iter().filter(|&&n| n > 1).count();
        if let Err(err) = write_image(&tree) {
            let refused = tree
                .leaves
                .iter()
                .zip(&count)
                .any(|(leaf, &n)| leaf.content == Content::CharDevice(0) && n > 1);
            assert!(refused, "round {round}: {err}");
            continue;
        }
        accepted += 1;
        assert_round_trip(&tree);
    }
    assert!(accepted > 250 && links > 50, "accepted {accepted}, hard links {links}");
}

fn invalid(tree: &Tree, want: &str) {
    match write_image(tree) {
        Err(ErofsError::Invalid { reason }) => assert!(reason.contains(want), "{reason:?} lacks {want:?}"),
        other => panic!("expected Invalid containing {want:?}, got {other:?}"),
    }
}

#[test]
fn writer_refuses_what_would_not_read_back() {
    let one = |path: &str, st: Stat, content: Content| {
        let mut tree = Tree::new(Stat::default_dir());
        leaf(&mut tree, path, st, content);
        tree
    };
    invalid(
        &one("f", stat(0o644, 1), inline(INLINE_MAX + 1)),
        "over the limit of 512",
    );
    invalid(&one("c", stat(0o644, 1), Content::CharDevice(1 << 32)), "32 bits");
    invalid(&one("b", stat(0o644, 1), Content::BlockDevice(u64::MAX)), "32 bits");
    for name in ["0a", "FF", "00"] {
        invalid(&one(name, stat(0o644, 1), Content::CharDevice(0)), "whiteout stub");
    }
    for name in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'n'; 256]] {
        let mut tree = Tree::new(Stat::default_dir());
        let id = tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: Content::Fifo,
        });
        let mut sub = Dir::new(Stat::default_dir());
        sub.entries.insert(name.to_vec(), Node::Leaf(id));
        tree.root.entries.insert(b"sub".to_vec(), Node::Dir(Box::new(sub)));
        invalid(&tree, "/sub/");
    }
    let mut dangling = Tree::new(Stat::default_dir());
    dangling.root.entries.insert(b"x".to_vec(), Node::Leaf(LeafId(3)));
    invalid(&dangling, "does not exist");

    let with = |name: &[u8], value: Vec<u8>| {
        let mut s = stat(0o644, 1);
        s.xattrs.insert(name.to_vec(), value);
        s
    };
    for name in [
        "trusted.overlay.whiteout",
        "trusted.overlay.whiteouts",
        "trusted.overlay.opaque",
        "user.overlay.whiteout",
        "user.overlay.whiteouts",
        "user.overlay.opaque",
    ] {
        invalid(&one("f", with(name.as_bytes(), vec![]), inline(1)), "overlay marker");
        let mut tree = Tree::new(with(name.as_bytes(), b"y".to_vec()));
        tree.root.stat.mode = 0o755;
        invalid(&tree, "overlay marker");
    }
    let long_name = [b"user.".as_slice(), &[b'n'; 256]].concat();
    invalid(&one("f", with(&long_name, vec![]), inline(1)), "too long");
    // Stored as "trusted." + "overlay.overlay." + rest: 239 is the most that fits.
    let escaped = [b"trusted.overlay.".as_slice(), &[b'n'; 240]].concat();
    invalid(&one("f", with(&escaped, vec![]), inline(1)), "too long");
    assert_round_trip(&one("f", with(&escaped[..escaped.len() - 1], vec![]), inline(1)));
    invalid(&one("f", with(b"user.v", vec![0; 65_536]), inline(1)), "too long");

    let many = |n: usize, content: Content| {
        let mut s = stat(0o644, 1);
        for i in 0..n {
            s.xattrs.insert(format!("user.{i}").into_bytes(), vec![]);
        }
        one("f", s, content)
    };
    assert_round_trip(&many(255, inline(1)));
    invalid(&many(256, inline(1)), "xattrs, over the limit of 255");
    assert_round_trip(&many(253, object(1, 5)));
    invalid(&many(254, object(1, 5)), "xattrs, over the limit of 253");

    // EROFS counts an inode's xattr words in 16 bits: 65534 words after the
    // header. Three 65535-byte values take 3 * 65540 bytes; the fourth entry
    // ("user.3", 4 + 1 + value bytes) may take the 65516 left, and no more.
    let big = |last: usize| {
        let mut s = stat(0o644, 1);
        for i in 0..3u8 {
            s.xattrs.insert(format!("user.{i}").into_bytes(), vec![i; 65_535]);
        }
        s.xattrs.insert(b"user.3".to_vec(), vec![3; last]);
        one("f", s, inline(INLINE_MAX))
    };
    assert_round_trip(&big(65_511));
    invalid(&big(65_512), "bytes of xattrs");
}

/// Writes a composefs tree the way strata does, but with content strata's
/// writer never produces.
fn foreign_image(content: LeafContent<RegularFile<Sha256HashValue>>, name: &str, version: FormatVersion) -> Vec<u8> {
    let dir_stat = CfsStat {
        st_mode: 0o755,
        ..CfsStat::uninitialized()
    };
    let mut fs = FileSystem::<Sha256HashValue>::new(dir_stat);
    let id = fs.push_leaf(
        CfsStat {
            st_mode: 0o644,
            ..CfsStat::uninitialized()
        },
        content,
    );
    fs.root.insert(OsStr::from_bytes(name.as_bytes()), Inode::leaf(id));
    mkfs_erofs_versioned(&ValidatedFileSystem::new(fs).unwrap(), version).into_vec()
}

fn corrupt(image: &[u8], want: &str) {
    match read_tree(image) {
        Err(ErofsError::Corrupt { reason }) => assert!(reason.contains(want), "{reason:?} lacks {want:?}"),
        other => panic!("expected Corrupt containing {want:?}, got {other:?}"),
    }
}

#[test]
fn reader_refuses_what_strata_never_writes() {
    let id = Sha256HashValue::from_hex(Digest::of(b"x").to_hex()).unwrap();
    let v2 = FormatVersion::V2;
    // The control: the same construction with strata's own content reads.
    let plain = foreign_image(
        LeafContent::Regular(RegularFile::Inline(b"ok".to_vec().into())),
        "f",
        v2,
    );
    let back = read_tree(&plain).unwrap();
    assert_eq!(back.leaves[0].content, Content::File(FileData::Inline(b"ok".to_vec())));

    let external = foreign_image(LeafContent::Regular(RegularFile::External(id.clone(), 9)), "f", v2);
    assert_eq!(
        read_tree(&external).unwrap().leaves[0].content,
        Content::File(FileData::Object {
            digest: Digest::of(b"x"),
            size: 9
        })
    );
    corrupt(
        &foreign_image(LeafContent::Regular(RegularFile::ExternalNoVerity(id, 9)), "f", v2),
        "without an fs-verity digest",
    );
    corrupt(
        &foreign_image(LeafContent::Regular(RegularFile::Sparse(9)), "f", v2),
        "sparse",
    );
    corrupt(
        &foreign_image(LeafContent::CharacterDevice(0), "7f", v2),
        "whiteout stub",
    );
    corrupt(
        &foreign_image(LeafContent::CharacterDevice(0), "Ab", v2),
        "whiteout stub",
    );
    let big = vec![1u8; INLINE_MAX + 1];
    corrupt(
        &foreign_image(LeafContent::Regular(RegularFile::Inline(big.into())), "f", v2),
        "512",
    );
    for (bad, name) in [("", "empty"), ("a/b", "'/'")] {
        corrupt(&foreign_image(LeafContent::Fifo, bad, v2), name);
    }
    for version in [FormatVersion::V0, FormatVersion::V1] {
        corrupt(&foreign_image(LeafContent::Fifo, "f", version), "format version");
    }
}

#[test]
fn truncated_images_are_errors() {
    for tree in [crate::tests::sample(), every_kind()] {
        let image = write_image(&tree).unwrap();
        for len in 0..image.len() {
            let result = read_tree(&image[..len]);
            assert!(
                matches!(result, Err(ErofsError::Corrupt { .. })),
                "prefix of {len} of {} bytes: {result:?}",
                image.len()
            );
        }
    }
}

#[test]
fn damaged_images_never_panic() {
    let image = write_image(&every_kind()).unwrap();
    let good = read_tree(&image).unwrap();
    let (mut errors, mut changed) = (0, 0);
    for (i, mask) in (0..image.len()).flat_map(|i| [(i, 0xff), (i, 0x01), (i, 0x80)]) {
        let mut bad = image.clone();
        bad[i] ^= mask;
        match read_tree(&bad) {
            Err(ErofsError::Corrupt { .. }) => errors += 1,
            Err(other) => panic!("byte {i}: {other:?}"),
            Ok(tree) if tree != good => changed += 1,
            Ok(_) => {}
        }
    }
    assert!(
        errors > 100 && changed > 100,
        "{errors} errors, {changed} changed trees"
    );

    let mut rng = Rng(42);
    for len in [0, 1, 31, 1024, 1100, 4096, 8192, 65_536] {
        for _ in 0..20 {
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(read_tree(&noise).is_err());
            // A valid header in front of noise.
            let mut spliced = image[..1024.min(image.len())].to_vec();
            spliced.extend_from_slice(&noise);
            let _ = read_tree(&spliced);
        }
    }
}

/// Points the root's entry `from` at the inode `to` names, by rewriting the
/// nid in its 12-byte directory entry header.
fn relink(image: &mut [u8], from: &[u8], to: Option<&[u8]>) {
    use composefs::erofs::reader::InodeHeader;
    let img = composefs::erofs::reader::Image::open(image).unwrap();
    let root = u64::from(img.sb.root_nid.get());
    let nid = |name: &[u8]| img.find_child_nid(root, name).unwrap().unwrap();
    let (old, new) = (nid(from), to.map_or(root, nid));
    // The root's entries are inline, after its 64-byte header and xattrs.
    let inode = img.root().unwrap();
    let start = usize::try_from(root).unwrap() * 32 + 64 + inode.xattr_size();
    let end = start + usize::try_from(inode.size()).unwrap();
    // Header: nid (u64), name offset (u16), file type (u8, 2 = directory), 0.
    let hits: Vec<usize> = (start..end - 12)
        .filter(|&i| image[i..i + 8] == old.to_le_bytes() && image[i + 10..i + 12] == [2, 0])
        .collect();
    assert_eq!(hits.len(), 1, "entry for {from:?}");
    image[hits[0]..hits[0] + 8].copy_from_slice(&new.to_le_bytes());
}

#[test]
fn directories_linked_twice_are_errors() {
    let mut tree = Tree::new(Stat::default_dir());
    add(&mut tree, "a", Node::Dir(Box::new(Dir::new(stat(0o755, 1)))));
    add(&mut tree, "b", Node::Dir(Box::new(Dir::new(stat(0o755, 2)))));
    leaf(&mut tree, "a/f", stat(0o644, 3), inline(1));
    let image = write_image(&tree).unwrap();
    assert_round_trip(&tree);
    // "b" names "a" too: composefs's own reader takes this (the parent links
    // and counts still add up) and would read "a" twice.
    let mut twice = image.clone();
    relink(&mut twice, b"b", Some(b"a"));
    let fs = composefs::erofs::reader::erofs_to_filesystem::<Sha256HashValue>(&twice).unwrap();
    assert_eq!(fs.root.entries().count(), 2);
    corrupt(&twice, "linked more than once");
    // "a" names the root, whose ".." is itself.
    let mut cycle = image;
    relink(&mut cycle, b"a", None);
    corrupt(&cycle, "linked more than once");
}
