//! What `strata pull` reports it fetched (issue 15): the body bytes its
//! source received, counted where they arrive, against what a counting
//! proxy (`fixtures/range-proxy.py`) sent. The family's `python` and
//! `variant-python`, converted to eStargz and zstd:chunked, are pulled
//! into an empty store through the proxy, partially and whole; and the
//! unconverted `python` from the family's OCI layout, whose files' sizes
//! say what a whole pull reads.

mod range_proxy;

use range_proxy::{Mode, RangeProxy};
use serde_json::Value;
use strata_tests::oci_layout::{blob_path, image, layers};
use strata_tests::*;

const FORMATS: [&str; 2] = ["estargz", "zstd:chunked"];
/// Where the converted images are pushed in the test registry.
const REPOSITORY: &str = "pull-report";

fn tag_of(format: &str) -> &'static str {
    match format {
        "estargz" => "estargz",
        _ => "zstd-chunked",
    }
}

/// `HOST/pull-report/TAG:FORMAT`.
fn pushed(host: &str, tag: &str, format: &str) -> String {
    format!("{host}/{REPOSITORY}/{tag}:{}", tag_of(format))
}

/// Converts the family's `tag` and pushes it to the test registry.
fn convert(tag: &str, format: &str) {
    let out = std::process::Command::new(strata_bin())
        .args(["--config", "/dev/null", "convert", "--json", "--format", format])
        .arg(registry_ref(tag))
        .arg(pushed(&registry(), tag, format))
        .output()
        .unwrap();
    stdout_of(&format!("strata convert {format} {tag}"), out);
}

