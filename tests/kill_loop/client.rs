//! The client side of the kill loop: a model of what the server
//! confirmed, the random operations, and the checks against the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use strata_grpc::api::snapshots as pb;
use strata_grpc::api::types::Mount;
use strata_tests::serve::{labels, mount_all, unmount_under, Client};
use tonic::Code;

pub(crate) const VIEW: i32 = pb::Kind::View as i32;
pub(crate) const ACTIVE: i32 = pb::Kind::Active as i32;
pub(crate) const COMMITTED: i32 = pb::Kind::Committed as i32;

/// Committed snapshots the client keeps around; above it removes leaves.
pub(crate) const KEEP_COMMITTED: usize = 6;
/// Most active snapshots at once.
pub(crate) const MAX_ACTIVE: usize = 3;
/// A pull of python runs beside the client every this many rounds.
pub(crate) const PULL_EVERY: u32 = 10;
/// The whole of minbase is compared with the oracle every this many rounds.
pub(crate) const ORACLE_EVERY: u32 = 25;

/// The LCG of crash.rs; `next` gives the high 53 bits.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub(crate) fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes()[..6]);
        }
        out.truncate(n);
        out
    }

    pub(crate) fn fork(&mut self) -> Rng {
        Rng(self.next() ^ 0x9E37_79B9_7F4A_7C15)
    }
}

/// File name -> content under `data/` of a snapshot.
pub(crate) type Files = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Debug)]
pub(crate) struct Snap {
    pub(crate) parent: String,
    pub(crate) files: Files,
}

/// What the client knows the server holds: only calls it saw succeed.
#[derive(Default)]
pub(crate) struct Model {
    pub(crate) committed: BTreeMap<String, Snap>,
    pub(crate) active: BTreeMap<String, Snap>,
    /// View key -> parent.
    pub(crate) views: BTreeMap<String, String>,
    pub(crate) next: u64,
}

impl Model {
    pub(crate) fn fresh(&mut self, what: &str) -> String {
        self.next += 1;
        format!("kl/{what}-{}", self.next)
    }

    pub(crate) fn files_of(&self, parent: &str) -> Files {
        if parent.is_empty() {
            Files::new()
        } else {
            self.committed[parent].files.clone()
        }
    }

    pub(crate) fn has_children(&self, name: &str) -> bool {
        self.committed.values().any(|s| s.parent == name)
            || self.active.values().any(|s| s.parent == name)
            || self.views.values().any(|p| p == name)
    }

    pub(crate) fn leaves(&self) -> Vec<String> {
        self.committed
            .keys()
            .filter(|n| !self.has_children(n))
            .cloned()
            .collect()
    }

    pub(crate) fn forget(&mut self, key: &str) {
        self.committed.remove(key);
        self.active.remove(key);
        self.views.remove(key);
    }

    pub(crate) fn names(&self) -> BTreeSet<String> {
        self.committed
            .keys()
            .chain(self.active.keys())
            .chain(self.views.keys())
            .cloned()
            .collect()
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Prepare { key: String, parent: String },
    Commit { name: String, key: String },
    Remove { key: String },
    View { key: String, parent: String },
    Stat { key: String },
    Usage { key: String },
    Cleanup,
}

impl Op {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Op::Prepare { .. } => "prepare",
            Op::Commit { .. } => "commit",
            Op::Remove { .. } => "remove",
            Op::View { .. } => "view",
            Op::Stat { .. } => "stat",
            Op::Usage { .. } => "usage",
            Op::Cleanup => "cleanup",
        }
    }
}

pub(crate) enum Reply {
    Mounts(Vec<Mount>),
    Info(pb::Info),
    Done,
}

pub(crate) fn call(c: &mut Client, op: &Op) -> Result<Reply, tonic::Status> {
    match op {
        Op::Prepare { key, parent } => c.prepare(key, parent, labels(&[])).map(Reply::Mounts),
        Op::Commit { name, key } => c.commit(name, key).map(|()| Reply::Done),
        Op::Remove { key } => c.remove(key).map(|()| Reply::Done),
        Op::View { key, parent } => c.view(key, parent).map(Reply::Mounts),
        Op::Stat { key } => c.stat(key).map(Reply::Info),
        Op::Usage { key } => c.usage(key).map(|_| Reply::Done),
        Op::Cleanup => c.cleanup().map(|()| Reply::Done),
    }
}

