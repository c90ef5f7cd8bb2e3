use std::io::Write;
use std::os::unix::fs::symlink;

use super::*;
use crate::hash_file;

fn digest_of(path: &Path) -> Digest {
    hash_file(path).unwrap().0
}

fn meta(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap()
}

#[test]
fn files_closed_during_the_watch_are_hashed_where_they_lie() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("before"), b"written before the watch").unwrap();
    let watch = Prehash::watch(root).unwrap();
    std::fs::write(root.join("top"), vec![1u8; 10_000]).unwrap();
    // A directory made after the watch, and one below it, right away.
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/deep"), vec![2u8; 70_000]).unwrap();
    std::fs::write(root.join("a/empty"), b"").unwrap();
    let got = watch.finish_queued();
    for name in ["before", "top", "a/b/deep", "a/empty"] {
        let path = root.join(name);
        assert_eq!(got.get(&meta(&path)), Some(digest_of(&path)), "{name}");
    }
    assert_eq!(got.len(), 4);
}

#[test]
fn a_file_written_again_after_its_hash_gets_the_new_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let watch = Prehash::watch(dir.path()).unwrap();
    std::fs::write(&path, vec![1u8; 5000]).unwrap();
    // Same size, other bytes: only the events can tell.
    std::fs::write(&path, vec![9u8; 5000]).unwrap();
    let got = watch.finish_queued();
    assert_eq!(got.get(&meta(&path)), Some(digest_of(&path)));
}

#[test]
fn a_file_still_open_for_writing_has_no_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let watch = Prehash::watch(dir.path()).unwrap();
    std::fs::write(&path, vec![1u8; 5000]).unwrap();
    let mut open = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    open.write_all(&[7u8; 100]).unwrap();
    let got = watch.finish_queued();
    assert_eq!(got.get(&meta(&path)), None);
    drop(open);
}

#[test]
fn a_size_other_than_the_hashed_one_is_no_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let watch = Prehash::watch(dir.path()).unwrap();
    std::fs::write(&path, vec![1u8; 5000]).unwrap();
    let got = watch.finish_queued();
    let hashed = meta(&path);
    // Grown with the watch gone: the size no longer matches.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert!(got.get(&hashed).is_some());
    assert_eq!(got.get(&meta(&path)), None);
}

#[test]
fn symlinks_fifos_and_paths_leading_outside_are_never_opened() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"not below the root").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        outside.path().join("pipe"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    symlink(outside.path(), root.join("out")).unwrap();
    symlink(outside.path().join("pipe"), root.join("pipe-link")).unwrap();
    let fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let mut got = Prehashed::default();
    for rel in ["out/secret", "pipe-link", "out/pipe", "../x"] {
        hash_one(&fd, Path::new(rel), &mut got);
    }
    assert!(got.is_empty(), "{got:?}");
    // The watch itself copes with them too, and with a fifo below the root.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let watch = Prehash::watch(root).unwrap();
    std::fs::write(root.join("plain"), b"0123456789").unwrap();
    let got = watch.finish_queued();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got.get(&meta(&root.join("plain"))),
        Some(digest_of(&root.join("plain")))
    );
}

#[test]
fn dropping_a_watch_stops_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Prehash::watch(dir.path()).unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    drop(watch);
    assert!(Prehash::watch(&dir.path().join("missing")).is_err());
}

#[test]
fn finishing_early_keeps_only_digests_that_are_right() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Prehash::watch(dir.path()).unwrap();
    let paths: Vec<PathBuf> = (0..300u32)
        .map(|i| {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, vec![(i % 251) as u8; 3000]).unwrap();
            std::fs::write(&path, vec![(i % 7) as u8; 3000]).unwrap();
            path
        })
        .collect();
    let got = watch.finish();
    for path in &paths {
        if let Some(digest) = got.get(&meta(path)) {
            assert_eq!(digest, digest_of(path), "{}", path.display());
        }
    }
}

#[test]
fn a_large_unpack_is_flushed_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Prehash::watch(dir.path()).unwrap();
    for i in 0..3u8 {
        std::fs::write(dir.path().join(format!("f{i}")), vec![i; 20 << 20]).unwrap();
    }
    let got = watch.finish_queued();
    assert_eq!(got.len(), 3);
    assert!(got.early_flushes >= 1, "60 MiB hashed with no early flush");
}

#[test]
fn a_small_unpack_leaves_the_flush_to_commit() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Prehash::watch(dir.path()).unwrap();
    std::fs::write(dir.path().join("f"), vec![1u8; 1 << 20]).unwrap();
    let got = watch.finish_queued();
    assert_eq!((got.len(), got.early_flushes), (1, 0));
}

/// Jobs find files by name when they run. A name hashed once, then
/// removed, may leave its inode free for a file whose own events were
/// spent on a name that points elsewhere by then: the digest goes with the
/// name. (Here the inode keeps a second name, `y`, to be looked up.)
#[test]
fn a_removed_name_takes_its_digest_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = rustix::fs::open(
        dir.path(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    std::fs::write(dir.path().join("p"), vec![1u8; 5000]).unwrap();
    let y = dir.path().join("y");
    std::fs::hard_link(dir.path().join("p"), &y).unwrap();
    let run = |jobs: Vec<Job>| {
        let (send, queued) = channel();
        for job in jobs {
            send.send(job).unwrap();
        }
        drop(send);
        hash_jobs(&root, &queued, &AtomicBool::new(false), &AtomicBool::new(false))
    };
    let hash_p = || Job::Hash("p".into());
    assert_eq!(run(vec![hash_p()]).get(&meta(&y)), Some(digest_of(&y)));
    assert_eq!(run(vec![hash_p(), Job::Unnamed("p".into())]).get(&meta(&y)), None);
    assert_eq!(run(vec![hash_p(), Job::Forget("p".into())]).get(&meta(&y)), None);
    // Another name's removal leaves it.
    let got = run(vec![hash_p(), Job::Unnamed("q".into())]);
    assert_eq!(got.get(&meta(&y)), Some(digest_of(&y)));
}

/// Through the watch: a name unlinked, and a directory renamed (which
/// moves names the watch cannot follow), leave no digest behind.
#[test]
fn unlinked_names_and_renamed_directories_leave_no_digest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let watch = Prehash::watch(root).unwrap();
    std::fs::write(root.join("p"), vec![1u8; 5000]).unwrap();
    std::fs::hard_link(root.join("p"), root.join("y")).unwrap();
    std::fs::remove_file(root.join("p")).unwrap();
    let got = watch.finish_queued();
    assert_eq!(got.get(&meta(&root.join("y"))), None);

    let watch = Prehash::watch(root).unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    std::fs::write(root.join("a/f"), vec![3u8; 5000]).unwrap();
    std::fs::write(root.join("kept"), vec![4u8; 5000]).unwrap();
    std::fs::rename(root.join("a"), root.join("b")).unwrap();
    let got = watch.finish_queued();
    assert!(got.is_empty(), "{} digests", got.len());
}
