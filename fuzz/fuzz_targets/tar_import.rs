//! Arbitrary bytes as a layer blob (the first byte picks the compression):
//! the import must return Ok or a clean error, never panic, and never leave
//! staging behind.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use strata_image::{import_layer, Descriptor, Limits, Progress};
use strata_store::Store;

fn store() -> &'static (Store, std::path::PathBuf) {
    static STORE: OnceLock<(Store, std::path::PathBuf)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("strata-fuzz-{}", std::process::id()));
        (Store::open(&dir).expect("store"), dir)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    let media_type = match selector % 3 {
        0 => "application/vnd.oci.image.layer.v1.tar",
        1 => "application/vnd.oci.image.layer.v1.tar+gzip",
        _ => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let desc = Descriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{}", hex::encode(Sha256::digest(blob))),
        size: blob.len() as u64,
        platform: None,
        annotations: Default::default(),
    };
    let limits = Limits {
        max_layer_bytes: 64 << 20,
        max_entries: 100_000,
        max_depth: 256,
        max_path_bytes: 4096,
        max_entries_per_image: 100_000,
    };
    let (store, dir) = store();
    let progress = Arc::new(Progress::default());
    let reader = Box::new(std::io::Cursor::new(blob.to_vec()));
    if let Ok(import) = import_layer(store, &desc, None, reader, &limits, &progress) {
        let mut tree = strata_tree::Tree::new(strata_tree::Stat::default_dir());
        if strata_tree::merge_layer(&mut tree, import.tree).is_ok() {
            tree.compact();
            let _ = strata_erofs::write_image(&tree);
        }
    }
    assert_eq!(
        std::fs::read_dir(dir.join("tmp")).map(|d| d.count()).unwrap_or(0),
        0,
        "staging left behind"
    );
});
