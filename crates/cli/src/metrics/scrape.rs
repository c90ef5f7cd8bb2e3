//! Metrics read at scrape time: what the store and its scratch
//! filesystems hold (measured as `strata df` does, at most once per
//! [`STORE_REFRESH`], so a scrape storm cannot load the store, and never
//! under the store's lock), and the fetcher's running totals.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use strata_image::{Progress, Received};
use strata_snapshotter::ScratchUsage;
use strata_store::Store;

/// How long a measurement of the store serves scrapes.
pub const STORE_REFRESH: Duration = Duration::from_secs(5);

/// A value computed at most once per `max_age`; callers meanwhile get the
/// last one. Callers arriving during a computation wait for it rather
/// than start another.
pub(super) struct Cached<T> {
    max_age: Duration,
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    pub(super) fn new(max_age: Duration) -> Self {
        Cached {
            max_age,
            slot: Mutex::new(None),
        }
    }

    pub(super) fn get(&self, compute: impl FnOnce() -> T) -> T {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((at, value)) if at.elapsed() < self.max_age => value.clone(),
            _ => {
                let value = compute();
                *slot = Some((Instant::now(), value.clone()));
                value
            }
        }
    }
}

/// One measurement of the store and its scratch filesystems.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct StoreNumbers {
    /// `None` when the measurement failed (logged).
    pub store: Option<StoreTotals>,
    pub scratch: Vec<ScratchUsage>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct StoreTotals {
    pub images: u64,
    pub objects: u64,
    pub stored_bytes: u64,
    pub logical_bytes: u64,
}

pub(super) struct StoreCollector {
    store: Store,
    cache: Cached<StoreNumbers>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCollector")
            .field("root", &self.store.root())
            .finish()
    }
}

impl StoreCollector {
    pub(super) fn new(store: Store, max_age: Duration) -> Self {
        StoreCollector {
            store,
            cache: Cached::new(max_age),
        }
    }

    fn measure(&self) -> StoreNumbers {
        let store = match crate::store_usage::measure(&self.store) {
            Ok(usage) => Some(StoreTotals {
                images: usage.images.len() as u64,
                objects: usage.objects,
                stored_bytes: usage.stored_bytes(),
                logical_bytes: usage.logical_bytes,
            }),
            Err(e) => {
                tracing::warn!("metrics: measuring the store: {e:#}");
                None
            }
        };
        let scratch = strata_snapshotter::scratch_usage(self.store.root()).unwrap_or_else(|e| {
            tracing::warn!("metrics: measuring scratch filesystems: {e}");
            Vec::new()
        });
        StoreNumbers { store, scratch }
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let numbers = self.cache.get(|| self.measure());
        if let Some(totals) = &numbers.store {
            let gauges = [
                (
                    "store_images",
                    "Images in the store: image names and EROFS images only snapshots hold.",
                    totals.images,
                ),
                (
                    "store_objects",
                    "Distinct content objects the store's images reference.",
                    totals.objects,
                ),
                (
                    "store_stored_bytes",
                    "Bytes on disk: distinct objects plus EROFS images.",
                    totals.stored_bytes,
                ),
                (
                    "store_logical_bytes",
                    "Bytes of file content the images present (each image once).",
                    totals.logical_bytes,
                ),
            ];
            for (name, help, value) in gauges {
                gauge(&mut encoder, name, help, value)?;
            }
        }
        by_mechanism(
            &mut encoder,
            "scratch_filesystems",
            "Sized scratch filesystems mounted, by mechanism.",
            &numbers.scratch,
            |u| u.filesystems,
        )?;
        by_mechanism(
            &mut encoder,
            "scratch_used_bytes",
            "Bytes in use inside sized scratch filesystems, by mechanism.",
            &numbers.scratch,
            |u| u.used_bytes,
        )
    }
}

fn by_mechanism(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    usage: &[ScratchUsage],
    value: impl Fn(&ScratchUsage) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for u in usage {
        let labels = [("mechanism", u.mechanism.name())];
        ConstGauge::new(clamp_i64(value(u))).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(clamp_i64(value));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The remote-snapshot fetcher's running totals, and the bytes its
/// registry sources received.
#[derive(Debug)]
pub(super) struct FetchCollector {
    pub totals: Arc<Progress>,
    pub received: Arc<Received>,
}

impl Collector for FetchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.totals;
        let counters = [
            (
                "fetch_layers",
                "Layers the remote-snapshot fetcher imported (prefetched ones included).",
                &t.layers_done,
            ),
            (
                "fetch_bytes",
                "Layer bytes the fetcher received from registries: whole blobs, or ranges with their TOCs.",
                &self.received.blobs,
            ),
            (
                "fetch_new_objects",
                "File contents the fetcher's imports added to the store.",
                &t.new_objects,
            ),
            (
                "fetch_dedup_hits",
                "File contents the fetcher's imports found in the store already.",
                &t.dedup_hits,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(Progress::get(value));
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}
