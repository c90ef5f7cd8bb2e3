//! What the store holds, per image and in total: the numbers `strata df`
//! prints and `strata serve`'s metrics export. Reads the DB and stats the
//! EROFS image files; takes no store lock.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use strata_store::Store;
use strata_tree::Digest;

#[derive(Serialize)]
pub struct ImageUsage {
    pub name: String,
    /// Bytes of file content the image presents.
    pub logical_bytes: u64,
    /// Bytes of the distinct objects it references, plus its EROFS image.
    pub stored_bytes: u64,
    /// Of those, bytes no other image shares.
    pub exclusive_bytes: u64,
    pub erofs_bytes: u64,
    pub objects: u64,
}

pub struct StoreUsage {
    /// Named images, then EROFS images only snapshots hold.
    pub images: Vec<ImageUsage>,
    /// Each distinct image counted once however many names it has.
    pub logical_bytes: u64,
    /// Distinct objects the listed images reference.
    pub objects: u64,
    pub object_bytes: u64,
    pub erofs_bytes: u64,
}

impl StoreUsage {
    /// Distinct object bytes plus EROFS images of the listed images.
    pub fn stored_bytes(&self) -> u64 {
        self.object_bytes + self.erofs_bytes
    }

    /// Logical bytes over stored bytes (1 for an empty store).
    pub fn dedup_ratio(&self) -> f64 {
        match self.stored_bytes() {
            0 => 1.0,
            stored => self.logical_bytes as f64 / stored as f64,
        }
    }
}

/// Measures every named image and every EROFS image a snapshot holds
/// (containerd's layers; their logical bytes are the sum of their objects).
pub fn measure(store: &Store) -> anyhow::Result<StoreUsage> {
    let mut listed: Vec<(String, Digest, Option<u64>)> = Vec::new();
    for image in store.images()? {
        listed.push((image.name.clone(), image.erofs_id()?, Some(image.logical_bytes)));
    }
    let named: HashSet<Digest> = listed.iter().map(|(_, id, _)| *id).collect();
    for id in store.live_images()? {
        if !named.contains(&id) {
            listed.push((format!("snapshot:{}", &id.to_hex()[..12]), id, None));
        }
    }
    let mut users: HashMap<Digest, u32> = HashMap::new();
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut erofs_seen = HashSet::new();
    let mut erofs_total = 0;
    let mut logical_total = 0;
    let mut per_image = Vec::new();
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
    let images = per_image
        .into_iter()
        .map(|(name, logical_bytes, objects, erofs_bytes)| {
            let referenced: u64 = objects.iter().map(|o| o.size).sum();
            let exclusive: u64 = objects.iter().filter(|o| users[&o.digest] == 1).map(|o| o.size).sum();
            ImageUsage {
                name,
                logical_bytes,
                stored_bytes: referenced + erofs_bytes,
                exclusive_bytes: exclusive,
                erofs_bytes,
                objects: objects.len() as u64,
            }
        })
        .collect();
    Ok(StoreUsage {
        images,
        logical_bytes: logical_total,
        objects: sizes.len() as u64,
        object_bytes: sizes.values().sum(),
        erofs_bytes: erofs_total,
    })
}
