use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::scrape::Cached;
use super::*;

/// A fetcher that fetches nothing: only the outcomes matter here.
struct NoFetcher;

impl LayerFetcher for NoFetcher {
    fn fetch(&self, _request: &LayerRequest) -> Result<FetchedLayer, FetchError> {
        Err("no network in unit tests".into())
    }
}

fn metrics_on_empty_store() -> (tempfile::TempDir, Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let store = strata_store::Store::open(&dir.path().join("store")).unwrap();
    (dir, Metrics::new(store))
}

/// The sample lines of `text` (no comments), for exact comparison.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn calls_are_timed_and_failures_counted_by_code() {
    let (_dir, metrics) = metrics_on_empty_store();
    let observer = metrics.call_observer();
    observer.call_ended("prepare", Duration::from_micros(300), None);
    observer.call_ended("prepare", Duration::from_millis(3), None);
    observer.call_ended("prepare", Duration::from_millis(40), Some("NotFound"));
    observer.call_ended("commit", Duration::from_secs(2), Some("Internal"));
    let text = metrics.encode().unwrap();
    let lines = samples(&text);
    for expected in [
        r#"strata_rpc_duration_seconds_count{op="prepare"} 3"#,
        r#"strata_rpc_duration_seconds_bucket{op="prepare",le="0.0005"} 1"#,
        r#"strata_rpc_duration_seconds_bucket{op="prepare",le="0.004"} 2"#,
        r#"strata_rpc_duration_seconds_bucket{op="prepare",le="0.064"} 3"#,
        r#"strata_rpc_duration_seconds_bucket{op="prepare",le="+Inf"} 3"#,
        r#"strata_rpc_duration_seconds_count{op="commit"} 1"#,
        r#"strata_rpc_duration_seconds_sum{op="commit"} 2.0"#,
        r#"strata_rpc_errors_total{op="prepare",code="NotFound"} 1"#,
        r#"strata_rpc_errors_total{op="commit",code="Internal"} 1"#,
    ] {
        assert!(lines.contains(&expected), "{expected} missing from:\n{text}");
    }
    assert!(
        text.contains("# HELP strata_rpc_duration_seconds Time containerd's snapshot calls took")
            && text.contains("# TYPE strata_rpc_duration_seconds histogram")
            && text.contains("# TYPE strata_rpc_errors_total counter"),
        "{text}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("op=\"view\"")),
        "no series for a call never made: {text}"
    );
}

#[test]
fn remote_snapshot_outcomes_are_counted_through_the_fetcher() {
    let (_dir, metrics) = metrics_on_empty_store();
    let before = metrics.encode().unwrap();
    assert!(
        samples(&before).contains(&r#"strata_remote_snapshot_hits_total{how="fetched"} 0"#),
        "{before}"
    );
    let fetcher = metrics.counting_fetcher(Arc::new(NoFetcher));
    fetcher.observe(RemoteOutcome::Fetched);
    fetcher.observe(RemoteOutcome::Fetched);
    fetcher.observe(RemoteOutcome::Present);
    fetcher.observe(RemoteOutcome::FellBack(FallbackReason::EarlierLayer));
    let text = metrics.encode().unwrap();
    let lines = samples(&text);
    for expected in [
        r#"strata_remote_snapshot_hits_total{how="fetched"} 2"#,
        r#"strata_remote_snapshot_hits_total{how="already_committed"} 1"#,
        r#"strata_remote_snapshot_fallbacks_total{reason="earlier_layer"} 1"#,
        // Every outcome has a series from the start.
        r#"strata_remote_snapshot_fallbacks_total{reason="fetch"} 0"#,
        r#"strata_remote_snapshot_fallbacks_total{reason="labels"} 0"#,
    ] {
        assert!(lines.contains(&expected), "{expected} missing from:\n{text}");
    }
}

#[test]
fn store_scratch_and_fetch_totals_are_read_at_scrape_time() {
    let (_dir, mut metrics) = metrics_on_empty_store();
    let totals = Arc::new(strata_image::Progress::default());
    let received = Arc::new(strata_image::Received::default());
    metrics.add_fetcher_totals(Arc::clone(&totals), Arc::clone(&received));
    totals.layers_done.store(3, Ordering::Relaxed);
    // Bytes as the sources received them, not the import's own count.
    totals.bytes.store(999, Ordering::Relaxed);
    received.blobs.store(12345, Ordering::Relaxed);
    received.documents.store(55, Ordering::Relaxed);
    totals.dedup_hits.store(7, Ordering::Relaxed);
    let text = metrics.encode().unwrap();
    let lines = samples(&text);
    for expected in [
        "strata_store_images 0",
        "strata_store_objects 0",
        "strata_store_stored_bytes 0",
        "strata_store_logical_bytes 0",
        r#"strata_scratch_filesystems{mechanism="loop"} 0"#,
        r#"strata_scratch_used_bytes{mechanism="loop"} 0"#,
        "strata_fetch_layers_total 3",
        "strata_fetch_bytes_total 12345",
        "strata_fetch_new_objects_total 0",
        "strata_fetch_dedup_hits_total 7",
    ] {
        assert!(lines.contains(&expected), "{expected} missing from:\n{text}");
    }
    assert!(
        text.contains("# TYPE strata_store_objects gauge") && text.contains("# TYPE strata_fetch_bytes_total counter"),
        "{text}"
    );
}

#[test]
fn every_metric_has_help() {
    let (_dir, mut metrics) = metrics_on_empty_store();
    metrics.add_fetcher_totals(Arc::default(), Arc::default());
    metrics
        .call_observer()
        .call_ended("stat", Duration::from_millis(1), Some("NotFound"));
    let text = metrics.encode().unwrap();
    let helped: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for sample in samples(&text) {
        let name = sample.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| helped.contains(f)))
            .unwrap_or(name);
        assert!(name.starts_with("strata_"), "{name}");
        assert!(helped.contains(&family), "{name} has no HELP line:\n{text}");
    }
}

#[test]
fn a_measurement_serves_until_it_ages() {
    let computed = Cell::new(0);
    let compute = || {
        computed.set(computed.get() + 1);
        computed.get()
    };
    let fresh = Cached::new(Duration::from_secs(3600));
    assert_eq!(fresh.get(compute), 1);
    assert_eq!(fresh.get(compute), 1, "a second scrape reuses the first measurement");
    assert_eq!(computed.get(), 1);
    let stale = Cached::new(Duration::ZERO);
    assert_eq!(stale.get(compute), 2);
    assert_eq!(stale.get(compute), 3, "an aged measurement is taken again");
}
