"""bench/partial.py — issue 15's goals for partial pulls, measured in a
bench/compare run (its "partial pulls" section):

  1. bytes `strata pull` fetches for `variant-python` into a store holding
     `python` and `variant` (all three converted): at most 1.2 x the
     compressed bytes of the files the store lacks, plus the TOCs;
  2. the time of that pull: at most 0.35 x the same pull with partial
     pulls off (`--partial off`), into the same store state;
  3. a partial-capable pull of `variant-python` into an empty store: at
     most 1.05 x a plain `strata pull` of the unconverted image;
  4. `strata convert`'s throughput (MB of uncompressed tar per second),
     beside `gzip -6` and `zstd -3` compressing the same layers' tars.

The images are converted from the family's OCI layout into one here
(timed: goal 4), then pushed with `skopeo copy --preserve-digests` to the
local registry as strata-partial/TAG:FORMAT, which every pull reads from.
Bytes fetched are what `strata pull --json` reports (the body bytes its
source received; tests/pull_report.rs checks them against a counting
proxy). "Lacking" is computed apart from strata: bench/tocread.py reads
the converted layers' TOCs in Python (each checked against its annotated
digest) and hashes every object of the store after `python` and `variant`
were pulled; files of at most 512 bytes live in EROFS images, not as
objects, and the store keeps them by SHA-256 in its small-content table,
so for them the present images' own TOCs count instead (their small
regular files). A file whose SHA-256 is among neither is lacking, and its
chunks' compressed ranges are summed, each byte once.
Each timed pull runs on a fresh ext4 filesystem (rig.FreshFs).
"""
import json
import os
import statistics
import subprocess
import time

from rig import FIX, REPO, FreshFs, check_goals, settle_disk, sh
import tocread

FORMATS = {"zstd:chunked": "zstd-chunked", "estargz": "estargz"}
PRESENT = ["python", "variant"]
TARGET = "variant-python"
BYTES_FACTOR, TIME_RATIO, EMPTY_RATIO = 1.2, 0.35, 1.05
# The levels strata convert uses by default (crates/image/src/convert).
GZIP_LEVEL, ZSTD_LEVEL = 6, 3


def converted_ref(registry, tag, fmt):
    return f"{registry}/strata-partial/{tag}:{FORMATS[fmt]}"


def pull(strata, root, config, ref, *flags):
    """`strata pull --json`: (its report, wall seconds)."""
    start = time.monotonic()
    out = sh(strata, "--root", root, "--config", config, "pull", "--json", *flags, ref, capture=True)
    return json.loads(out), time.monotonic() - start


def convert(strata, family, out, tags):
    """Converts `tags` of the family to each format, into OCI layouts under
    `out`; returns {format: [strata convert --json reports]}."""
    reports = {}
    for fmt in FORMATS:
        layout = os.path.join(out, FORMATS[fmt])
        reports[fmt] = [json.loads(sh(strata, "--config", "/dev/null", "convert", "--json", "--format", fmt,
                                      f"oci:{family}:{tag}", f"oci:{layout}:{tag}", capture=True))
                        for tag in tags]
    return reports


def push(out, registry):
    for fmt, name in FORMATS.items():
        for tag in PRESENT + [TARGET]:
            sh("skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
               f"oci:{os.path.join(out, name)}:{tag}", f"docker://{converted_ref(registry, tag, fmt)}")


def compressor_baseline(family, tags, work):
    """gzip and zstd (one thread each) compressing the uncompressed tars of
    the layers of `tags`, each layer once: bytes and seconds."""
    tars = os.path.join(work, "tars")
    os.makedirs(tars, exist_ok=True)
    seen, total = set(), {"tar_bytes": 0, "gzip_s": 0.0, "zstd_s": 0.0}
    for tag in tags:
        for layer in tocread.manifest(family, tag)["layers"]:
            if layer["digest"] in seen:
                continue
            seen.add(layer["digest"])
            blob = tocread.blob_path(family, layer["digest"])
            tar = os.path.join(tars, layer["digest"].split(":")[1] + ".tar")
            media = layer["mediaType"]
            unpack = ["gzip", "-dc"] if media.endswith("gzip") else ["zstd", "-dc"] if media.endswith("zstd") else ["cat"]
            with open(blob, "rb") as src, open(tar, "wb") as dst:
                subprocess.run(unpack, stdin=src, stdout=dst, check=True)
            total["tar_bytes"] += os.path.getsize(tar)
            for key, cmd in [("gzip_s", ["gzip", f"-{GZIP_LEVEL}", "-c"]),
                             ("zstd_s", ["zstd", f"-{ZSTD_LEVEL}", "-T1", "-q", "-c"])]:
                with open(tar, "rb") as src:
                    start = time.monotonic()
                    subprocess.run(cmd, stdin=src, stdout=subprocess.DEVNULL, check=True)
                    total[key] += time.monotonic() - start
            os.remove(tar)
    return total


