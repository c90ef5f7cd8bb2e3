//! The read path at scale: Stat and List among many committed siblings.
//! Through containerd a List is one Stat per snapshot to the backend, so
//! the two numbers together say what a backend Stat costs.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde_json::Value;
use strata_grpc::api::snapshots as pb;

use crate::{Samples, Target};

pub(crate) async fn run(target: &mut Target, snapshots: usize, rounds: usize) -> Result<Vec<Value>> {
    let none = HashMap::new();
    let base = target.base().await?;
    let mut siblings = Vec::new();
    for i in 0..snapshots {
        let (key, name) = (target.key(&format!("sib-active-{i}")), target.key(&format!("sib-{i}")));
        target.prepare(&key, &base, &none).await?;
        target.commit(&name, &key).await?;
        siblings.push(name);
    }
    let mut list = Samples::default();
    let mut listed = 0;
    for _ in 0..rounds {
        listed = list.time(target.list()).await?;
    }
    let mut stats = Samples::default();
    for name in siblings.iter().cycle().take(rounds.max(1) * 100) {
        stats.time(stat(target, name)).await?;
    }
    let rows = vec![
        list.report(target, &format!("list of {listed} snapshots")),
        stats.report(target, &format!("stat among {snapshots} snapshots")),
    ];
    for name in &siblings {
        target.remove(name).await?;
    }
    target.remove(&base).await?;
    Ok(rows)
}

async fn stat(target: &mut Target, key: &str) -> Result<()> {
    let req = target.request(pb::StatSnapshotRequest {
        snapshotter: target.snapshotter.clone(),
        key: key.into(),
    });
    target.client.stat(req).await.with_context(|| format!("stat {key}"))?;
    Ok(())
}
