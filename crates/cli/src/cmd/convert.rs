use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use strata_image::convert::{
    ConvertOptions, ConvertReport, Destination, Format, LayoutDestination, RegistryDestination,
};
use strata_image::source::{LayoutSource, RegistryConfig, RegistrySource, RegistryTarget};
use strata_image::{BlobSource, ImageRef, Platform, Progress};

use crate::config::Config;
use crate::draw::human;

#[derive(clap::Args)]
pub struct Args {
    /// estargz or zstd:chunked; gzip and zstd write plain layers (no TOC),
    /// to compare with.
    #[arg(long)]
    format: Format,
    /// HOST[:PORT]/NAME[:TAG|@DIGEST] or oci:DIR[:TAG]
    source: String,
    /// HOST[:PORT]/NAME[:TAG] (pushed) or oci:DIR[:TAG] (created or added
    /// to; the tag defaults to latest).
    destination: String,
    /// Bytes of file data per chunk, each compressed on its own with its
    /// own digest in the TOC.
    #[arg(long, default_value_t = ConvertOptions::DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Compression level (gzip 0-9, default 6; zstd 1-19, default 3).
    #[arg(long)]
    level: Option<i32>,
    /// Registry credentials USER:PASSWORD for every host, source and
    /// destination. Without it, registry.auth_file.
    #[arg(long, env = "STRATA_REGISTRY_CREDS", hide_env_values = true)]
    creds: Option<String>,
    /// Refuse a layer that decompresses to more than this many bytes.
    #[arg(long)]
    max_layer_bytes: Option<u64>,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary<'a> {
    format: &'a str,
    source: String,
    destination: String,
    manifest_digest: &'a str,
    config_changed: bool,
    layers: usize,
    /// Bytes of the source layers' uncompressed tars.
    tar_bytes: u64,
    source_bytes: u64,
    output_bytes: u64,
    seconds: f64,
    /// MB (10^6 bytes) of uncompressed tar per second.
    tar_mb_per_s: f64,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let source_ref: ImageRef = args.source.parse().map_err(crate::usage)?;
    let dest_ref: ImageRef = args.destination.parse().map_err(crate::usage)?;
    if args.chunk_size == 0 {
        return Err(crate::usage("--chunk-size must be at least 1"));
    }
    let registry = registry_config(config, args.creds.as_deref())?;
    let source: Box<dyn BlobSource> = match &source_ref {
        ImageRef::Layout { dir, tag } => Box::new(LayoutSource::new(dir, tag.as_deref())),
        ImageRef::Registry(r) => Box::new(RegistrySource::new(r.clone(), registry.clone())?),
    };
    let destination: Box<dyn Destination> = match &dest_ref {
        ImageRef::Layout { dir, tag } => Box::new(LayoutDestination::create(dir, tag.as_deref().unwrap_or("latest"))?),
        ImageRef::Registry(r) => Box::new(RegistryDestination::new(RegistryTarget::new(r.clone(), registry)?)),
    };
    let mut limits = config.limits();
    if let Some(max) = args.max_layer_bytes {
        limits.max_layer_bytes = max;
    }
    let options = ConvertOptions {
        format: args.format,
        chunk_size: args.chunk_size,
        level: args.level,
        limits,
        parallel_layers: config.limits.parallel_layers,
        platform: Platform::host(),
    };
    let progress = Arc::new(Progress::default());
    let report = strata_image::convert::convert(source.as_ref(), destination.as_ref(), &options, &progress)
        .with_context(|| format!("converting {} to {}", source.describe(), destination.describe()))?;
    print(&report, source.describe(), destination.describe(), args.json)
}

/// The registry configuration, with `--creds` for every host if given.
fn registry_config(config: &Config, creds: Option<&str>) -> anyhow::Result<Arc<RegistryConfig>> {
    let registry = config.registry_config()?;
    let Some(creds) = creds else {
        return Ok(registry);
    };
    let (user, pass) = creds.split_once(':').context("--creds takes USER:PASSWORD")?;
    let owned = Arc::into_inner(registry).context("the registry config is not shared yet")?;
    Ok(Arc::new(owned.with_basic(user.to_owned(), pass.to_owned())))
}

fn print(report: &ConvertReport, source: String, destination: String, json: bool) -> anyhow::Result<()> {
    let summary = Summary {
        format: report.format.name(),
        source,
        destination,
        manifest_digest: &report.manifest_digest,
        config_changed: report.config_changed,
        layers: report.layers.len(),
        tar_bytes: report.tar_bytes(),
        source_bytes: report.source_bytes(),
        output_bytes: report.output_bytes(),
        seconds: report.seconds,
        tar_mb_per_s: report.tar_mb_per_s(),
    };
    if json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!(
        "converted {} to {} ({}, {}): {} layers, {} of tar in {:.2}s = {:.1} MB/s; {} -> {}{}",
        summary.source,
        summary.destination,
        summary.format,
        summary.manifest_digest,
        summary.layers,
        human(summary.tar_bytes),
        summary.seconds,
        summary.tar_mb_per_s,
        human(summary.source_bytes),
        human(summary.output_bytes),
        if summary.config_changed { ", new diff_ids" } else { "" },
    );
    Ok(())
}
