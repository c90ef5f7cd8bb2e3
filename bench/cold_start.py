#!/usr/bin/env python3
"""bench/cold_start.py — issue 16's cold-start goal: on an empty node, the
time from PullImage to the first output of `python3 -c 'print(42)'`, a
lazily pulled image against containerd's overlayfs, and the registry bytes
sent before that output.

Each trial is one empty node on a new ext4 (rig.FreshFs): `strata serve`
and a private containerd with its CRI plugin (tests/fixtures/
containerd-cri.sh), started for the trial; then, through `strata-cri`,
PullImage, then RunPodSandbox, CreateContainer, StartContainer and the
wait for the container's exit (the pod's sandbox image is pulled on the
way, as on any empty node). The time is the sum of those steps as
`strata-cri` measures them; the container must have exited 0 having
printed 42, or the run fails. Variants, taking turns in each repeat
(median of N):

  overlayfs             the CRI's snapshotter overlayfs, the plain (gzip)
                        `python` from the local registry;
  strata whole          snapshotter strata, default config (no lazy
                        pulls: strata fetches each layer whole) but for
                        `log_level = "info"`, as every strata variant
                        here; the same image;
  strata lazy FORMAT    snapshotter strata with
                            [lazy]
                            cri = true
                            prefetch = false
                        and `python` converted by `strata convert` to
                        eStargz and zstd:chunked, pushed once per run as
                        strata-cold/python:estargz|zstd-chunked; strata
                        imports each layer from its TOC and the container's
                        files come through LAZY as it opens them;
  ... counted           the same, pulled through tests/fixtures/
                        range-proxy.py (mode `pass`), a counting proxy in
                        front of the registry, named by a plain-http
                        hosts.toml in containerd's certs.d, which strata
                        reads too (`[registry] config_path`);
  ... prefetch on       the same as `strata lazy` with `prefetch = true`
                        (reported only: the background fetches race the
                        container's).

With prefetch off nothing fetches on its own, so the body bytes the proxy
sent for the image's layer blobs by the container's exit are the bytes
before the first output (TOCs and the files python opened); they are
compared with the layers' compressed size (the manifest's). Every request
through the proxy passes a Python process, which costs the counted trial
0.5 to 0.7 s here, so the time goal is taken from the trials that
pull from the registry itself, as overlayfs and strata whole do; the
counted trials' times are in the table.

Goals, per format: cold start lazy / overlayfs <= TIME_GOAL; bytes
before the first output <= BYTES_GOAL of the compressed layers.
"""
import argparse
import collections
import http.client
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

from rig import FIX, REPO, Containerd, FreshFs, Serve, check_goals, lazy_daemons, settle_disk, sh, unmount_under

TAG = "python"
REPOSITORY = "strata-cold"
FORMATS = {"estargz": "estargz", "zstd:chunked": "zstd-chunked"}
COMMAND = ["python3", "-c", "print(42)"]
TIME_GOAL = 0.3
BYTES_GOAL = 25.0  # percent of the compressed layers
# kind: strata's config (CONFIGS); fmt: the converted image's format, None
# for the plain one; counted: through the counting proxy. The CRI's
# snapshotter is overlayfs for the first, strata for the others.
Variant = collections.namedtuple("Variant", "key label kind fmt counted")
VARIANTS = [Variant("overlayfs", "overlayfs", "whole", None, False),
            Variant("strata_whole", "strata whole", "whole", None, False)]
for _fmt, _tag in FORMATS.items():
    VARIANTS += [Variant(f"lazy_{_tag}", f"strata lazy {_fmt}", "lazy", _fmt, False),
                 Variant(f"counted_{_tag}", f"strata lazy {_fmt}, counted", "lazy", _fmt, True)]
for _fmt, _tag in FORMATS.items():
    VARIANTS.append(Variant(f"prefetch_{_tag}", f"strata lazy {_fmt}, prefetch on", "prefetch", _fmt, False))
CONFIGS = {
    "whole": "",
    "lazy": "[lazy]\ncri = true\nprefetch = false\n",
    "prefetch": "[lazy]\ncri = true\nprefetch = true\n",
}
MANIFEST_TYPES = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])


