//! Image references, digests, manifests, indexes and configs from untrusted
//! text: parse cleanly or fail cleanly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<strata_image::ImageRef>();
        let _ = text.parse::<strata_tree::Digest>();
        let _ = strata_tree::split_path(text.as_bytes(), 64);
    }
    let _ = strata_image::parse_document(data, None);
    let _ = strata_image::parse_config(data);
});
