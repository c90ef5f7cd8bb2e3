//! Arbitrary bytes as an EROFS image: fsck and gc read images back, so the
//! reader must reject garbage cleanly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strata_erofs::referenced_objects(data);
    // Whatever reads back may still be refused by the writer (a crafted image
    // can hold more xattrs than it takes), but must never make it panic.
    if let Ok(tree) = strata_erofs::read_tree(data) {
        let _ = strata_erofs::write_image(&tree);
    }
});