/// The client's next call, given what it knows.
pub(crate) fn choose(model: &mut Model, rng: &mut Rng) -> Op {
    // A view is only there to be read; it goes right after.
    if let Some(key) = model.views.keys().next() {
        return Op::Remove { key: key.clone() };
    }
    let committed: Vec<String> = model.committed.keys().cloned().collect();
    let active: Vec<String> = model.active.keys().cloned().collect();
    let leaves = model.leaves();
    let mut menu: Vec<(&str, u64)> = Vec::new();
    if !committed.is_empty() || !active.is_empty() {
        menu.extend([("stat", 1), ("usage", 1)]);
    }
    if active.len() < MAX_ACTIVE {
        menu.push(("prepare", 4));
    }
    if !active.is_empty() {
        menu.push(("commit", 4));
    }
    if active.len() > 1 {
        menu.push(("remove-active", 1));
    }
    if !leaves.is_empty() {
        menu.push(("remove-leaf", if committed.len() > KEEP_COMMITTED { 6 } else { 1 }));
    }
    if !committed.is_empty() {
        menu.push(("view", 2));
    }
    if rng.one_in(30) {
        menu.push(("cleanup", 100));
    }
    let total: u64 = menu.iter().map(|(_, w)| w).sum();
    let mut at = rng.below(total);
    let what = menu
        .iter()
        .find(|(_, w)| {
            if at < *w {
                true
            } else {
                at -= w;
                false
            }
        })
        .unwrap()
        .0;
    match what {
        "prepare" => {
            let parent = if committed.is_empty() || rng.one_in(4) {
                String::new()
            } else {
                rng.pick(&committed).clone()
            };
            // Half are unpack keys, whose commits finish after the reply.
            let kind = if rng.one_in(2) { "extract-a" } else { "a" };
            Op::Prepare {
                key: model.fresh(kind),
                parent,
            }
        }
        "commit" => Op::Commit {
            key: rng.pick(&active).clone(),
            name: model.fresh("c"),
        },
        "remove-active" => Op::Remove {
            key: rng.pick(&active).clone(),
        },
        "remove-leaf" => Op::Remove {
            key: rng.pick(&leaves).clone(),
        },
        "view" => Op::View {
            parent: rng.pick(&committed).clone(),
            key: model.fresh("v"),
        },
        "cleanup" => Op::Cleanup,
        kind => {
            let known: Vec<String> = committed.iter().chain(&active).cloned().collect();
            let key = rng.pick(&known).clone();
            if kind == "stat" {
                Op::Stat { key }
            } else {
                Op::Usage { key }
            }
        }
    }
}