def on_fresh_fs(work, run):
    """`run(store root)` on a new filesystem, after the disk went quiet."""
    sh("sync")
    settle_disk(work)
    with FreshFs(work) as fs:
        return run(os.path.join(fs, "strata"))


def measure_format(strata, config, registry, work, out, fmt, repeats, plain_ref=None):
    """The timed pulls of one format; the bytes and "lacking" from the first.
    With `plain_ref` (goal 3), each repeat also pulls the converted image
    into an empty store and `plain_ref` (the unconverted image) into
    another, side by side, in alternating order, so drift during the run
    falls on both."""
    empty = plain_ref is not None
    refs = {tag: converted_ref(registry, tag, fmt) for tag in PRESENT + [TARGET]}
    m = {"partial_s": [], "off_s": [], "empty_s": [], "plain_s": [], "fetched_bytes": [], "off_fetched_bytes": []}

    def with_present(partial):
        def run(root):
            for tag in PRESENT:
                pull(strata, root, config, refs[tag])
            if partial and "lacking" not in m:
                stored = tocread.stored_sha256(root) | tocread.small_files(os.path.join(out, FORMATS[fmt]), PRESENT)
                m["lacking"] = tocread.lacking(os.path.join(out, FORMATS[fmt]), TARGET, stored)
            sh("sync")
            flags = [] if partial else ["--partial", "off"]
            return pull(strata, root, config, refs[TARGET], *flags)
        return run

    for repeat in range(repeats):
        report, seconds = on_fresh_fs(work, with_present(True))
        m["partial_s"].append(seconds)
        m["fetched_bytes"].append(report["fetched_bytes"])
        m["layers"] = report["layers"]
        m["announced_bytes"] = report["announced_bytes"]
        report, seconds = on_fresh_fs(work, with_present(False))
        m["off_s"].append(seconds)
        m["off_fetched_bytes"].append(report["fetched_bytes"])
        if empty:
            pairs = [("empty_s", refs[TARGET]), ("plain_s", plain_ref)]
            for key, ref in pairs if repeat % 2 == 0 else reversed(pairs):
                _, seconds = on_fresh_fs(work, lambda root, ref=ref: pull(strata, root, config, ref))
                m[key].append(seconds)
    lacking = m["lacking"]
    fetched = max(m["fetched_bytes"])
    limit = BYTES_FACTOR * lacking["lacking_bytes"] + lacking["toc_bytes"]
    m["samples_s"] = {k: m.pop(k) for k in ("partial_s", "off_s", "empty_s", "plain_s")}
    m["fetched_over_limit"] = round(fetched / limit, 3)
    partial_s, off_s = (statistics.median(m["samples_s"][k]) for k in ("partial_s", "off_s"))
    empty_s = statistics.median(m["samples_s"]["empty_s"]) if empty else None
    plain_s = statistics.median(m["samples_s"]["plain_s"]) if empty else None
    m.update(partial_s=partial_s, off_s=off_s, empty_s=empty_s, plain_s=plain_s)
    rows = [
        {"goal": f"bytes fetched for {TARGET} with {' and '.join(PRESENT)} present", "format": fmt,
         "measured": fetched, "unit": "B", "limit": round(limit),
         "goal_text": f"<= {BYTES_FACTOR} x {lacking['lacking_bytes']:,} B lacking + {lacking['toc_bytes']:,} B of TOCs",
         "met": fetched <= limit},
        {"goal": "time of that pull / the same pull with partial pulls off", "format": fmt,
         "measured": round(partial_s / off_s, 3), "unit": "x", "limit": TIME_RATIO,
         "goal_text": f"<= {TIME_RATIO} ({partial_s:.2f} s / {off_s:.2f} s)", "met": partial_s <= TIME_RATIO * off_s},
    ]
    if empty:
        rows.append(
            {"goal": f"partial-capable pull of {TARGET} into an empty store / plain pull of the unconverted image",
             "format": fmt, "measured": round(empty_s / plain_s, 3), "unit": "x", "limit": EMPTY_RATIO,
             "goal_text": f"<= {EMPTY_RATIO} ({empty_s:.2f} s / {plain_s:.2f} s)", "met": empty_s <= EMPTY_RATIO * plain_s})
    return m, rows


