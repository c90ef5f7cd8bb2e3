//! Converting an image's layers to eStargz or zstd:chunked (or, as a
//! baseline, plain gzip or zstd), from a source to a [`Destination`].
//!
//! Each layer streams through one pass: the source blob is verified (size,
//! digest, diff_id) by the import's decompressor thread
//! ([`crate::decompress`]); the tar is split into entries without changing
//! a byte ([`walk`]); a format writer compresses it file by file into a
//! temporary file, building the TOC as it goes. The result is read back
//! through [`crate::toc`] before it is stored, and the image's config and
//! manifest are rewritten from the source's own ([`image`]). Memory stays
//! bounded: no layer is held whole, only its TOC JSON (capped at what TOC
//! readers take) and one entry's headers.

mod chunks;
mod compress;
mod dest;
mod error;
mod estargz;
mod image;
mod plain;
mod tar_split;
mod toc_json;
mod walk;
mod zstd_chunked;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use dest::{Destination, LayoutDestination, RegistryDestination};
pub use error::ConvertError;

use crate::decompress::{self, Compression, Expected};
use crate::manifest::{parse_document, sha256_digest, verify, Document};
use crate::source::{resolve, BlobSource, ResolvedImage};
use crate::toc::{self, Sha256Digest, TocLimits};
use crate::{Descriptor, ImportError, Limits, Platform, Progress};
use compress::BlobWriter;
use image::NewLayer;
use walk::TarSink;

pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// What the layers become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Estargz,
    ZstdChunked,
    /// Plain gzip: no TOC; the baseline eStargz is measured against.
    Gzip,
    /// Plain zstd: no TOC; zstd:chunked's baseline.
    Zstd,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Estargz => "estargz",
            Format::ZstdChunked => "zstd:chunked",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Estargz | Format::Gzip => LAYER_GZIP,
            Format::ZstdChunked | Format::Zstd => LAYER_ZSTD,
        }
    }

    /// The compression level used when none is asked for.
    pub fn default_level(self) -> i32 {
        match self {
            Format::Estargz | Format::Gzip => 6,
            Format::ZstdChunked | Format::Zstd => 3,
        }
    }

    fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Format::Estargz | Format::Gzip => 0..=9,
            Format::ZstdChunked | Format::Zstd => 1..=19,
        }
    }

    /// Whether the uncompressed stream (and so the diff_id) stays the source's.
    fn keeps_diff_id(self) -> bool {
        self != Format::Estargz
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [Format::Estargz, Format::ZstdChunked, Format::Gzip, Format::Zstd]
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| format!("unknown format {text:?} (estargz, zstd:chunked, gzip or zstd)"))
    }
}

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub format: Format,
    /// Bytes of a regular file's data per chunk (each chunk is its own gzip
    /// member or zstd frame, with its own digest in the TOC).
    pub chunk_size: u64,
    /// Compression level; `None`: [`Format::default_level`].
    pub level: Option<i32>,
    pub limits: Limits,
    /// Layers converted at once.
    pub parallel_layers: usize,
    pub platform: Platform,
}

impl ConvertOptions {
    /// The chunk size both the Go estargz writer and this one default to.
    pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
}

/// One converted layer.
#[derive(Clone, Debug)]
pub struct LayerReport {
    pub source_digest: String,
    pub source_size: u64,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub diff_id_changed: bool,
    /// Bytes of the source's uncompressed tar.
    pub tar_bytes: u64,
    pub entries: u64,
    pub files: u64,
}

/// A converted image.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub format: Format,
    pub manifest_digest: String,
    pub config_digest: String,
    pub config_changed: bool,
    pub layers: Vec<LayerReport>,
    /// From the start of the conversion until the manifest is stored.
    pub seconds: f64,
}

