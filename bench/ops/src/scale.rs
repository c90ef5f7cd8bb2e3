//! Costs at scale: Commit and List among many committed siblings, Prepare
//! on a deep chain, and the Commit of one layer holding many files.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use strata_grpc::api::types::Mount;

use crate::{Samples, Target};

/// Prepares timed on top of the chain and beside the siblings.
const PROBES: usize = 10;

pub(crate) async fn run(target: &mut Target, snapshots: usize, depth: usize, files: usize) -> Result<Vec<Value>> {
    let none = HashMap::new();
    let base = target.base().await?;
    let mut rows = Vec::new();

    let mut commits = Samples::default();
    let mut siblings = Vec::new();
    for i in 0..snapshots {
        let (key, name) = (target.key(&format!("sib-active-{i}")), target.key(&format!("sib-{i}")));
        target.prepare(&key, &base, &none).await?;
        commits.time(target.commit(&name, &key)).await?;
        siblings.push(name);
    }
    rows.push(commits.report(target, &format!("commit among {snapshots} siblings")));
    let mut list = Samples::default();
    let listed = list.time(target.list()).await?;
    rows.push(list.report(target, &format!("list of {listed} snapshots")));
    rows.push(probe(target, &base, &format!("prepare beside {snapshots} snapshots")).await?);

    let mut chain = vec![base.clone()];
    for d in 0..depth {
        let (key, name) = (
            target.key(&format!("chain-active-{d}")),
            target.key(&format!("chain-{d}")),
        );
        target.prepare(&key, chain.last().unwrap_or(&base), &none).await?;
        target.commit(&name, &key).await?;
        chain.push(name);
    }
    let top = chain.last().cloned().unwrap_or_default();
    rows.push(probe(target, &top, &format!("prepare on a {depth}-layer chain")).await?);

    if files > 0 {
        let key = target.key("many-files");
        let mounts = target.prepare(&key, "", &none).await?;
        write_files(&writable_dir(&mounts)?, files, &target.run)?;
        let layer = target.key("many-files-layer");
        let mut commit = Samples::default();
        commit.time(target.commit(&layer, &key)).await?;
        rows.push(commit.report(target, &format!("commit of a {files}-file layer")));
        target.remove(&layer).await?;
    }

    for name in chain.iter().skip(1).rev() {
        target.remove(name).await?;
    }
    let mut removes = Samples::default();
    for name in &siblings {
        removes.time(target.remove(name)).await?;
    }
    rows.push(removes.report(target, &format!("remove among {snapshots} siblings")));
    target.remove(&base).await?;
    Ok(rows)
}

/// Times Prepares on `parent`, then removes them.
async fn probe(target: &mut Target, parent: &str, name: &str) -> Result<Value> {
    let mut samples = Samples::default();
    let mut keys = Vec::new();
    for i in 0..PROBES {
        let key = target.key(&format!("probe-{i}-{}", name.len()));
        samples.time(target.prepare(&key, parent, &HashMap::new())).await?;
        keys.push(key);
    }
    for key in keys {
        target.remove(&key).await?;
    }
    Ok(samples.report(target, name))
}

/// Where a parentless active snapshot takes writes: a bind mount's source,
/// or an overlay's upperdir.
fn writable_dir(mounts: &[Mount]) -> Result<PathBuf> {
    let [mount] = mounts else {
        bail!("expected one mount, got {mounts:?}")
    };
    if mount.r#type == "bind" {
        return Ok(PathBuf::from(&mount.source));
    }
    mount
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .with_context(|| format!("no writable dir in {mount:?}"))
}

/// `count` files of 1 KiB with distinct contents (above strata's inline
/// limit of 512 bytes, so each is an object), 1,000 per directory.
fn write_files(dir: &std::path::Path, count: usize, run: &str) -> Result<()> {
    for i in 0..count {
        let sub = dir.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let mut body = format!("file {i} of run {run}\n").into_bytes();
        body.resize(1024, b'.');
        std::fs::write(sub.join(format!("f{i}")), body)?;
    }
    Ok(())
}