def measure(strata, family, registry, work, tags, repeats):
    """Converts, pushes and measures; returns the section of results.json."""
    out = os.path.join(work, "converted")
    reports = convert(strata, family, out, tags)
    baseline = compressor_baseline(family, tags, work)
    push(out, registry)
    config = os.path.join(work, "partial.toml")
    with open(config, "w") as fh:
        fh.write('[pull]\npartial_pulls = "toc"\n')
    plain_ref = f"{registry}/strata/{TARGET}:latest"
    section = {"repeats": repeats, "converted_tags": tags, "formats": {}, "goals": []}
    for fmt in FORMATS:
        measured, rows = measure_format(strata, config, registry, work, out, fmt, repeats, plain_ref)
        section["formats"][fmt] = measured
        section["goals"] += rows
    mb = lambda n, s: round(n / 1e6 / s, 1) if s else None  # noqa: E731
    gzip_mbs, zstd_mbs = mb(baseline["tar_bytes"], baseline["gzip_s"]), mb(baseline["tar_bytes"], baseline["zstd_s"])
    for fmt, done in reports.items():
        tar_bytes, seconds = sum(r["tar_bytes"] for r in done), sum(r["seconds"] for r in done)
        section["formats"][fmt]["convert"] = {"tar_bytes": tar_bytes, "seconds": seconds}
        beside = f"gzip -{GZIP_LEVEL}" if fmt == "estargz" else f"zstd -{ZSTD_LEVEL}"
        section["goals"].append({
            "goal": f"strata convert of {len(tags)} images, MB of tar per second", "format": fmt,
            "measured": mb(tar_bytes, seconds), "unit": "MB/s", "limit": None,
            "goal_text": f"reported beside gzip -{GZIP_LEVEL}: {gzip_mbs} MB/s, zstd -{ZSTD_LEVEL}: {zstd_mbs} MB/s "
                         f"(one thread each, the same layers once); {beside} is its compressor",
            "met": None})
    section["compressors"] = dict(baseline, gzip_mb_per_s=gzip_mbs, zstd_mb_per_s=zstd_mbs)
    return section


def markdown(section):
    lines = ["", f"Partial pulls (issue 15), median of {section['repeats']}; converted by `strata convert`, "
             "bytes as `strata pull --json` reports them, \"lacking\" from the TOCs and the store's objects "
             "(bench/tocread.py; a file of at most 512 B counts as held if a present image's TOC lists it: "
             "the store keeps small contents by SHA-256).", "",
             "| goal | format | measured | goal | met |", "|---|---|---|---|---|"]
    for g in section["goals"]:
        value = f"{g['measured']:,} {g['unit']}" if g["measured"] is not None else "not measured"
        met = "reported" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {g['format']} | {value} | {g['goal_text']} | {met} |")
    return lines


def validate(section):
    """An error message, or None if every goal row holds a measurement."""
    return check_goals(section, 4 * len(FORMATS), "partial pulls")


def main():
    """Goals 1 and 2 on their own (bench/compare runs all four):
    `bench/partial.py [--repeats N] [--work DIR] [--strata BIN]`. The
    family's layout comes from tests/fixtures/build-images.sh (cached);
    the converted layouts are kept in DIR/converted and reused."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/var/tmp/strata-bench-partial")
    parser.add_argument("--strata", default=os.path.join(REPO, "target", "release", "strata"))
    parser.add_argument("--registry", default="127.0.0.1:" + os.environ.get("STRATA_TEST_REGISTRY_PORT", "5000"))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--empty", action="store_true",
                        help="also goal 3: empty-store pulls beside plain pulls of the unconverted image")
    args = parser.parse_args()
    family = os.path.join(sh("bash", os.path.join(FIX, "build-images.sh"), capture=True).strip(), "oci")
    os.makedirs(args.work, exist_ok=True)
    out = os.path.join(args.work, "converted")
    if not os.path.isdir(out):
        convert(args.strata, family, out, PRESENT + [TARGET])
        push(out, args.registry)
    config = os.path.join(args.work, "partial.toml")
    with open(config, "w") as fh:
        fh.write('[pull]\npartial_pulls = "toc"\n')
    rows = []
    for fmt in args.formats.split(","):
        plain_ref = f"{args.registry}/strata/{TARGET}:latest" if args.empty else None
        measured, goal_rows = measure_format(args.strata, config, args.registry, args.work, out, fmt,
                                             args.repeats, plain_ref)
        print(json.dumps({fmt: measured}), file=sys.stderr)
        rows += goal_rows
    for line in markdown({"repeats": args.repeats, "goals": rows}):
        print(line)


if __name__ == "__main__":
    main()
