//! Differential test of the layer merge against containerd's own applier.
//!
//! Random layer sequences (hard links to this and lower layers and to other
//! links, with their own metadata or their target's; whiteouts, opaque
//! markers anywhere in a layer, type changes, duplicate paths, implicit
//! parents) are applied by containerd's
//! `archive.Apply` (the Go helper in `fixtures/applier/`, built here with
//! Debian's Go packages in GOPATH mode) and imported and merged by strata.
//! Both must give the same tree, or both refuse the sequence.
//!
//! Deliberate differences, which the generator avoids:
//! - containerd follows a symlink that a path goes through (inside the root);
//!   strata refuses such names, so no entry or link target goes below a path
//!   that ever held a symlink;
//! - xattrs: only `user.*`, only on regular files (containerd drops them on
//!   other types and merges, not replaces, a directory's);
//! - containerd sets each directory's mtime at the end of its layer through
//!   the path as it is then: it refuses a layer that removed a directory it
//!   named (ENOENT, ENOTDIR, a dangling or looping symlink) and gives a leaf
//!   that replaced one the directory's mtime. strata takes the entries'
//!   meaning (the directory is gone); the generator never removes or
//!   replaces, in one layer, a directory named earlier in it;
//! - directory mtimes (containerd's are the time of the apply), symlink modes
//!   (always 0777 on Linux) and the root's stat are not compared.
//!
//! STRATA_APPLIER_SEED repeats a run; STRATA_APPLIER_CASES sets the count.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use strata_image::{import_layer, Descriptor, Limits, Progress};
use strata_store::Store;
use strata_tests::*;
use strata_tree::{merge_layer, Content, Digest, FileData, LeafId, Node, Stat, Tree};

/// splitmix64: small, seeded, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Clone, Debug, Default)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Link(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
    /// An empty regular file: a whiteout or opaque marker by its name.
    Marker,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    kind: Kind,
    meta: Meta,
}

type Layers = Vec<Vec<Entry>>;

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(e.meta.mode);
        h.set_uid(e.meta.uid);
        h.set_gid(e.meta.gid);
        h.set_mtime(e.meta.mtime);
        h.set_size(0);
        if !e.meta.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = e
                .meta
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut body: &[u8] = &[];
        match &e.kind {
            Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
            Kind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                body = data;
            }
            Kind::Marker => h.set_entry_type(tar::EntryType::Regular),
            Kind::Symlink(t) | Kind::Link(t) => {
                let kind = if matches!(e.kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_link_name(t).unwrap();
            }
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                let kind = if matches!(e.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                h.set_entry_type(kind);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
            }
        }
        h.set_path(&e.name).unwrap();
        h.set_cksum();
        builder.append(&h, body).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Random layers over a small name space, so paths collide often.
