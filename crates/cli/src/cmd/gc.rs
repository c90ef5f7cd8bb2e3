use std::collections::HashSet;

use strata_mount::exec::{Kernel, Mounter};

use crate::config::Config;
use crate::draw::human;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(config: &Config, _args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    // EROFS mounts of images nothing references any more go first.
    let live: HashSet<String> = store.live_images()?.iter().map(|d| d.to_hex()).collect();
    let mnt = store.root().join("mnt");
    for entry in std::fs::read_dir(&mnt)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if live.contains(&name) {
            continue;
        }
        let path = entry.path();
        if Kernel.is_mountpoint(&path) {
            if let Err(e) = Kernel.unmount(&path) {
                tracing::warn!("keeping {}: {e}", path.display());
                continue;
            }
        }
        std::fs::remove_dir(&path)?;
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