/// `strata pull --json ARGS...`, parsed.
fn pull(store: &TestStore, args: &[&str]) -> Value {
    let mut all = vec!["pull", "--json"];
    all.extend_from_slice(args);
    let text = store.ok(&all);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn number(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing from {report}"))
}

fn layer_counts(report: &Value) -> (u64, u64, u64) {
    let l = &report["layers"];
    (
        l["partial"].as_u64().unwrap(),
        l["whole"].as_u64().unwrap(),
        l["present"].as_u64().unwrap(),
    )
}

/// Pulls `reference` through `proxy` and checks that the reported bytes
/// are exactly the body bytes the proxy sent (the proxy is cleared first).
fn pull_counted(store: &TestStore, proxy: &RangeProxy, args: &[&str]) -> Value {
    proxy.clear();
    let report = pull(store, args);
    let requests = proxy.requests();
    let sent: u64 = requests.iter().map(|r| r.sent).sum();
    assert!(requests.iter().all(|r| r.complete), "{requests:?}");
    assert_eq!(
        number(&report, "fetched_bytes"),
        sent,
        "{args:?}: strata reports {report}, the proxy sent {sent} bytes in {} requests",
        requests.len()
    );
    report
}

/// Each converted `python` into an empty store (whole: it can save
/// nothing), then `variant-python` partially, then `devel` (its own layers
/// whole: the store lacks them); then the first partially too,
/// where the config says any saving is worth it; then both whole: strata's
/// count is the proxy's, byte for byte.
#[test]
fn reported_bytes_are_what_the_registry_sent() {
    require_root();
    for format in FORMATS {
        for tag in ["python", "variant-python", "devel"] {
            convert(tag, format);
        }
        let proxy = RangeProxy::start(Mode::Pass);
        let store = TestStore::new();
        store.set_config("[pull]\npartial_pulls = \"toc\"\n");
        let python = pushed(proxy.addr(), "python", format);
        let variant = pushed(proxy.addr(), "variant-python", format);

        let first = pull_counted(&store, &proxy, &[&python]);
        let second = pull_counted(&store, &proxy, &[&variant]);
        eprintln!("{format}: python {first}\n{format}: variant-python {second}");
        // A store that indexes nothing can save nothing: each layer is
        // pulled whole at once, its TOC not read ahead.
        assert_eq!(
            number(&first, "fetched_bytes") - number(&first, "document_bytes"),
            number(&first, "announced_bytes"),
            "{first}"
        );
        let layers = |report: &Value| {
            report["layers"]
                .as_object()
                .map(|l| l.values().filter_map(Value::as_u64).sum::<u64>())
        };
        assert_eq!(layer_counts(&first), (0, layers(&first).unwrap(), 0), "{first}");

        let eager = TestStore::new();
        eager.set_config("[pull]\npartial_pulls = \"toc\"\npartial_min_saving_percent = 0\n");
        let partial = pull_counted(&eager, &proxy, &[&python]);
        eprintln!("{format}: python, any saving {partial}");
        assert_eq!(layer_counts(&partial), (layers(&partial).unwrap(), 0, 0), "{partial}");
        // Every file is fetched: most of the blob.
        assert!(
            number(&partial, "fetched_bytes") > number(&partial, "announced_bytes") / 2,
            "{partial}"
        );

        let (fetched, announced) = (number(&second, "fetched_bytes"), number(&second, "announced_bytes"));
        // The variant's files are mostly python's: a small part of it.
        assert!(fetched * 10 < announced, "{format}: {second}");
        assert_eq!(layer_counts(&second), (layers(&second).unwrap(), 0, 0), "{second}");
        assert!(number(&second, "document_bytes") > 0 && number(&second, "document_bytes") < fetched);

        // devel is python's two layers and two of its own. The store lacks
        // all of its large layer: that one is pulled whole, after its TOC.
        // (Its 20 KB layer's few files are fetched by range; python's base
        // layer lacks the files its second layer replaces, which the store
        // did not keep.)
        let devel = pull_counted(&store, &proxy, &[&pushed(proxy.addr(), "devel", format)]);
        eprintln!("{format}: devel {devel}");
        let (partial, whole, present) = layer_counts(&devel);
        assert_eq!((partial + whole + present, whole), (4, 1), "{devel}");
        assert!(
            number(&devel, "fetched_bytes") > number(&devel, "announced_bytes") - number(&first, "announced_bytes"),
            "{devel}"
        );

        // Pulled again: only the manifest and config, every layer present.
        let again = pull_counted(&store, &proxy, &[&variant]);
        assert_eq!(again["up_to_date"], true, "{again}");
        assert_eq!(number(&again, "fetched_bytes"), number(&again, "document_bytes"));
        assert_eq!(layer_counts(&again), (0, 0, layers(&second).unwrap()), "{again}");

        // Whole: every layer's blob once, plus the documents.
        let whole = TestStore::new();
        let report = pull_counted(&whole, &proxy, &["--partial", "off", &variant]);
        assert_eq!(
            number(&report, "fetched_bytes") - number(&report, "document_bytes"),
            announced,
            "{report}"
        );
        assert_eq!(layer_counts(&report), (0, layers(&second).unwrap(), 0), "{report}");
    }
}

/// From an OCI layout, a whole pull reads index.json, the manifest, the
/// config and each layer once: the report says so, to the byte.
#[test]
fn a_layout_pull_reports_the_bytes_it_read() {
    let store = TestStore::new();
    let layout = family_layout();
    let (manifest, _) = image(&layout, "python");
    let size = |digest: &Value| {
        std::fs::metadata(blob_path(&layout, digest.as_str().unwrap()))
            .unwrap()
            .len()
    };
    let layer_bytes: u64 = layers(&manifest).iter().map(|l| size(&l["digest"])).sum();
    let index = std::fs::metadata(layout.join("index.json")).unwrap().len();
    let index_json: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index_json["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "python")
        .map(|m| m["digest"].clone())
        .unwrap();
    let documents = index + size(&manifest_digest) + size(&manifest["config"]["digest"]);

    let report = pull(&store, &[&layout_ref("python")]);
    assert_eq!(number(&report, "announced_bytes"), layer_bytes, "{report}");
    assert_eq!(number(&report, "document_bytes"), documents, "{report}");
    assert_eq!(number(&report, "fetched_bytes"), documents + layer_bytes, "{report}");
    assert_eq!(
        layer_counts(&report),
        (0, layers(&manifest).len() as u64, 0),
        "{report}"
    );

    // The summary a person reads says the same.
    let store = TestStore::new();
    let text = store.ok(&["pull", &layout_ref("python")]);
    let expected = format!("({} B) of ", documents + layer_bytes);
    assert!(text.contains(&expected) && text.contains("whole"), "{text}");
}