fn generate(rng: &mut Rng) -> Layers {
    const NAMES: [&str; 3] = ["a", "b", "c"];
    // Every header's metadata by path, for hard link headers.
    let mut last: HashMap<String, Meta> = HashMap::new();
    // Paths that ever held a symlink: nothing goes below them.
    let mut tainted: HashSet<String> = HashSet::new();
    // A rough model of the tree so far (path -> is a directory), to keep
    // most entries valid: most sequences should apply, some fail.
    let mut model: BTreeMap<String, bool> = BTreeMap::new();
    let below_symlink = |tainted: &HashSet<String>, path: &str| {
        let parts: Vec<&str> = path.split('/').collect();
        (1..parts.len()).any(|n| tainted.contains(&parts[..n].join("/")))
    };
    let mut layers = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let mut layer: Vec<Entry> = Vec::new();
        let count = 1 + rng.below(10);
        while layer.len() < count {
            // Parents from a, b, c; last names also from f, g, which are
            // never directories, so fewer entries land below a file.
            let depth = 1 + rng.below(3);
            let mut names: Vec<&str> = (0..depth).map(|_| *rng.pick(&NAMES)).collect();
            if rng.below(2) == 0 {
                names[depth - 1] = *rng.pick(&["f", "g"]);
            }
            let path = names.join("/");
            let (parent, base) = match path.rsplit_once('/') {
                Some((p, b)) => (format!("{p}/"), b.to_owned()),
                None => (String::new(), path.clone()),
            };
            let mut meta = Meta {
                mode: *rng.pick(&[0o644, 0o755, 0o600, 0o700, 0o4755, 0o1777]),
                uid: *rng.pick(&[0, 1000]),
                gid: *rng.pick(&[0, 100]),
                mtime: *rng.pick(&[1_000_000_000, 1_500_000_000]),
                xattrs: Vec::new(),
            };
            let (name, kind) = match rng.below(100) {
                0..=19 if !path.ends_with('f') && !path.ends_with('g') => (format!("{path}/"), Kind::Dir),
                0..=19 => continue,
                20..=44 => {
                    if rng.below(3) == 0 {
                        meta.xattrs
                            .push(("user.k".into(), rng.pick(&[&b"1"[..], b"22"]).to_vec()));
                    }
                    let big = vec![b'z'; 600 + rng.below(2) * 4000];
                    let body = rng
                        .pick(&[b"".to_vec(), b"x".to_vec(), b"hello\n".to_vec(), big])
                        .clone();
                    (path.clone(), Kind::File(body))
                }
                45..=51 => (
                    path.clone(),
                    Kind::Symlink(rng.pick(&["a", "../b", "/c", "x/y"]).to_string()),
                ),
                52..=69 => {
                    // Mostly a path written before, so that most links resolve.
                    let written: Vec<&String> = model.iter().filter(|(_, dir)| !**dir).map(|(p, _)| p).collect();
                    let target = if !written.is_empty() && rng.below(10) != 0 {
                        rng.pick(&written).to_string()
                    } else {
                        let depth = 1 + rng.below(3);
                        (0..depth).map(|_| *rng.pick(&NAMES)).collect::<Vec<_>>().join("/")
                    };
                    if below_symlink(&tainted, &format!("{target}/")) {
                        continue;
                    }
                    // Half the links carry their target's metadata, as tar
                    // writers do; the rest their own, which containerd
                    // applies to the shared inode.
                    if let Some(m) = last.get(&target).filter(|_| rng.below(2) == 0) {
                        meta = m.clone();
                    }
                    (path.clone(), Kind::Link(target))
                }
                70..=81 => (format!("{parent}.wh.{base}"), Kind::Marker),
                82..=87 => {
                    let dir = if rng.below(4) == 0 {
                        String::new()
                    } else {
                        format!("{path}/")
                    };
                    (format!("{dir}.wh..wh..opq"), Kind::Marker)
                }
                88..=92 => (path.clone(), Kind::Fifo),
                93..=96 => (path.clone(), Kind::Char(1, *rng.pick(&[3, 5]))),
                _ => (path.clone(), Kind::Block(7, *rng.pick(&[0, 1]))),
            };
            if below_symlink(&tainted, &name) {
                continue;
            }
            let parts: Vec<&str> = name.trim_end_matches('/').split('/').collect();
            let below_leaf = (1..parts.len()).any(|n| model.get(&parts[..n].join("/")) == Some(&false));
            if below_leaf && rng.below(20) != 0 {
                continue;
            }
            // containerd sets each directory's mtime at the end of its layer,
            // through the path as it is then: no entry removes or replaces a
            // directory named earlier in the layer, or a parent of one.
            let named_dirs: Vec<&str> = layer
                .iter()
                .filter(|e| matches!(e.kind, Kind::Dir))
                .map(|e| e.name.trim_end_matches('/'))
                .collect();
            let covers = |p: &str, d: &str| d == p || d.starts_with(&format!("{p}/"));
            let clash = match &kind {
                Kind::Dir => false,
                Kind::Marker if name.ends_with(".wh..wh..opq") => {
                    // The walk removes implicit parents of named directories.
                    let q = name.trim_end_matches(".wh..wh..opq");
                    named_dirs
                        .iter()
                        .any(|d| d.starts_with(q) && d[q.len()..].contains('/'))
                }
                _ => named_dirs.iter().any(|d| covers(&path, d)),
            };
            if clash {
                continue;
            }
            match &kind {
                Kind::Marker => meta = Meta::default(),
                Kind::Symlink(_) => {
                    tainted.insert(path.clone());
                }
                Kind::Link(target) if tainted.contains(target) => {
                    tainted.insert(path.clone());
                }
                _ => {}
            }
            let removes = |model: &mut BTreeMap<String, bool>, p: &str| {
                model.retain(|k, _| k != p && !k.starts_with(&format!("{p}/")));
            };
            match &kind {
                Kind::Dir => {
                    if model.get(&path) == Some(&false) {
                        removes(&mut model, &path);
                    }
                    for n in 1..=parts.len() {
                        model.insert(parts[..n].join("/"), true);
                    }
                }
                Kind::Marker if name.ends_with(".wh..wh..opq") => {}
                Kind::Marker => removes(&mut model, &path),
                _ => {
                    removes(&mut model, &path);
                    for n in 1..parts.len() {
                        model.insert(parts[..n].join("/"), true);
                    }
                    model.insert(path.clone(), false);
                }
            }
            if !matches!(kind, Kind::Marker) {
                last.insert(path.clone(), meta.clone());
            }
            layer.push(Entry { name, kind, meta });
        }
        layers.push(layer);
    }
    layers
}

