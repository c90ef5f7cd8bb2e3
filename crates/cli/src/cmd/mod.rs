//! One file per verb: parse arguments, call the libraries, print.

pub mod convert;
pub mod df;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod lazy;
pub mod lazy_daemon;
pub mod lazy_server;
pub mod mount;
pub mod pull;
pub mod rmi;
pub mod serve;
pub mod umount;
pub mod version;

use strata_store::{ImageRecord, Store};

/// The image a user's name means: its normalised form (`:latest`,
/// Docker Hub's `library/`), else the name as given.
pub fn find_image(store: &Store, name: &str) -> anyhow::Result<Option<ImageRecord>> {
    let normal = strata_image::normalize_name(name);
    if let Some(record) = store.image(&normal)? {
        return Ok(Some(record));
    }
    Ok(store.image(name)?)
}

/// A mount error, saying that root is needed when the kernel said EPERM.
pub fn mount_error(e: strata_mount::MountError) -> anyhow::Error {
    use strata_mount::MountError as E;
    let denied = match &e {
        E::Mount { errno, .. } | E::Option { errno, .. } | E::Unmount { errno, .. } => errno.raw_os_error() == Some(1),
        E::NoFilesystem { .. } | E::Busy { .. } => false,
    };
    if denied {
        anyhow::Error::new(e).context("mounting needs root (CAP_SYS_ADMIN); run strata as root")
    } else {
        e.into()
    }
}

/// Who uses each EROFS image: its image names, then other gc roots
/// (`mount:PATH`, `snapshot KEY`).
pub fn image_users(store: &Store) -> anyhow::Result<std::collections::HashMap<strata_tree::Digest, Vec<String>>> {
    let mut users: std::collections::HashMap<_, Vec<String>> = Default::default();
    for image in store.images()? {
        users.entry(image.erofs_id()?).or_default().push(image.name);
    }
    let keys = strata_snapshotter::keys_by_root(store)?;
    for owner in store.roots()? {
        if let Some(id) = store.root_image(&owner)? {
            let name = match keys.get(&owner) {
                Some(key) => format!("snapshot {key}"),
                None => owner,
            };
            users.entry(id).or_default().push(name);
        }
    }
    Ok(users)
}