class CountingProxy:
    """tests/fixtures/range-proxy.py in front of `upstream`, logging to
    `log`: `addr` is the host to name in references."""

    def __init__(self, upstream, log):
        self.upstream, self.log = upstream, log

    def __enter__(self):
        self.stderr = open(self.log + ".stderr", "w")
        self.proc = subprocess.Popen(["python3", os.path.join(FIX, "range-proxy.py"), "--upstream", self.upstream,
                                      "--mode", "pass", "--log", self.log],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.__exit__()
            with open(self.log + ".stderr") as fh:
                raise RuntimeError(f"range-proxy.py did not start: {line!r}\n{fh.read()}")
        self.addr = f"127.0.0.1:{line}"
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.stderr.close()

    def idle(self):
        """Waits until the proxy answers no request (each is logged once
        its answer is sent)."""
        for _ in range(200):
            conn = http.client.HTTPConnection(self.addr, timeout=10)
            conn.request("GET", "/_proxy/in-flight")
            busy = int(conn.getresponse().read())
            conn.close()
            if busy == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("range-proxy.py still answers requests after 10 s")

    def requests(self):
        self.idle()
        if not os.path.exists(self.log):
            return []
        with open(self.log) as fh:
            return [json.loads(line) for line in fh if line.strip()]


def layer_bytes(requests, digests):
    """Body bytes sent for GETs of the given blobs."""
    return sum(r.get("sent", 0) for r in requests
               if r["method"] == "GET" and r.get("status") != 307
               and "/blobs/" in r["path"] and r["path"].rsplit("/", 1)[-1] in digests)


def manifest_layers(registry, repository, reference):
    """The manifest's layers (digest, size) in the registry."""
    req = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{reference}",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=30) as resp:
        manifest = json.load(resp)
    return {layer["digest"]: layer["size"] for layer in manifest["layers"]}


def convert(strata, registry):
    """Converts the plain `python` to each format and pushes it; returns
    {format: {"tag", "layers": {digest: size}, "convert": report}}."""
    images = {}
    for fmt, tag in FORMATS.items():
        report = json.loads(sh(strata, "--config", "/dev/null", "convert", "--json", "--format", fmt,
                               f"{registry}/strata/{TAG}:latest", f"{registry}/{REPOSITORY}/{TAG}:{tag}",
                               capture=True))
        images[fmt] = {"tag": tag, "convert": report,
                       "layers": manifest_layers(registry, f"{REPOSITORY}/{TAG}", report["manifest_digest"])}
    return images


def plain_http_host(certs_d, host):
    """`<certs.d>/<host>/hosts.toml` making `host` a plain-http registry,
    for containerd and strata (tests' cri_support::plain_http_host)."""
    os.makedirs(os.path.join(certs_d, host), exist_ok=True)
    with open(os.path.join(certs_d, host, "hosts.toml"), "w") as fh:
        fh.write(f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')


def lazy_mounted(path):
    with open("/proc/self/mountinfo") as fh:
        return any(f" {path} " in line and "fuse.strata-lazy" in line for line in fh)


def stop_lazy_daemons(root):
    """Kills the store's LAZY daemons (they outlive serve) and waits for
    them to go, so the filesystem can be unmounted."""
    pids = lazy_daemons(root)
    for pid in pids:
        subprocess.run(["kill", str(pid)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        if not any(os.path.exists(f"/proc/{pid}") for pid in pids):
            return
        time.sleep(0.05)
    for pid in pids:
        subprocess.run(["kill", "-9", str(pid)], stderr=subprocess.DEVNULL)


def cri_call(cri_bin, socket, *args, what, serve):
    """`strata-cri --socket SOCKET ARGS`, its JSON; fails with strata's log."""
    out = subprocess.run([cri_bin, "--socket", socket, *args], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if out.returncode != 0:
        raise RuntimeError(f"{what}: strata-cri {' '.join(args)} failed: {out.stderr.strip()}\n"
                           f"strata's log (tail):\n{tail(serve.log_text())}")
    return json.loads(out.stdout)


def tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


def trial(bins, registry, work, images, variant):
    """One empty node: PullImage, a pod, `python3 -c 'print(42)'`; the
    steps' seconds, and for the counted variants the layer bytes."""
    strata, cri_bin = bins
    key, label, kind, fmt, counted = variant
    sh("sync")
    settle_disk(work)
    log = os.path.join(work, f"proxy-{key}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    with FreshFs(work) as fs:
        root = os.path.join(fs, "strata")
        certs_d = os.path.join(fs, "containerd", "certs.d")
        proxy = CountingProxy(registry, log).__enter__() if counted else None
        try:
            if proxy:
                plain_http_host(certs_d, proxy.addr)
            host = proxy.addr if proxy else registry
            ref = f"{host}/{REPOSITORY}/{TAG}:{images[fmt]['tag']}" if fmt else f"{registry}/strata/{TAG}:latest"
            config = os.path.join(fs, "strata.toml")
            with open(config, "w") as fh:
                # info: the fast path's "layer fetched by strata" lines,
                # which run_node checks.
                fh.write('log_level = "info"\n' + CONFIGS[kind])
                if kind != "whole":
                    fh.write(f'[registry]\nconfig_path = "{certs_d}"\n')
            socket = os.path.join(fs, "strata.sock")
            try:
                with Serve(strata, root, socket, config) as serve:
                    if kind != "whole":
                        lazy = os.path.join(root, "lazy")
                        for _ in range(200):
                            if lazy_mounted(lazy):
                                break
                            time.sleep(0.05)
                        else:
                            raise RuntimeError(f"{label}: serve mounted no LAZY at {lazy}:\n{tail(serve.log_text())}")
                    with Containerd(fs, socket, "overlayfs" if key == "overlayfs" else "strata") as cd:
                        return run_node(cri_bin, cd, serve, fs, ref, variant, proxy, images)
            finally:
                stop_lazy_daemons(root)
        finally:
            if proxy:
                proxy.__exit__()


def run_node(cri_bin, cd, serve, fs, ref, variant, proxy, images):
    key, label, kind, fmt, counted = variant
    logs = os.path.join(fs, "logs")
    # With prefetch on, PullImage and the pod go in one call: no gap in
    # which the prefetcher would work untimed.
    together = kind == "prefetch"
    sample = {}
    if not together:
        pulled = cri_call(cri_bin, cd.socket, "pull", ref, what=label, serve=serve)
        sample["pull_s"] = pulled["pull_s"]
        if proxy:
            sample["pull_bytes"] = layer_bytes(proxy.requests(), images[fmt]["layers"])
    args = ["run", "--log-root", logs] + (["--pull"] if together else []) + [ref, "--", *COMMAND]
    ran = cri_call(cri_bin, cd.socket, *args, what=label, serve=serve)
    if ran["exit_code"] != 0 or ran["stdout"].strip() != "42":
        raise RuntimeError(f"{label}: {shlex.join(COMMAND)} exited {ran['exit_code']} printing {ran['stdout']!r}, "
                           f"stderr {ran['stderr']!r}\nstrata's log (tail):\n{tail(serve.log_text())}")
    t = ran["timings"]
    if together:
        sample["pull_s"] = t["pull_s"]
    sample["sandbox_s"] = t["run_pod_sandbox_s"]
    sample["container_s"] = t["create_container_s"] + t["start_container_s"] + t["wait_s"]
    sample["total_s"] = sample["pull_s"] + sample["sandbox_s"] + sample["container_s"]
    if kind != "whole":
        # The fast path took every layer, lazily (tests/cri_lazy.rs's checks).
        log = serve.log_text().splitlines()
        fallbacks = [line for line in log if "containerd fetches" in line or "not lazily" in line]
        fetched = [d for d in images[fmt]["layers"] if any("layer fetched by strata" in line and d in line
                                                           for line in log)]
        if fallbacks or len(fetched) != len(images[fmt]["layers"]):
            raise RuntimeError(f"{label}: not every layer was pulled lazily by strata ({len(fetched)} of "
                               f"{len(images[fmt]['layers'])} fetched):\n" + "\n".join(fallbacks[:10])
                               + f"\nstrata's log (tail):\n{tail(serve.log_text())}")
    if proxy:
        sample["bytes"] = layer_bytes(proxy.requests(), images[fmt]["layers"])
    return sample


def measure(strata, cri_bin, registry, work, repeats):
    """Converts and pushes `python`, runs the trials; returns the section
    of results.json."""
    work = os.path.realpath(work)
    unmount_under(work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    images = convert(strata, registry)
    plain = manifest_layers(registry, f"strata/{TAG}", "latest")
    samples = {v.key: [] for v in VARIANTS}
    for _ in range(repeats):
        # The variants take turns, so a drift in the machine's speed hits
        # all alike.
        for variant in VARIANTS:
            samples[variant.key].append(trial((strata, cri_bin), registry, work, images, variant))
    return summarize(repeats, images, plain, samples)


def summarize(repeats, images, plain, samples):
    med = lambda key, field: round(statistics.median(s[field] for s in samples[key]), 3)  # noqa: E731
    variants = []
    for key, label, kind, fmt, counted in VARIANTS:
        row = {"key": key, "variant": label, "format": fmt or "gzip",
               "compressed_bytes": sum((images[fmt]["layers"] if fmt else plain).values()),
               "samples": samples[key]}
        for field in ("total_s", "pull_s", "sandbox_s", "container_s"):
            row[field] = med(key, field)
        if counted:
            row["bytes"] = max(s["bytes"] for s in samples[key])
            row["pull_bytes"] = max(s["pull_bytes"] for s in samples[key])
            row["bytes_percent"] = round(100 * row["bytes"] / row["compressed_bytes"], 2)
        variants.append(row)
    by_key = {row["key"]: row for row in variants}
    base = by_key["overlayfs"]["total_s"]
    for row in variants:
        row["ratio"] = round(row["total_s"] / base, 3)
    what = f"cold start to the output of `{shlex.join(COMMAND)}`"
    goals = []
    for fmt, tag in FORMATS.items():
        lazy, counted = by_key[f"lazy_{tag}"], by_key[f"counted_{tag}"]
        goals.append({"goal": f"{what}, strata lazy / overlayfs", "format": fmt, "measured": lazy["ratio"],
                      "unit": "x", "limit": TIME_GOAL,
                      "goal_text": f"<= {TIME_GOAL} ({lazy['total_s']:.2f} s / {base:.2f} s)",
                      "met": lazy["ratio"] <= TIME_GOAL})
        goals.append({"goal": "layer bytes sent before the first output / compressed layers", "format": fmt,
                      "measured": counted["bytes_percent"], "unit": "%", "limit": BYTES_GOAL,
                      "goal_text": f"<= {BYTES_GOAL:g} % ({counted['bytes']:,} B of {counted['compressed_bytes']:,} B; "
                                   f"{counted['pull_bytes']:,} B by PullImage's end)",
                      "met": counted["bytes_percent"] <= BYTES_GOAL})
    for row in variants:
        if row["key"] == "strata_whole" or row["key"].startswith("prefetch_"):
            goals.append({"goal": f"{what}, {row['variant']} / overlayfs", "format": row["format"],
                          "measured": row["ratio"], "unit": "x", "limit": None,
                          "goal_text": f"reported ({row['total_s']:.2f} s / {base:.2f} s)", "met": None})
    return {"repeats": repeats, "image": TAG, "command": COMMAND, "variants": variants, "goals": goals,
            "converted": {fmt: {"tag": i["tag"], "manifest_digest": i["convert"]["manifest_digest"],
                                "compressed_bytes": sum(i["layers"].values())} for fmt, i in images.items()}}


def markdown(section):
    lines = ["", f"Cold start (issue 16): an empty node, one per trial, through the CRI: PullImage + RunPodSandbox + "
                 f"CreateContainer + StartContainer until `{shlex.join(section['command'])}` exited having printed 42; "
                 f"median of {section['repeats']}. Lazy: `[lazy] cri = true`, prefetch off unless said; \"counted\": "
                 "pulled through a counting proxy (slower), bytes are the layer blobs' bytes the registry sent "
                 "by then.", "",
             "| variant | format | total | PullImage | RunPodSandbox | Create+Start+exit | / overlayfs | layer bytes "
             "| of compressed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in section["variants"]:
        got = f"{r['bytes']:,} B" if "bytes" in r else ""
        share = f"{r['bytes_percent']} %" if "bytes_percent" in r else ""
        lines.append(f"| {r['variant']} | {r['format']} | {r['total_s']:.2f} s | {r['pull_s']:.2f} s "
                     f"| {r['sandbox_s']:.2f} s | {r['container_s']:.2f} s | {r['ratio']:.3f} | {got} | {share} |")
    lines += ["", "| goal | format | measured | goal | met |", "|---|---|---|---|---|"]
    for g in section["goals"]:
        met = {True: "yes", False: "**no**", None: "reported"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['format']} | {g['measured']} {g['unit']} | {g['goal_text']} | {met} |")
    return lines


def validate(section):
    """An error message, or None if every goal row holds a measurement."""
    return check_goals(section, len(FORMATS) * 3 + 1, "cold start")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="use target/debug's binaries (else target/release's)")
    parser.add_argument("--strata", help="the strata binary (default: by --debug)")
    parser.add_argument("--cri", help="the strata-cri binary (default: by --debug)")
    parser.add_argument("--registry", default="127.0.0.1:" + os.environ.get("STRATA_TEST_REGISTRY_PORT", "5000"))
    parser.add_argument("--work", default="/var/tmp/strata-bench-cold")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cold_start.py: run as root")
    target = os.path.join(REPO, "target", "debug" if args.debug else "release")
    strata = args.strata or os.path.join(target, "strata")
    cri_bin = args.cri or os.path.join(target, "strata-cri")
    for binary in (strata, cri_bin):
        if not os.path.exists(binary):
            sys.exit(f"bench/cold_start.py: no {binary}; cargo build -p strata -p strata-bench-cri"
                     + ("" if args.debug else " --release"))
    section = measure(strata, cri_bin, args.registry, args.work, args.repeats)
    print(json.dumps(section, indent=1))
    print("\n".join(markdown(section)))
    problem = validate(section)
    if problem:
        sys.exit(f"bench/cold_start.py: {problem}")


if __name__ == "__main__":
    main()