/// One path's description, and the hard-link groups (paths of one inode).
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    paths: BTreeMap<String, String>,
    links: BTreeSet<Vec<String>>,
}

fn describe(kind: &str, mode: Option<u32>, uid: u32, gid: u32, mtime: Option<i64>, rest: &str) -> String {
    let mode = mode.map_or("-".into(), |m| format!("{m:o}"));
    let mtime = mtime.map_or("-".into(), |m| m.to_string());
    format!("{kind} mode={mode} owner={uid}:{gid} mtime={mtime} {rest}")
}

fn shown_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let user: Vec<String> = xattrs
        .iter()
        .filter(|(k, _)| k.starts_with(b"user."))
        .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
        .collect();
    format!("xattrs=[{}]", user.join(","))
}

fn strata_listing(tree: &Tree) -> Listing {
    let mut paths = BTreeMap::new();
    let mut groups: HashMap<LeafId, Vec<String>> = HashMap::new();
    let mut stack = vec![(String::new(), &tree.root)];
    while let Some((prefix, dir)) = stack.pop() {
        for (name, node) in dir.entries.iter() {
            let path = format!("{prefix}{}", String::from_utf8_lossy(name));
            let desc = match node {
                Node::Dir(child) => {
                    let s = &child.stat;
                    stack.push((format!("{path}/"), child));
                    describe("dir", Some(s.mode), s.uid, s.gid, None, &shown_xattrs(&s.xattrs))
                }
                Node::Leaf(id) => {
                    groups.entry(*id).or_default().push(path.clone());
                    let leaf = tree.leaf(*id);
                    let s: &Stat = &leaf.stat;
                    let x = shown_xattrs(&s.xattrs);
                    let t = Some(s.mtime_sec);
                    match &leaf.content {
                        Content::File(FileData::Inline(data)) => describe(
                            "file",
                            Some(s.mode),
                            s.uid,
                            s.gid,
                            t,
                            &format!("{} {x}", Digest::of(data)),
                        ),
                        Content::File(FileData::Object { digest, .. }) => {
                            describe("file", Some(s.mode), s.uid, s.gid, t, &format!("{digest} {x}"))
                        }
                        Content::File(FileData::Missing { .. }) => unreachable!("imports never leave a file missing"),
                        Content::Symlink(target) => {
                            let rest = format!("-> {} {x}", String::from_utf8_lossy(target));
                            describe("symlink", None, s.uid, s.gid, t, &rest)
                        }
                        Content::CharDevice(rdev) => {
                            describe("char", Some(s.mode), s.uid, s.gid, t, &format!("{rdev} {x}"))
                        }
                        Content::BlockDevice(rdev) => {
                            describe("block", Some(s.mode), s.uid, s.gid, t, &format!("{rdev} {x}"))
                        }
                        Content::Fifo => describe("fifo", Some(s.mode), s.uid, s.gid, t, &x),
                        Content::Socket => describe("socket", Some(s.mode), s.uid, s.gid, t, &x),
                    }
                }
                Node::Whiteout => "whiteout in a merged tree".into(),
            };
            paths.insert(path, desc);
        }
    }
    let links = groups
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    Listing { paths, links }
}

fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        out.insert(name.to_vec(), value[..len].to_vec());
    }
    out
}