/// Mounts a prepared snapshot, changes its `data/` (new files of random
/// sizes, most above the inline limit so they become objects; sometimes a
/// parent file rewritten, chmodded (a metadata-only copy-up) or deleted
/// (a whiteout)), unmounts. Returns what `data/` now holds.
pub(crate) fn write_layer(mounts: &[Mount], dir: &Path, mut files: Files, rng: &mut Rng, key: &str) -> Files {
    use std::os::unix::fs::PermissionsExt;
    mount_all(mounts, dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let old: Vec<String> = files.keys().cloned().collect();
    if !old.is_empty() && rng.one_in(3) {
        let name = rng.pick(&old).clone();
        let size = 100 + usize::try_from(rng.below(8000)).unwrap();
        let content = rng.bytes(size);
        std::fs::write(data.join(&name), &content).unwrap();
        files.insert(name, content);
    }
    if !old.is_empty() && rng.one_in(3) {
        let name = rng.pick(&old);
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    if !old.is_empty() && rng.one_in(4) {
        let name = rng.pick(&old);
        if files.remove(name).is_some() {
            std::fs::remove_file(data.join(name)).unwrap();
        }
    }
    let stem = key.replace('/', "_");
    for i in 0..1 + rng.below(3) {
        // Inline in the image, or an object.
        let inline = strata_erofs::INLINE_MAX as u64;
        let size = if rng.one_in(5) {
            rng.below(inline + 1)
        } else {
            inline + 1 + rng.below(20_000)
        };
        let content = rng.bytes(usize::try_from(size).unwrap());
        let name = format!("{stem}-{i}");
        std::fs::write(data.join(&name), &content).unwrap();
        files.insert(name, content);
    }
    unmount_under(dir);
    files
}

/// What `data/` of a mounted snapshot holds.
pub(crate) fn read_back(dir: &Path) -> Files {
    let data = dir.join("data");
    let entries = match std::fs::read_dir(&data) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Files::new(),
        Err(e) => panic!("reading {}: {e}", data.display()),
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

pub(crate) fn assert_files(what: &str, got: &Files, want: &Files) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let changed: Vec<String> = want
        .iter()
        .filter_map(|(k, v)| {
            let g = got.get(k)?;
            (g != v).then(|| format!("{k} ({} bytes, want {})", g.len(), v.len()))
        })
        .collect();
    panic!("{what}: data/ differs: missing {missing:?}, unexpected {extra:?}, changed {changed:?}");
}

/// Mounts a view of committed `name`, reads `data/` back, removes the view.
pub(crate) fn view_matches(c: &mut Client, view_key: &str, name: &str, want: &Files, dir: &Path, context: &str) {
    let mounts = c
        .view(view_key, name)
        .unwrap_or_else(|e| panic!("view of {name}: {e:?}"));
    mount_all(&mounts, dir);
    let got = read_back(dir);
    unmount_under(dir);
    c.remove(view_key)
        .unwrap_or_else(|e| panic!("removing view {view_key}: {e:?}"));
    assert_files(&format!("committed snapshot {name}{context}"), &got, want);
}

/// Where the kill finds the client.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) stop: bool,
    pub(crate) in_flight: Option<Op>,
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct WorkerOut {
    pub(crate) model: Model,
    /// The call the kill cut off, with the error the client got.
    pub(crate) interrupted: Option<(Op, tonic::Status)>,
    pub(crate) calls: u64,
    pub(crate) confirmed: u64,
}

/// The client: calls until the kill. Every call must succeed while the
/// server is up (it is the only client, and calls only what the model
/// allows); the one failing after the stop flag is the interrupted one.
pub(crate) fn worker(
    mut c: Client,
    mut model: Model,
    shared: Arc<Mutex<Shared>>,
    mut rng: Rng,
    dir: PathBuf,
) -> WorkerOut {
    let mut calls = 0;
    let mut confirmed = 0;
    let mut interrupted = None;
    loop {
        let op = choose(&mut model, &mut rng);
        {
            let mut s = lock(&shared);
            if s.stop {
                break;
            }
            s.in_flight = Some(op.clone());
        }
        let result = call(&mut c, &op);
        let stopped = {
            let mut s = lock(&shared);
            s.in_flight = None;
            s.stop
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(status) if stopped => {
                interrupted = Some((op, status));
                break;
            }
            Err(status) => panic!("{op:?} failed while strata serve was up: {status:?}"),
        };
        calls += 1;
        match (op, reply) {
            (Op::Prepare { key, parent }, Reply::Mounts(mounts)) => {
                let files = write_layer(&mounts, &dir, model.files_of(&parent), &mut rng, &key);
                model.active.insert(key, Snap { parent, files });
            }
            (Op::Commit { name, key }, _) => {
                let snap = model.active.remove(&key).unwrap();
                model.committed.insert(name, snap);
                confirmed += 1;
            }
            (Op::Remove { key }, _) => model.forget(&key),
            (Op::View { key, parent }, Reply::Mounts(mounts)) => {
                mount_all(&mounts, &dir);
                let got = read_back(&dir);
                unmount_under(&dir);
                assert_files(
                    &format!("view {key} of {parent} (server up)"),
                    &got,
                    &model.committed[&parent].files,
                );
                model.views.insert(key, parent);
            }
            (Op::Stat { key }, Reply::Info(info)) => {
                let (kind, parent) = match (model.committed.get(&key), model.active.get(&key)) {
                    (Some(s), _) => (COMMITTED, &s.parent),
                    (_, Some(s)) => (ACTIVE, &s.parent),
                    _ => panic!("stat of unknown {key} succeeded"),
                };
                assert_eq!((info.kind, &info.parent), (kind, parent), "stat {key}");
            }
            _ => {}
        }
    }
    WorkerOut {
        model,
        interrupted,
        calls,
        confirmed,
    }
}

/// After the restart: finds out whether the interrupted call landed and
/// retries it to success. Returns how it ended, for the table.
pub(crate) fn retry(c: &mut Client, model: &mut Model, op: &Op, rng: &mut Rng, dir: &Path) -> &'static str {
    let exists = |c: &mut Client, key: &str| -> Option<pb::Info> {
        match c.stat(key) {
            Ok(info) => Some(info),
            Err(e) if e.code() == Code::NotFound => None,
            Err(e) => panic!("stat {key} after the restart: {e:?}"),
        }
    };
    match op {
        Op::Prepare { key, parent } => {
            let landed = exists(c, key);
            if let Some(info) = &landed {
                assert_eq!((info.kind, &info.parent), (ACTIVE, parent), "half-prepared {key}");
                c.remove(key)
                    .unwrap_or_else(|e| panic!("removing half-prepared {key}: {e:?}"));
            }
            let mounts = c
                .prepare(key, parent, labels(&[]))
                .unwrap_or_else(|e| panic!("retrying prepare {key}: {e:?}"));
            let files = write_layer(&mounts, dir, model.files_of(parent), rng, key);
            model.active.insert(
                key.clone(),
                Snap {
                    parent: parent.clone(),
                    files,
                },
            );
            if landed.is_some() {
                "had landed, removed, prepared again"
            } else {
                "retried"
            }
        }
        Op::Commit { name, key } => {
            let snap = model.active.remove(key).unwrap();
            let as_name = exists(c, name);
            let as_key = exists(c, key);
            let outcome = match (&as_name, &as_key) {
                (Some(info), None) => {
                    assert_eq!((info.kind, &info.parent), (COMMITTED, &snap.parent), "{name}");
                    "had landed"
                }
                (None, Some(info)) => {
                    assert_eq!((info.kind, &info.parent), (ACTIVE, &snap.parent), "{key}");
                    c.commit(name, key)
                        .unwrap_or_else(|e| panic!("retrying commit {key} -> {name}: {e:?}"));
                    "retried"
                }
                _ => panic!("interrupted commit {key} -> {name}: key {as_key:?}, name {as_name:?}"),
            };
            let check = model.fresh("check");
            let context = format!(" ({outcome} after the kill: commit of {key})");
            view_matches(c, &check, name, &snap.files, dir, &context);
            model.committed.insert(name.clone(), snap);
            outcome
        }
        Op::Remove { key } => {
            let outcome = if exists(c, key).is_some() {
                c.remove(key).unwrap_or_else(|e| panic!("retrying remove {key}: {e:?}"));
                "retried"
            } else {
                "had landed"
            };
            model.forget(key);
            outcome
        }
        Op::View { key, parent } => {
            let landed = exists(c, key);
            if let Some(info) = &landed {
                assert_eq!((info.kind, &info.parent), (VIEW, parent), "half-made view {key}");
                c.remove(key).unwrap_or_else(|e| panic!("removing view {key}: {e:?}"));
            }
            let want = model.committed[parent].files.clone();
            view_matches(c, key, parent, &want, dir, " (view retried after the kill)");
            if landed.is_some() {
                "had landed, removed, viewed again"
            } else {
                "retried"
            }
        }
        Op::Stat { key } => {
            c.stat(key).unwrap_or_else(|e| panic!("retrying stat {key}: {e:?}"));
            "retried"
        }
        Op::Usage { key } => {
            c.usage(key).unwrap_or_else(|e| panic!("retrying usage {key}: {e:?}"));
            "retried"
        }
        Op::Cleanup => {
            c.cleanup().unwrap_or_else(|e| panic!("retrying cleanup: {e:?}"));
            "retried"
        }
    }
}

/// Every snapshot the client knows of is there, as it left it; committed
/// ones read back through a View mount; nothing else is listed.
pub(crate) fn verify_model(c: &mut Client, model: &mut Model, dir: &Path, round: u32) {
    let committed: Vec<(String, Snap)> = model.committed.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
    for (name, snap) in &committed {
        let info = c
            .stat(name)
            .unwrap_or_else(|e| panic!("round {round}: committed {name} is gone after the restart: {e:?}"));
        assert_eq!((info.kind, &info.parent), (COMMITTED, &snap.parent), "{name}");
        let check = model.fresh("check");
        view_matches(
            c,
            &check,
            name,
            &snap.files,
            dir,
            &format!(" (round {round}, after the restart)"),
        );
    }
    for (key, snap) in &model.active {
        let info = c
            .stat(key)
            .unwrap_or_else(|e| panic!("round {round}: active {key} is gone after the restart: {e:?}"));
        assert_eq!((info.kind, &info.parent), (ACTIVE, &snap.parent), "{key}");
    }
    for (key, parent) in &model.views {
        let info = c
            .stat(key)
            .unwrap_or_else(|e| panic!("round {round}: view {key} is gone after the restart: {e:?}"));
        assert_eq!((info.kind, &info.parent), (VIEW, parent), "{key}");
    }
    let listed: BTreeSet<String> = c.list().into_iter().map(|i| i.name).collect();
    assert_eq!(listed, model.names(), "round {round}: the server lists other snapshots");
}
