use std::collections::HashSet;

use strata_mount::exec::Kernel;
use strata_mount::{lock_image_mounts, release_image_mounts};

use crate::config::Config;
use crate::draw::human;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(config: &Config, _args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    // EROFS mounts of images nothing references any more go first.
    let live: HashSet<String> = store.live_images()?.iter().map(|d| d.to_hex()).collect();
    let mnt = store.root().join("mnt");
    {
        let _lock = lock_image_mounts(&mnt)?;
        release_image_mounts(&Kernel::default(), &mnt, |id| live.contains(id))?;
    }
    let report = store.gc()?;
    println!(
        "gc: removed {} objects, {} images, {} temp entries; freed {}",
        report.objects_removed,
        report.images_removed,
        report.tmp_removed,
        human(report.bytes_freed)
    );
    Ok(())
}