impl ConvertReport {
    /// Bytes of the source layers' uncompressed tars.
    pub fn tar_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_bytes).sum()
    }

    pub fn source_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.source_size).sum()
    }

    pub fn output_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Throughput in MB (10^6 bytes) of uncompressed tar per second.
    pub fn tar_mb_per_s(&self) -> f64 {
        self.tar_bytes() as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// What a format writer leaves when its layer is done.
struct Written {
    out: BlobWriter,
    annotations: BTreeMap<String, String>,
    diff_id: Sha256Digest,
}

/// A format's writer: the tar's pieces in, a finished blob out.
trait LayerWriter: TarSink {
    fn finish(self: Box<Self>) -> Result<Written, ConvertError>;
}

/// Converts the image `source` names (for `options.platform`) and stores
/// it in `destination`.
pub fn convert(
    source: &dyn BlobSource,
    destination: &dyn Destination,
    options: &ConvertOptions,
    progress: &Arc<Progress>,
) -> Result<ConvertReport, ConvertError> {
    let started = Instant::now();
    let level = options.level.unwrap_or(options.format.default_level());
    if !options.format.levels().contains(&level) {
        let levels = options.format.levels();
        return Err(ConvertError::Options(format!(
            "compression level {level} is outside {}..={} for {}",
            levels.start(),
            levels.end(),
            options.format.name()
        )));
    }
    let resolved = resolve(source, &options.platform)?;
    let manifest = manifest_bytes(source, &resolved)?;
    let config = source.blob_bytes(&resolved.manifest.config)?;
    let layers = &resolved.manifest.layers;
    // Reaches the destination (and its credentials) before any layer is read.
    destination.has_blob(&resolved.manifest.config.digest)?;
    Progress::add(&progress.layers_total, layers.len() as u64);
    Progress::add(&progress.bytes_total, layers.iter().map(|l| l.size).sum());

    let converted = convert_all(source, destination, &resolved, options, level, progress)?;
    let (new_layers, reports): (Vec<NewLayer>, Vec<LayerReport>) = converted.into_iter().unzip();
    let image = image::rewrite(
        &manifest,
        &config,
        &resolved.manifest.config,
        layers,
        &resolved.config.diff_ids,
        &new_layers,
    )
    .map_err(|reason| ImportError::Malformed { what: "image", reason })?;
    destination.put_bytes(&image.config_digest, &image.config)?;
    destination.put_manifest(&image.manifest, &image.manifest_digest, &resolved.config.platform)?;
    Ok(ConvertReport {
        format: options.format,
        manifest_digest: image.manifest_digest,
        config_digest: image.config_digest,
        config_changed: image.config_changed,
        layers: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The bytes of the manifest `resolved` names (resolve checks them; this
/// only fetches them again): the root document, or its index's entry.
fn manifest_bytes(source: &dyn BlobSource, resolved: &ResolvedImage) -> Result<Vec<u8>, ConvertError> {
    let root = source.root_document()?;
    if sha256_digest(&root.bytes) == resolved.manifest_digest {
        return Ok(root.bytes);
    }
    if let Document::Index(entries) = parse_document(&root.bytes, root.media_type.as_deref())? {
        if let Some(entry) = entries.iter().find(|e| e.digest == resolved.manifest_digest) {
            let fetched = source.document(entry)?;
            verify("manifest", &fetched.bytes, &resolved.manifest_digest)?;
            return Ok(fetched.bytes);
        }
    }
    Err(ImportError::Malformed {
        what: "image",
        reason: format!(
            "{} changed while it was read: manifest {} is gone",
            source.describe(),
            resolved.manifest_digest
        ),
    }
    .into())
}

/// Converts every layer, `parallel_layers` at a time, in manifest order;
/// no new layer is started after a failure.
fn convert_all(
    source: &dyn BlobSource,
    destination: &dyn Destination,
    resolved: &ResolvedImage,
    options: &ConvertOptions,
    level: i32,
    progress: &Arc<Progress>,
) -> Result<Vec<(NewLayer, LayerReport)>, ConvertError> {
    type Slot = Option<Result<(NewLayer, LayerReport), ConvertError>>;
    let layers = &resolved.manifest.layers;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Slot>> = Mutex::new((0..layers.len()).map(|_| None).collect());
    let workers = options.parallel_layers.clamp(1, layers.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(desc) = layers.get(i) else { break };
                let diff_id = &resolved.config.diff_ids[i];
                let result = convert_layer(source, destination, desc, diff_id, options, level, progress);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                } else {
                    Progress::add(&progress.layers_done, 1);
                }
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(layers.len());
    let mut first_error = None;
    for result in results.into_iter().flatten() {
        match result {
            Ok(layer) => out.push(layer),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn convert_layer(
    source: &dyn BlobSource,
    destination: &dyn Destination,
    desc: &Descriptor,
    diff_id: &str,
    options: &ConvertOptions,
    level: i32,
    progress: &Arc<Progress>,
) -> Result<(NewLayer, LayerReport), ConvertError> {
    let layer = desc.digest.as_str();
    let compression = Compression::from_media_type(&desc.media_type)?;
    let toc_limits = TocLimits::from_layer_limits(&options.limits);
    let temp = destination.temp_file()?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(ConvertError::io("a temporary file"))?;
    let writer = new_writer(options, layer, BlobWriter::new(file), level, &toc_limits)?;

    let raw = source.open_blob(desc)?;
    let expected = Expected {
        layer: layer.to_owned(),
        blob_digest: desc.digest.clone(),
        blob_size: desc.size,
        diff_id: Some(diff_id.to_owned()),
        limit: options.limits.max_layer_bytes,
    };
    let (mut reader, verdict) = decompress::spawn(raw, compression, expected, progress.clone());
    let mut writer = writer;
    let walked = walk::walk(&mut reader, layer, &options.limits, &mut *writer);
    // Read the rest even after a failure, so the source's digests are checked.
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    drop(reader);
    let verified = verdict.join().unwrap_or_else(|_| {
        Err(ImportError::Layer {
            layer: layer.to_owned(),
            reason: "decompressor thread panicked".into(),
        })
    });
    // A digest failure explains a tar failure, so it wins.
    verified?;
    let walked = walked?;
    Progress::add(&progress.files, walked.files);
    let written = writer.finish()?;
    let new_diff_id = written.diff_id.to_string();
    if options.format.keeps_diff_id() && new_diff_id != diff_id {
        return Err(ConvertError::Layer {
            layer: layer.to_owned(),
            reason: format!("the converted tar hashes to {new_diff_id}, not to its diff_id {diff_id}"),
        });
    }
    let (file, digest, size) = written
        .out
        .finish()
        .map_err(ConvertError::io("writing the converted layer"))?;
    read_back(options.format, layer, &file, size, &written.annotations, &toc_limits)?;
    let digest = digest.to_string();
    destination.put_blob(temp, &digest, size)?;
    let report = LayerReport {
        source_digest: desc.digest.clone(),
        source_size: desc.size,
        digest: digest.clone(),
        size,
        diff_id: new_diff_id.clone(),
        diff_id_changed: new_diff_id != diff_id,
        tar_bytes: walked.bytes,
        entries: walked.entries,
        files: walked.files,
    };
    let layer = NewLayer {
        media_type: options.format.media_type(),
        digest,
        size,
        annotations: written.annotations,
        diff_id: new_diff_id,
    };
    Ok((layer, report))
}

fn new_writer(
    options: &ConvertOptions,
    layer: &str,
    out: BlobWriter,
    level: i32,
    limits: &TocLimits,
) -> Result<Box<dyn LayerWriter>, ConvertError> {
    let gzip_level = u32::try_from(level).unwrap_or(6);
    Ok(match options.format {
        Format::Estargz => Box::new(estargz::EstargzWriter::new(
            layer,
            out,
            gzip_level,
            options.chunk_size,
            limits,
        )),
        Format::ZstdChunked => {
            let tar_split = tempfile::tempfile().map_err(ConvertError::io("a temporary file"))?;
            Box::new(zstd_chunked::ZstdChunkedWriter::new(
                layer,
                out,
                tar_split,
                level,
                options.chunk_size,
                limits,
            )?)
        }
        Format::Gzip => Box::new(plain::PlainWriter::gzip(out, gzip_level)),
        Format::Zstd => Box::new(plain::PlainWriter::zstd(out, level)?),
    })
}

/// Reads the new blob's TOC (and tar-split) back, verified against its
/// annotations, as any partial pull would.
fn read_back(
    format: Format,
    layer: &str,
    file: &std::fs::File,
    size: u64,
    annotations: &BTreeMap<String, String>,
    limits: &TocLimits,
) -> Result<(), ConvertError> {
    let failed = |source| ConvertError::ReadBack {
        layer: layer.to_owned(),
        format: format.name(),
        source: Box::new(source),
    };
    match format {
        Format::Estargz => {
            let digest = toc::estargz::toc_digest(annotations).map_err(failed)?;
            toc::estargz::read_toc(file, size, &digest, limits).map_err(failed)?;
        }
        Format::ZstdChunked => {
            let found = toc::zstd_chunked::annotations(annotations).map_err(failed)?;
            let found = found.ok_or_else(|| {
                failed(toc::TocError::MissingAnnotation {
                    format: toc::TocFormat::ZstdChunked,
                    key: toc::zstd_chunked::MANIFEST_CHECKSUM,
                })
            })?;
            let read = toc::zstd_chunked::read_toc(file, size, &found, limits).map_err(failed)?;
            let tar_split = read.tar_split.ok_or_else(|| {
                failed(toc::TocError::MissingAnnotation {
                    format: toc::TocFormat::ZstdChunked,
                    key: toc::zstd_chunked::TAR_SPLIT_POSITION,
                })
            })?;
            toc::zstd_chunked::read_tar_split(file, size, &tar_split, limits).map_err(failed)?;
        }
        Format::Gzip | Format::Zstd => {}
    }
    Ok(())
}
