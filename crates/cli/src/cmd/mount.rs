use std::path::PathBuf;

use anyhow::Context;
use strata_mount::{lock_image_mounts, mount_image, mount_overlay, mount_overlay_with_data, Mounter, OverlayPlan};

use crate::cmd::{find_image, mount_error};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Image name, as `strata images` lists it (`:latest` may be left out).
    image: String,
    /// Directory to mount on.
    target: PathBuf,
    /// Add a scratch upper layer (discarded by `strata umount`).
    #[arg(long)]
    writable: bool,
}

/// The gc root that keeps a mounted image alive.
pub fn root_name(target: &std::path::Path) -> String {
    format!("mount:{}", target.display())
}

/// Where a writable mount keeps its upper and work dirs.
pub fn scratch_dir(config: &Config, target: &std::path::Path) -> PathBuf {
    let key = strata_tree::Digest::of(target.as_os_str().as_encoded_bytes());
    config.root.join("rw").join(&key.to_hex()[..16])
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    let record = find_image(&store, &args.image)?
        .with_context(|| format!("no image named {:?} (see `strata images`)", args.image))?;
    if let Some(reason) = &record.broken {
        anyhow::bail!("image {} is broken ({reason}); `strata pull` it again", record.name);
    }
    let target = args
        .target
        .canonicalize()
        .with_context(|| format!("mount target {}", args.target.display()))?;
    let id = record.erofs_id()?;
    let root = root_name(&target);
    if store.root_image(&root)?.is_some() {
        anyhow::bail!(
            "{} is already a strata mount; `strata umount` it first",
            target.display()
        );
    }
    // A lazily pulled image also needs ALIASES and LAZY (`strata serve`).
    let lazy_lowers = super::lazy::lowers_for(&store, &id)?;
    let kernel = crate::kernel::mounter(config, &store)?;
    store.add_root(&root, &id, &store.image_objects(&id)?)?;
    let result = (|| -> anyhow::Result<()> {
        let meta = store.image_mount_path(&id);
        // Held until the overlay is up, so no umount of another user of
        // the image takes its EROFS mount away in between.
        let _lock = lock_image_mounts(&store.root().join("mnt")).map_err(mount_error)?;
        let fresh = mount_image(&kernel, &store.image_path(&id), &meta).map_err(mount_error)?;
        let upper = if args.writable {
            let dir = scratch_dir(config, &target);
            let (upper, work) = (dir.join("upper"), dir.join("work"));
            for d in [&upper, &work] {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            Some((upper, work))
        } else {
            None
        };
        let plan = OverlayPlan {
            meta: meta.clone(),
            data: store.objects_path(),
            upper,
        };
        let mounted = match &lazy_lowers {
            Some(more) => mount_overlay_with_data(&kernel, &plan, more, &target),
            None => mount_overlay(&kernel, &plan, &target),
        };
        if let Err(e) = mounted {
            if fresh {
                let _ = kernel.unmount(&meta);
            }
            return Err(mount_error(e));
        }
        Ok(())
    })();
    if let Err(e) = result {
        store.remove_root(&root)?;
        return Err(e);
    }
    println!("mounted {} on {}", record.name, target.display());
    Ok(())
}
