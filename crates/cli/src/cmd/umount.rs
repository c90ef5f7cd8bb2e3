use std::path::PathBuf;

use anyhow::Context;
use strata_mount::exec::Kernel;
use strata_mount::{lock_image_mounts, unmount_overlay};

use crate::cmd::mount::{root_name, scratch_dir};
use crate::cmd::mount_error;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// A directory `strata mount` mounted on.
    target: PathBuf,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    let target = args
        .target
        .canonicalize()
        .with_context(|| format!("mount target {}", args.target.display()))?;
    let root = root_name(&target);
    let id = store
        .root_image(&root)?
        .with_context(|| format!("{} is not a strata mount", target.display()))?;
    if strata_sys::is_mountpoint(&target) {
        // The image's EROFS mount goes with its last overlay, unless a
        // snapshot of `strata serve` uses it: containerd mounts those
        // overlays later, and serve releases the mount itself.
        let _lock = lock_image_mounts(&store.root().join("mnt")).map_err(mount_error)?;
        let image_mount = store.image_mount_path(&id);
        let keep = used_by_snapshots(&store, &id)?;
        unmount_overlay(&Kernel::default(), &target, (!keep).then_some(image_mount.as_path())).map_err(mount_error)?;
    }
    let scratch = scratch_dir(config, &target);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    store.remove_root(&root)?;
    println!("unmounted {}", target.display());
    Ok(())
}

fn used_by_snapshots(store: &strata_store::Store, id: &strata_tree::Digest) -> anyhow::Result<bool> {
    for root in strata_snapshotter::keys_by_root(store)?.keys() {
        if store.root_image(root)?.as_ref() == Some(id) {
            return Ok(true);
        }
    }
    Ok(false)
}
