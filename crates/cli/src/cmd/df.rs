use serde::Serialize;

use crate::config::Config;
use crate::draw::human;
use crate::store_usage::{self, ImageUsage};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Usage {
    images: Vec<ImageUsage>,
    logical_bytes: u64,
    /// Distinct object bytes plus EROFS images of the listed images.
    stored_bytes: u64,
    object_bytes: u64,
    erofs_bytes: u64,
    objects: u64,
    /// Logical bytes over stored bytes, each distinct image counted once
    /// however many names it has.
    dedup_ratio: f64,
    /// What `strata gc` would free now: unreferenced objects and images.
    reclaimable_bytes: u64,
    reclaimable_objects: u64,
    reclaimable_images: u64,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store_read_only()?;
    let measured = store_usage::measure(&store)?;
    let reclaimable = store.gc_preview()?;
    let usage = Usage {
        logical_bytes: measured.logical_bytes,
        stored_bytes: measured.stored_bytes(),
        object_bytes: measured.object_bytes,
        erofs_bytes: measured.erofs_bytes,
        objects: measured.objects,
        dedup_ratio: measured.dedup_ratio(),
        images: measured.images,
        reclaimable_bytes: reclaimable.bytes_freed,
        reclaimable_objects: reclaimable.objects_removed,
        reclaimable_images: reclaimable.images_removed,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(());
    }
    println!(
        "{:<50} {:>10} {:>10} {:>10} {:>9}",
        "IMAGE", "LOGICAL", "STORED", "EXCLUSIVE", "EROFS"
    );
    for r in &usage.images {
        println!(
            "{:<50} {:>10} {:>10} {:>10} {:>9}",
            r.name,
            human(r.logical_bytes),
            human(r.stored_bytes),
            human(r.exclusive_bytes),
            human(r.erofs_bytes)
        );
    }
    println!(
        "total: {} logical, {} stored ({} objects in {} + {} EROFS), dedup ratio {:.2}",
        human(usage.logical_bytes),
        human(usage.stored_bytes),
        usage.objects,
        human(usage.object_bytes),
        human(usage.erofs_bytes),
        usage.dedup_ratio
    );
    println!(
        "reclaimable by `strata gc`: {} ({} objects, {} images nothing references)",
        human(usage.reclaimable_bytes),
        usage.reclaimable_objects,
        usage.reclaimable_images
    );
    Ok(())
}
