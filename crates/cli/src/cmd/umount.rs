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
        // The image's EROFS mount goes with its last overlay.
        let _lock = lock_image_mounts(&store.root().join("mnt")).map_err(mount_error)?;
        unmount_overlay(&Kernel, &target, Some(&store.image_mount_path(&id))).map_err(mount_error)?;
    }
    let scratch = scratch_dir(config, &target);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    store.remove_root(&root)?;
    println!("unmounted {}", target.display());
    Ok(())
}