fn containerd_listing(root: &Path) -> Listing {
    let mut paths = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((prefix, dir)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let full = entry.path();
            let path = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let m = std::fs::symlink_metadata(&full).unwrap();
            let ft = m.file_type();
            let (mode, t) = (Some(m.mode() & 0o7777), Some(m.mtime()));
            let x = shown_xattrs(&user_xattrs(&full));
            if !ft.is_dir() && m.nlink() > 1 {
                groups.entry((m.dev(), m.ino())).or_default().push(path.clone());
            }
            let desc = if ft.is_dir() {
                stack.push((format!("{path}/"), full.clone()));
                describe("dir", mode, m.uid(), m.gid(), None, &x)
            } else if ft.is_file() {
                let data = std::fs::read(&full).unwrap();
                describe("file", mode, m.uid(), m.gid(), t, &format!("{} {x}", Digest::of(&data)))
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&full).unwrap();
                describe(
                    "symlink",
                    None,
                    m.uid(),
                    m.gid(),
                    t,
                    &format!("-> {} {x}", target.display()),
                )
            } else if ft.is_char_device() {
                describe("char", mode, m.uid(), m.gid(), t, &format!("{} {x}", m.rdev()))
            } else if ft.is_block_device() {
                describe("block", mode, m.uid(), m.gid(), t, &format!("{} {x}", m.rdev()))
            } else if ft.is_fifo() {
                describe("fifo", mode, m.uid(), m.gid(), t, &x)
            } else {
                describe("socket", mode, m.uid(), m.gid(), t, &x)
            };
            paths.insert(path, desc);
        }
    }
    let links = groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    Listing { paths, links }
}

