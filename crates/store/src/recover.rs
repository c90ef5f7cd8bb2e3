//! Start-up recovery: staging left in `tmp/` by a process that died (kill -9,
//! power loss) is removed. Staging of live processes is left alone; gc under
//! the exclusive lock clears everything else.

use crate::dirfd::DirFd;
use crate::gc::read_dir;
use crate::tmp_names::{parse_tmp_name, TmpKind};
use crate::StoreError;

/// The pid that owns a `tmp/` entry strata made.
fn owner_pid(name: &str) -> Option<i32> {
    parse_tmp_name(name).map(|(_, pid)| pid)
}

/// Whether `name` in `tmp/` is a trash dir a live process is deleting.
pub(crate) fn is_live_trash(name: &str) -> bool {
    matches!(parse_tmp_name(name), Some((TmpKind::Trash, pid)) if alive(pid))
}

fn alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => rustix::process::test_kill_process(pid).is_ok(),
        None => false,
    }
}

pub(crate) fn remove_dead_staging(tmp: &DirFd) -> Result<(), StoreError> {
    for entry in read_dir(tmp.path())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else { continue };
        if alive(pid) {
            continue;
        }
        let path = entry.path();
        tracing::info!("removing staging of dead process {pid}: {}", path.display());
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove stale staging", &path, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(owner_pid("stage-123-4"), Some(123));
        assert_eq!(owner_pid("image-77-abcdef"), Some(77));
        assert_eq!(owner_pid("trash-9-1"), Some(9));
        assert_eq!(owner_pid("other"), None);
        assert!(alive(std::process::id() as i32));
        assert!(is_live_trash(&format!("trash-{}-3", std::process::id())));
        assert!(!is_live_trash("trash-99999999-3"));
        assert!(!is_live_trash(&format!("stage-{}-3", std::process::id())));
    }

    #[test]
    fn dead_staging_goes_live_staging_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let tmp = dir.path().join("tmp");
        // pid_max is at most 2^22, so this pid cannot be alive.
        std::fs::create_dir_all(tmp.join("stage-99999999-0")).unwrap();
        std::fs::write(tmp.join("stage-99999999-0/1"), b"partial").unwrap();
        // A stager makes its dir at its first staged file.
        let mut live = store.stager().unwrap();
        live.add_bytes(b"staged, not yet published").unwrap();
        remove_dead_staging(&DirFd::open(&tmp).unwrap()).unwrap();
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        drop(live);
    }
}
