//! Arbitrary bytes as an EROFS image: fsck and gc read images back, so the
//! reader must reject garbage cleanly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strata_erofs::referenced_objects(data);
});