/// Imports and merges `tars` with strata, as a pull does.
fn strata_apply(store: &Store, tars: &[Vec<u8>]) -> Result<Tree, String> {
    let mut tree = Tree::new(Stat::default_dir());
    let progress = Arc::new(Progress::default());
    for tar in tars {
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: format!("sha256:{}", hex(&Sha256::digest(tar))),
            size: tar.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        let reader = Box::new(std::io::Cursor::new(tar.clone()));
        let import =
            import_layer(store, &desc, None, reader, &Limits::default(), &progress).map_err(|e| e.to_string())?;
        merge_layer(&mut tree, import.tree).map_err(|e| e.to_string())?;
    }
    tree.compact();
    Ok(tree)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the Go helper against Debian's containerd sources.
fn build_applier(work: &Path) -> PathBuf {
    let pkg = work.join("gopath/src/strata.test/applier");
    std::fs::create_dir_all(&pkg).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/applier/main.go");
    std::fs::copy(src, pkg.join("main.go")).unwrap();
    let bin = work.join("applier");
    let cache = std::env::var("GOCACHE").unwrap_or_else(|_| "/var/cache/strata-test/gocache".into());
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&pkg)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", work.join("gopath").display()))
        .env("GOCACHE", cache)
        .output()
        .expect("go is installed (golang-go, golang-github-containerd-containerd-dev)");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Applies every case with containerd; Ok(()) or the error, per case dir.
fn containerd_apply_all(applier: &Path, cases: &[PathBuf]) -> HashMap<PathBuf, Result<(), String>> {
    let out = Command::new(applier).args(cases).output().unwrap();
    assert!(
        out.status.success(),
        "applier: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut results = HashMap::new();
    for line in stdout.lines() {
        let (dir, result) = match line.split_once(" error: ") {
            Some((dir, err)) => (dir, Err(err.to_owned())),
            None => (line.strip_suffix(" ok").expect("ok or error"), Ok(())),
        };
        results.insert(PathBuf::from(dir), result);
    }
    assert_eq!(results.len(), cases.len(), "{stdout}");
    results
}

fn show(layers: &Layers) -> String {
    let mut out = String::new();
    for (i, layer) in layers.iter().enumerate() {
        out += &format!("layer {i}:\n");
        for e in layer {
            let kind = match &e.kind {
                Kind::File(data) => format!("File({} bytes)", data.len()),
                other => format!("{other:?}"),
            };
            let m = &e.meta;
            out += &format!(
                "  {} {kind} {:o} {}:{} {} {:?}\n",
                e.name, m.mode, m.uid, m.gid, m.mtime, m.xattrs
            );
        }
    }
    out
}

/// Runs `sequences` through both appliers and returns the failures and
/// how many sequences both accepted.
fn compare(sequences: &[Layers]) -> (Vec<String>, usize) {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let applier = build_applier(work.path());
    let mut cases = Vec::new();
    let mut tars = Vec::new();
    for (i, layers) in sequences.iter().enumerate() {
        let dir = work.path().join(format!("case-{i}"));
        std::fs::create_dir(&dir).unwrap();
        let case_tars: Vec<Vec<u8>> = layers.iter().map(|l| tar_of(l)).collect();
        for (n, tar) in case_tars.iter().enumerate() {
            std::fs::write(dir.join(format!("{n}.tar")), tar).unwrap();
        }
        cases.push(dir);
        tars.push(case_tars);
    }
    let results = containerd_apply_all(&applier, &cases);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for result in results.values() {
        if let Err(e) = result {
            *reasons
                .entry(e.rsplit(": ").next().unwrap_or(e).to_owned())
                .or_default() += 1;
        }
    }
    eprintln!("applier_diff: containerd refusals by cause: {reasons:?}");
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for (i, dir) in cases.iter().enumerate() {
        let theirs = &results[dir];
        let ours = strata_apply(&store, &tars[i]);
        let verdict = match (theirs, &ours) {
            (Err(_), Err(_)) => None,
            (Ok(()), Ok(tree)) => {
                accepted += 1;
                let (a, b) = (containerd_listing(&dir.join("out")), strata_listing(tree));
                (a != b).then(|| format!("containerd: {a:#?}\nstrata: {b:#?}"))
            }
            (Err(e), Ok(_)) => Some(format!("containerd refused ({e}), strata accepted")),
            (Ok(()), Err(e)) => Some(format!("strata refused ({e}), containerd accepted")),
        };
        if let Some(why) = verdict {
            failures.push(format!("case {i}:\n{}{why}", show(&sequences[i])));
        }
    }
    (failures, accepted)
}

#[test]
fn random_layer_sequences_match_containerd() {
    let seed = env_number("STRATA_APPLIER_SEED", kill_seed());
    let count: usize = env_number("STRATA_APPLIER_CASES", 300);
    eprintln!("applier_diff: seed {seed} (STRATA_APPLIER_SEED), {count} sequences");
    let mut rng = Rng(seed);
    let sequences: Vec<Layers> = (0..count).map(|_| generate(&mut rng)).collect();
    let (failures, accepted) = compare(&sequences);
    eprintln!("applier_diff: {accepted} of {count} sequences accepted by both");
    assert!(
        accepted * 4 >= count,
        "a good share of sequences should apply: {accepted} of {count}"
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {count} differ; first:\n{}",
        failures.len(),
        failures[..failures.len().min(3)].join("\n")
    );
}

fn entry(name: &str, kind: Kind) -> Entry {
    Entry {
        name: name.into(),
        kind,
        meta: Meta {
            mode: 0o644,
            mtime: 1_000_000_000,
            ..Meta::default()
        },
    }
}

/// Issue 17: layer 2 whites out `a`, links `usr/bin/ls` to it, then writes
/// `usr/bin/ls` as a file. The file wins; the lower `a` is gone.
#[test]
fn whiteout_link_then_file_serves_the_file() {
    let layers = vec![
        vec![
            entry("a", Kind::File(b"lower a".to_vec())),
            entry("usr/bin/", Kind::Dir),
        ],
        vec![
            entry(".wh.a", Kind::Marker),
            entry("usr/bin/ls", Kind::Link("a".into())),
            entry("usr/bin/ls", Kind::File(b"real ls".to_vec())),
        ],
    ];
    // containerd refuses the link to a removed file; strata must too.
    let (failures, accepted) = compare(std::slice::from_ref(&layers));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(accepted, 0);
    // Without the whiteout, the link resolves, and the later file replaces it.
    let mut kept = layers;
    kept[1].remove(0);
    let (failures, accepted) = compare(std::slice::from_ref(&kept));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(accepted, 1);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let tars: Vec<Vec<u8>> = kept.iter().map(|l| tar_of(l)).collect();
    let tree = strata_apply(&store, &tars).unwrap();
    let listing = strata_listing(&tree);
    assert!(listing.paths["usr/bin/ls"].contains(&Digest::of(b"real ls").to_string()));
    assert!(listing.links.is_empty());
}
