use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use strata_image::source::{LayoutSource, RegistrySource};
use strata_image::{BlobSource, ImageRef, LayerFetch, Platform, Progress, PullOptions, PullOutcome, Received};

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
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
    /// Mount before the files arrive: write the image from its layers'
    /// TOCs, fetch each file when first opened (needs `strata serve`;
    /// docs/lazy-pulls.md). Without TOCs or serve, pulls whole.
    #[arg(long)]
    lazy: bool,
}

/// What a pull fetched, beside what its manifest announces.
#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    manifest_digest: &'a str,
    up_to_date: bool,
    /// Body bytes received from the source: manifests, config and layers
    /// (whole, or by range with their TOCs and multipart framing).
    fetched_bytes: u64,
    /// Of those, the manifests' and the config's.
    document_bytes: u64,
    /// The compressed size of the layers the manifest announces (0 when
    /// up to date: the layers are not looked at).
    announced_bytes: u64,
    layers: LayerCounts,
    files: u64,
    new_objects: u64,
    dedup_hits: u64,
    seconds: f64,
}

/// How each of the manifest's layers came in.
#[derive(Serialize, Default)]
struct LayerCounts {
    /// By range: the TOC and the files the store lacked.
    partial: u64,
    whole: u64,
    /// Only the TOC was read (the store had every file), or nothing.
    present: u64,
}

impl<'a> Report<'a> {
    fn new(outcome: &'a PullOutcome, received: &Received, progress: &Progress, seconds: f64) -> Self {
        let mut layers = LayerCounts::default();
        for digest in &outcome.record.layers {
            match received.blob(digest).fetch() {
                LayerFetch::Partial => layers.partial += 1,
                LayerFetch::Whole => layers.whole += 1,
                LayerFetch::Present => layers.present += 1,
            }
        }
        Report {
            name: &outcome.record.name,
            manifest_digest: &outcome.record.manifest_digest,
            up_to_date: outcome.up_to_date,
            fetched_bytes: received.total(),
            document_bytes: Progress::get(&received.documents),
            announced_bytes: Progress::get(&progress.bytes_total),
            layers,
            files: Progress::get(&progress.files),
            new_objects: Progress::get(&progress.new_objects),
            dedup_hits: Progress::get(&progress.dedup_hits),
            seconds,
        }
    }

    /// `fetched 2.4 MiB (2515468 B) of 67.8 MiB announced; layers: ...`
    fn fetched_line(&self) -> String {
        let l = &self.layers;
        format!(
            "fetched {} ({} B) of {} announced; layers: {} partial, {} whole, {} present",
            human(self.fetched_bytes),
            self.fetched_bytes,
            human(self.announced_bytes),
            l.partial,
            l.whole,
            l.present
        )
    }
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let reference: ImageRef = args.reference.parse().map_err(crate::usage)?;
    let received = Arc::new(Received::per_blob());
    let source: Box<dyn BlobSource> = match &reference {
        ImageRef::Layout { dir, tag } => {
            Box::new(LayoutSource::new(dir, tag.as_deref()).with_received(received.clone()))
        }
        ImageRef::Registry(r) => {
            let mut registry = config.registry_config()?;
            if let Some(creds) = &args.creds {
                let (user, pass) = creds.split_once(':').context("--creds takes USER:PASSWORD")?;
                let owned = Arc::into_inner(registry).context("the registry config is not shared yet")?;
                registry = Arc::new(owned.with_basic(user.to_owned(), pass.to_owned()));
            }
            Box::new(RegistrySource::new(r.clone(), registry)?.with_received(received.clone()))
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
        partial: config.pull.policy(args.partial),
    };
    if args.lazy && super::lazy::pull(&store, source.as_ref(), &reference, &options, &received, args.json)? {
        return Ok(());
    }
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let outcome = {
        let _ticker = Ticker::start(progress.clone());
        strata_image::pull(&store, source.as_ref(), &options, &progress)
            .with_context(|| format!("pulling {}", source.describe()))?
    };
    // A lazily pulled image that is still incomplete is "up to date" by
    // its manifest: a plain pull fetches what it misses and completes it.
    if outcome.up_to_date && super::lazy::complete_pull(config, &store, &outcome.record, args.json)? {
        return Ok(());
    }
    let report = Report::new(&outcome, &received, &progress, started.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if outcome.up_to_date {
        println!(
            "{} is up to date ({})",
            outcome.record.name, outcome.record.manifest_digest
        );
        return Ok(());
    }
    println!(
        "pulled {} ({}) in {:.2}s: {} logical in {} files, image {}, {}\n{}",
        outcome.record.name,
        outcome.record.manifest_digest,
        report.seconds,
        human(outcome.record.logical_bytes),
        outcome.record.files,
        human(outcome.image_bytes),
        Ticker::line(&progress),
        report.fetched_line(),
    );
    Ok(())
}
