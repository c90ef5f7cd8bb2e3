use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use strata_image::source::{LayoutSource, RegistrySource};
use strata_image::{BlobSource, ImageRef, Platform, Progress, PullOptions};

use crate::config::Config;
use crate::draw::{human, Ticker};

#[derive(clap::Args)]
pub struct Args {
    /// HOST[:PORT]/NAME[:TAG|@DIGEST] or oci:DIR[:TAG]
    reference: String,
    /// Record the image under this name instead of the reference.
    #[arg(long)]
    name: Option<String>,
    /// Registry credentials USER:PASSWORD for every host (basic; bearer
    /// tokens are fetched as needed). Without it, registry.auth_file.
    #[arg(long, env = "STRATA_REGISTRY_CREDS", hide_env_values = true)]
    creds: Option<String>,
    /// Refuse a layer that decompresses to more than this many bytes.
    #[arg(long)]
    max_layer_bytes: Option<u64>,
    /// Which layers may be pulled partially: off, toc or verified
    /// (default: the config's pull.partial_pulls).
    #[arg(long, value_name = "MODE")]
    partial: Option<strata_image::PartialPulls>,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let reference: ImageRef = args.reference.parse().map_err(crate::usage)?;
    let source: Box<dyn BlobSource> = match &reference {
        ImageRef::Layout { dir, tag } => Box::new(LayoutSource::new(dir, tag.as_deref())),
        ImageRef::Registry(r) => {
            let mut registry = config.registry_config()?;
            if let Some(creds) = &args.creds {
                let (user, pass) = creds.split_once(':').context("--creds takes USER:PASSWORD")?;
                let owned = Arc::into_inner(registry).context("the registry config is not shared yet")?;
                registry = Arc::new(owned.with_basic(user.to_owned(), pass.to_owned()));
            }
            Box::new(RegistrySource::new(r.clone(), registry)?)
        }
    };
    let store = config.open_store()?;
    let _slot = store.import_slot(config.limits.max_concurrent_imports.max(1))?;
    let mut limits = config.limits();
    if let Some(max) = args.max_layer_bytes {
        limits.max_layer_bytes = max;
    }
    let options = PullOptions {
        name: args
            .name
            .unwrap_or_else(|| strata_image::normalize_name(&args.reference)),
        limits,
        parallel_layers: config.limits.parallel_layers,
        platform: Platform::host(),
        partial: args.partial.unwrap_or(config.pull.partial_pulls),
    };
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let outcome = {
        let _ticker = Ticker::start(progress.clone());
        strata_image::pull(&store, source.as_ref(), &options, &progress)
            .with_context(|| format!("pulling {}", source.describe()))?
    };
    if outcome.up_to_date {
        println!(
            "{} is up to date ({})",
            outcome.record.name, outcome.record.manifest_digest
        );
        return Ok(());
    }
    println!(
        "pulled {} ({}) in {:.2}s: {} logical in {} files, image {}, {}",
        outcome.record.name,
        outcome.record.manifest_digest,
        started.elapsed().as_secs_f64(),
        human(outcome.record.logical_bytes),
        outcome.record.files,
        human(outcome.image_bytes),
        Ticker::line(&progress),
    );
    Ok(())
}
