//! The kernel ladder of this process: what the kernel offers, probed once,
//! and the rungs the `[kernel]` config then allows.

use anyhow::Context;
use strata_mount::{Kernel, Ladder, Offered};

use crate::config::Config;

/// Probes the kernel, with fs-verity tried on the store's filesystem when
/// a store is given.
pub fn offered(store: Option<&strata_store::Store>) -> anyhow::Result<Offered> {
    let empty = strata_tree::Tree::new(strata_tree::Stat::default_dir());
    let image = strata_erofs::write_image(&empty).context("writing the probe's EROFS image")?;
    let verity_file = store.map(|s| s.private_tmp_path("verity-probe"));
    strata_mount::probe(verity_file.as_deref(), &image).context("probing the kernel's features")
}

/// The rungs the config allows of what the kernel offers.
pub fn ladder(config: &Config, offered: &Offered) -> anyhow::Result<Ladder> {
    let ladder = strata_mount::choose(&config.kernel.ladder_config()?, offered)?;
    tracing::debug!(?offered, %ladder, "kernel ladder");
    Ok(ladder)
}

/// The kernel mounter with the rungs chosen for this store.
pub fn mounter(config: &Config, store: &strata_store::Store) -> anyhow::Result<Kernel> {
    Ok(Kernel {
        ladder: ladder(config, &offered(Some(store))?)?,
    })
}
