//! Prometheus metrics of `strata serve`, in the Prometheus text format
//! (0.0.4) through `prometheus-client`. Events (calls, remote-snapshot
//! outcomes) are counted as they happen, through the seams the libraries
//! offer without knowing Prometheus: [`strata_grpc::CallObserver`] and
//! [`LayerFetcher::observe`]. What the store and the fetcher hold is read
//! at scrape time ([`scrape`]). [`http`] serves `/metrics`.

pub mod http;
mod scrape;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use strata_snapshotter::{FallbackReason, FetchError, FetchedLayer, LayerFetcher, LayerRequest, RemoteOutcome};

pub use scrape::STORE_REFRESH;

/// A label set of one label, e.g. `[("op", "prepare")]`.
type OneLabel = [(&'static str, &'static str); 1];
/// A label set of two labels.
type TwoLabels = [(&'static str, &'static str); 2];

/// Every metric `strata serve` exports, on one registry.
pub struct Metrics {
    registry: Registry,
    calls: CallCounters,
    remote: RemoteCounters,
}

impl Metrics {
    /// The metrics of a serve over `store`: calls and remote-snapshot
    /// outcomes as they happen, the store's and its scratch's usage read
    /// at most once per [`STORE_REFRESH`].
    pub fn new(store: strata_store::Store) -> Metrics {
        let mut registry = Registry::with_prefix("strata");
        let calls = CallCounters::default();
        registry.register_with_unit(
            "rpc_duration",
            "Time containerd's snapshot calls took, by operation (list is Walk)",
            Unit::Seconds,
            calls.duration.clone(),
        );
        registry.register(
            "rpc_errors",
            "Snapshot calls that failed, by operation and gRPC code",
            calls.errors.clone(),
        );
        // Every outcome has a series from the start, so that increase()
        // sees the first one.
        let remote = RemoteCounters::default();
        for how in [HOW_FETCHED, HOW_ALREADY_COMMITTED] {
            remote.hits.get_or_create_owned(&[("how", how)]);
        }
        for reason in FallbackReason::ALL {
            remote.fallbacks.get_or_create_owned(&[("reason", reason.name())]);
        }
        registry.register(
            "remote_snapshot_hits",
            "Remote-snapshot Prepares strata served: how=fetched (strata fetched and committed the layer) \
             or how=already_committed (a snapshot of that chain existed)",
            remote.hits.clone(),
        );
        registry.register(
            "remote_snapshot_fallbacks",
            "Remote-snapshot Prepares left to containerd's own fetch and unpack, by reason class \
             (labels, state, earlier_layer, fetch, commit); the log has each reason",
            remote.fallbacks.clone(),
        );
        registry.register_collector(Box::new(scrape::StoreCollector::new(store, STORE_REFRESH)));
        Metrics {
            registry,
            calls,
            remote,
        }
    }

    /// Also exports what the remote-snapshot fetcher's imports add up to,
    /// and what its registry sources received.
    pub fn add_fetcher_totals(&mut self, totals: Arc<strata_image::Progress>, received: Arc<strata_image::Received>) {
        self.registry
            .register_collector(Box::new(scrape::FetchCollector { totals, received }));
    }

    /// Exports the kernel rungs in use: `strata_kernel_rung{feature, rung}`
    /// is 1 for each feature's rung.
    pub fn add_kernel_ladder(&mut self, ladder: strata_mount::Ladder) {
        let rungs: Family<TwoLabels, prometheus_client::metrics::gauge::Gauge> = Family::default();
        for (feature, rung) in [
            ("erofs", ladder.erofs.name()),
            ("lowers", strata_mount::ladder::lowers_name(ladder.lowers)),
            ("verity", ladder.verity.name()),
        ] {
            rungs.get_or_create(&[("feature", feature), ("rung", rung)]).set(1);
        }
        self.registry.register(
            "kernel_rung",
            "The kernel ladder's rung in use per feature: erofs (file | loop), lowers (append | \
             double-colon), verity (off | require)",
            rungs,
        );
    }

    /// The observer `strata_grpc::serve` tells of every call.
    pub fn call_observer(&self) -> Arc<dyn strata_grpc::CallObserver> {
        Arc::new(self.calls.clone())
    }

    /// `fetcher`, telling these metrics how remote-snapshot Prepares end.
    pub fn counting_fetcher(&self, fetcher: Arc<dyn LayerFetcher>) -> Arc<dyn LayerFetcher> {
        Arc::new(CountingFetcher {
            inner: fetcher,
            counters: self.remote.clone(),
        })
    }

    /// Every metric, in the Prometheus text format. Reads the store when
    /// its cached numbers are older than [`STORE_REFRESH`], so call it on
    /// a blocking thread.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Call latencies and errors, per operation.
#[derive(Clone)]
struct CallCounters {
    duration: Family<OneLabel, Histogram, fn() -> Histogram>,
    errors: Family<TwoLabels, Counter>,
}

impl Default for CallCounters {
    fn default() -> Self {
        CallCounters {
            duration: Family::new_with_constructor(call_histogram),
            errors: Family::default(),
        }
    }
}

/// Buckets from 0.5 ms to 33 s, doubling: a Stat takes well under a
/// millisecond, a large Commit seconds.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl strata_grpc::CallObserver for CallCounters {
    fn call_ended(&self, op: &'static str, elapsed: Duration, error: Option<&'static str>) {
        self.duration
            .get_or_create(&[("op", op)])
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error {
            self.errors.get_or_create(&[("op", op), ("code", code)]).inc();
        }
    }
}

/// How remote-snapshot Prepares ended.
#[derive(Clone, Default)]
struct RemoteCounters {
    hits: Family<OneLabel, Counter>,
    fallbacks: Family<OneLabel, Counter>,
}

/// The `how` labels of a hit: fetched by this Prepare, or committed before.
const HOW_FETCHED: &str = "fetched";
const HOW_ALREADY_COMMITTED: &str = "already_committed";

impl RemoteCounters {
    fn count(&self, outcome: RemoteOutcome) {
        let how = match outcome {
            RemoteOutcome::Fetched => HOW_FETCHED,
            RemoteOutcome::Present => HOW_ALREADY_COMMITTED,
            RemoteOutcome::FellBack(reason) => {
                self.fallbacks.get_or_create(&[("reason", reason.name())]).inc();
                return;
            }
        };
        self.hits.get_or_create(&[("how", how)]).inc();
    }
}

/// A layer fetcher that counts the outcomes the snapshotter reports.
struct CountingFetcher {
    inner: Arc<dyn LayerFetcher>,
    counters: RemoteCounters,
}

impl LayerFetcher for CountingFetcher {
    fn fetch(&self, request: &LayerRequest) -> Result<FetchedLayer, FetchError> {
        self.inner.fetch(request)
    }

    fn abandon(&self, request: &LayerRequest) {
        self.inner.abandon(request);
    }

    fn observe(&self, outcome: RemoteOutcome) {
        self.inner.observe(outcome);
        self.counters.count(outcome);
    }
}

#[cfg(test)]
mod tests;
