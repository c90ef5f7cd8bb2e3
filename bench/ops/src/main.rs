//! strata-bench-ops: times snapshot calls over gRPC, the way containerd makes
//! them, and prints one JSON object per measured operation.
//!
//! `--socket` is strata's own socket, or containerd's with `--namespace` (the
//! calls then go through containerd's metadata layer to `--snapshotter`,
//! which is how the overlayfs peer is measured on equal terms).
//!
//!   ops      N rounds of Prepare, Commit, Remove on one committed parent.
//!   prepare  N Prepares with `--label`s (sized scratch); `--share` first
//!            prepares an owner with those labels and times its sharers.
//!   reads    N Lists and 100 N Stats among many committed siblings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use strata_grpc::api::snapshots::{self as pb, snapshots_client::SnapshotsClient};
use strata_grpc::api::types::Mount;

mod reads;
mod scale;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Unix socket: strata's, or containerd's (with --namespace).
    #[arg(long)]
    socket: PathBuf,
    /// The snapshotter name in each request.
    #[arg(long, default_value = "strata")]
    snapshotter: String,
    /// containerd namespace header; needed on containerd's socket.
    #[arg(long)]
    namespace: Option<String>,
    /// Rounds or Prepares to time.
    #[arg(long, default_value_t = 200)]
    n: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Ops,
    /// Costs at scale: many committed siblings, a deep chain, a layer of
    /// many files.
    Scale {
        #[arg(long, default_value_t = 1000)]
        snapshots: usize,
        #[arg(long, default_value_t = 128)]
        depth: usize,
        #[arg(long, default_value_t = 100_000)]
        files: usize,
    },
    /// Stat and List among many committed siblings.
    Reads {
        #[arg(long, default_value_t = 1000)]
        snapshots: usize,
    },
    Prepare {
        /// KEY=VALUE snapshot labels for each Prepare.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Time sharers of one owner prepared with the labels.
        #[arg(long)]
        share: bool,
        /// Name for the result row.
        #[arg(long, default_value = "prepare")]
        name: String,
        /// Report the bytes allocated under this dir while all are live
        /// (the scratch files: a clone must not copy the template).
        #[arg(long)]
        measure_dir: Option<PathBuf>,
    },
}

/// Keeps containerd's GC off the benchmark's snapshots.
const GC_ROOT: &str = "containerd.io/gc.root";
const REUSE: &str = "containerd.io/snapshot/io.microsoft.container.storage.reuse-scratch";
const OWNER: &str = "containerd.io/snapshot/io.microsoft.owner.key";

pub(crate) struct Target {
    client: SnapshotsClient<Channel>,
    snapshotter: String,
    namespace: Option<String>,
    /// A run-unique prefix so reruns never meet old keys.
    run: String,
}

impl Target {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(ns) = &self.namespace {
            request
                .metadata_mut()
                .insert("containerd-namespace", ns.parse().expect("namespace is ASCII"));
        }
        request
    }

    /// A key shaped like the ones containerd sends (`ns/txid/name`) when
    /// talking to strata directly; containerd adds that shape itself.
    fn key(&self, name: &str) -> String {
        match self.namespace {
            Some(_) => format!("{}-{name}", self.run),
            None => format!("bench/{}/{name}", self.run),
        }
    }

    async fn prepare(&mut self, key: &str, parent: &str, labels: &HashMap<String, String>) -> Result<Vec<Mount>> {
        let mut labels = labels.clone();
        labels.insert(GC_ROOT.into(), "bench".into());
        let req = self.request(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels,
        });
        let resp = self
            .client
            .prepare(req)
            .await
            .with_context(|| format!("prepare {key}"))?;
        Ok(resp.into_inner().mounts)
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<()> {
        let labels = HashMap::from([(GC_ROOT.to_owned(), "bench".to_owned())]);
        let req = self.request(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels,
        });
        self.client.commit(req).await.with_context(|| format!("commit {key}"))?;
        Ok(())
    }

    async fn remove(&mut self, key: &str) -> Result<()> {
        let req = self.request(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        });
        self.client.remove(req).await.with_context(|| format!("remove {key}"))?;
        Ok(())
    }

    /// Every snapshot the target lists.
    async fn list(&mut self) -> Result<usize> {
        let req = self.request(pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: Vec::new(),
        });
        let mut stream = self.client.list(req).await?.into_inner();
        let mut count = 0;
        while let Some(batch) = stream.message().await? {
            count += batch.info.len();
        }
        Ok(count)
    }

    /// A committed, empty parent for the timed snapshots.
    async fn base(&mut self) -> Result<String> {
        let (key, name) = (self.key("base-active"), self.key("base"));
        self.prepare(&key, "", &HashMap::new()).await?;
        self.commit(&name, &key).await?;
        Ok(name)
    }
}

