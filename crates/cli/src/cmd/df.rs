use std::collections::{HashMap, HashSet};

use serde::Serialize;
use strata_tree::Digest;

use crate::config::Config;
use crate::draw::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ImageUsage {
    name: String,
    /// Bytes of file content the image presents.
    logical_bytes: u64,
    /// Bytes of the distinct objects it references, plus its EROFS image.
    stored_bytes: u64,
    /// Of those, bytes no other image shares.
    exclusive_bytes: u64,
    erofs_bytes: u64,
    objects: u64,
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
    let images = store.images()?;
    let mut per_image = Vec::new();
    let mut users: HashMap<Digest, u32> = HashMap::new();
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut erofs_seen = HashSet::new();
    let mut erofs_total = 0;
    let mut logical_total = 0;
    // Named images, then EROFS images only snapshots hold (containerd's
    // layers); for those, logical bytes are the sum of their objects.
    let mut listed: Vec<(String, Digest, Option<u64>)> = Vec::new();
    for image in &images {
        listed.push((image.name.clone(), image.erofs_id()?, Some(image.logical_bytes)));
    }
    let named: HashSet<Digest> = listed.iter().map(|(_, id, _)| *id).collect();
    for id in store.live_images()? {
        if !named.contains(&id) {
            listed.push((format!("snapshot:{}", &id.to_hex()[..12]), id, None));
        }
    }
    for (name, id, logical) in listed {
        let objects = store.image_objects(&id)?;
        let erofs_bytes = std::fs::metadata(store.image_path(&id)).map_or(0, |m| m.len());
        let logical = logical.unwrap_or_else(|| objects.iter().map(|o| o.size).sum());
        // Another name for an image already listed adds no bytes.
        if erofs_seen.insert(id) {
            erofs_total += erofs_bytes;
            logical_total += logical;
            for o in &objects {
                *users.entry(o.digest).or_default() += 1;
                sizes.insert(o.digest, o.size);
            }
        }
        per_image.push((name, logical, objects, erofs_bytes));
    }
    let mut rows = Vec::new();
    for (name, logical_bytes, objects, erofs_bytes) in per_image {
        let referenced: u64 = objects.iter().map(|o| o.size).sum();
        let exclusive: u64 = objects.iter().filter(|o| users[&o.digest] == 1).map(|o| o.size).sum();
        rows.push(ImageUsage {
            name,
            logical_bytes,
            stored_bytes: referenced + erofs_bytes,
            exclusive_bytes: exclusive,
            erofs_bytes,
            objects: objects.len() as u64,
        });
    }
    let object_bytes: u64 = sizes.values().sum();
    let logical = logical_total;
    let stored = object_bytes + erofs_total;
    let reclaimable = store.gc_preview()?;
    let usage = Usage {
        logical_bytes: logical,
        stored_bytes: stored,
        object_bytes,
        erofs_bytes: erofs_total,
        objects: sizes.len() as u64,
        dedup_ratio: if stored == 0 {
            1.0
        } else {
            logical as f64 / stored as f64
        },
        images: rows,
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