/// Durations of one kind of call.
#[derive(Default)]
pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    async fn time<T, F: std::future::Future<Output = Result<T>>>(&mut self, call: F) -> Result<T> {
        let started = Instant::now();
        let value = call.await?;
        self.0.push(started.elapsed());
        Ok(value)
    }

    fn percentile_ms(&self, percent: usize) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = sorted.len().saturating_sub(1) * percent / 100;
        sorted.get(rank).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    fn report(&self, target: &Target, op: &str) -> serde_json::Value {
        let total: Duration = self.0.iter().sum();
        json!({
            "snapshotter": target.snapshotter,
            "via": if target.namespace.is_some() { "containerd" } else { "direct" },
            "op": op,
            "n": self.0.len(),
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
            "per_s": self.0.len() as f64 / total.as_secs_f64().max(1e-9),
        })
    }
}

async fn ops(target: &mut Target, n: usize) -> Result<Vec<serde_json::Value>> {
    let base = target.base().await?;
    let none = HashMap::new();
    let (mut prepare, mut commit, mut remove) = (Samples::default(), Samples::default(), Samples::default());
    for i in 0..n {
        let (key, name) = (target.key(&format!("active-{i}")), target.key(&format!("layer-{i}")));
        prepare.time(target.prepare(&key, &base, &none)).await?;
        commit.time(target.commit(&name, &key)).await?;
        remove.time(target.remove(&name)).await?;
    }
    target.remove(&base).await?;
    Ok(vec![
        prepare.report(target, "prepare"),
        commit.report(target, "commit"),
        remove.report(target, "remove"),
    ])
}

/// Bytes allocated to the files under `dir`.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

struct PrepareRun<'a> {
    labels: &'a [String],
    share: bool,
    name: &'a str,
    measure_dir: Option<&'a std::path::Path>,
}

async fn prepares(target: &mut Target, n: usize, run: PrepareRun<'_>) -> Result<serde_json::Value> {
    let PrepareRun {
        labels,
        share,
        name,
        measure_dir,
    } = run;
    let mut labels: HashMap<String, String> = labels
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("labels are KEY=VALUE")?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect::<Result<_>>()?;
    let base = target.base().await?;
    let mut keys = Vec::new();
    if share {
        // Unique in the namespace, so no leftover makes the match ambiguous.
        let owner = target.key(&format!("owner-{}", target.run));
        target.prepare(&owner, &base, &labels).await?;
        // The owner is matched by its key as the client named it.
        let owner_name = owner.rsplit('/').next().unwrap_or(&owner).to_owned();
        labels = HashMap::from([(REUSE.to_owned(), "true".to_owned()), (OWNER.to_owned(), owner_name)]);
        keys.push(owner);
    }
    let mut samples = Samples::default();
    for i in 0..n {
        let key = target.key(&format!("c{i}"));
        samples.time(target.prepare(&key, &base, &labels)).await?;
        keys.push(key);
    }
    let mut row = samples.report(target, name);
    if let Some(dir) = measure_dir {
        row["allocated_bytes"] = json!(allocated(dir));
    }
    for key in keys.iter().rev() {
        target.remove(key).await?;
    }
    target.remove(&base).await?;
    Ok(row)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = strata_grpc::client::connect(&args.socket)
        .await
        .with_context(|| format!("connect {}", args.socket.display()))?;
    let mut target = Target {
        client,
        snapshotter: args.snapshotter,
        namespace: args.namespace,
        run: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos()
        ),
    };
    let rows = match &args.mode {
        Mode::Ops => ops(&mut target, args.n).await?,
        Mode::Scale {
            snapshots,
            depth,
            files,
        } => scale::run(&mut target, *snapshots, *depth, *files).await?,
        Mode::Reads { snapshots } => reads::run(&mut target, *snapshots, args.n).await?,
        Mode::Prepare {
            labels,
            share,
            name,
            measure_dir,
        } => {
            let run = PrepareRun {
                labels,
                share: *share,
                name,
                measure_dir: measure_dir.as_deref(),
            };
            vec![prepares(&mut target, args.n, run).await?]
        }
    };
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
