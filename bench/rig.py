"""The benchmark's rig: processes, daemons and filesystems that bench/compare
measures with. `strata serve`, a private containerd (with or without its CRI
plugin, tests/fixtures/containerd*.sh), and a fresh ext4 filesystem for each
timed pull (../shared/DEPENDENCIES.md, "Measuring on this machine": ext4
slows down inode allocation after mass deletes, so a pull on an aged
filesystem measures the previous run's deletions)."""
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")


def check_goals(section, rows, what):
    """An error message, or None if `section` has `rows` goal rows, each
    with a positive measurement and, where it has a limit, a verdict."""
    if not section or len(section.get("goals", [])) != rows:
        return f"{what}: goals missing"
    for g in section["goals"]:
        name = f"{g.get('goal')} ({g.get('format')})"
        if not isinstance(g.get("measured"), (int, float)) or g["measured"] <= 0:
            return f"{what}: {name} is {g.get('measured')!r}"
        if g.get("limit") is not None and not isinstance(g.get("met"), bool):
            return f"{what}: {name} has no verdict"
    return None


def sh(*args, env=None, capture=False):
    result = subprocess.run(args, env=env, check=True, text=True,
                            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=None)
    return result.stdout if capture else ""


def timed(*args, env=None):
    start = time.monotonic()
    sh(*args, env=env)
    return time.monotonic() - start


def allocated(path):
    out = subprocess.run(["du", "-sx", "--block-size=1", path], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return int(out.stdout.split()[0]) if out.stdout else 0


def block_stat(path):
    """The kernel's I/O counters of the block device holding `path`, or None."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as fh:
            return fh.read().split()
    except OSError:
        return None


def settle_disk(path, quiet_s=0.6, timeout_s=60):
    """Waits until the disk under `path` has done no I/O for `quiet_s`.
    Deleting written files makes the disk work on after `sync` returns (on a
    filesystem mounted with `discard` it trims the freed blocks): without
    this wait, a run would pay for the previous run's cleanup."""
    deadline = time.monotonic() + timeout_s
    last, quiet_since = block_stat(path), time.monotonic()
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        now = block_stat(path)
        if now != last or now[8] != "0":
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
    if last is not None:
        print(f"bench/compare: the disk under {path} did not go quiet in {timeout_s} s", file=sys.stderr)


def lazy_daemons(root):
    """pids of the `strata lazy-daemon`s of the store at `root`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"lazy-daemon" in argv and any(root.encode() in arg for arg in argv):
            pids.append(int(pid))
    return pids


def unmount_under(path):
    """Everything mounted below `path` (strata's EROFS images, task rootfs),
    deepest first."""
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for point in sorted((p for p in points if p.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)


class FreshFs:
    """A new ext4 filesystem on a loop device at DIR/fs, for one timed run;
    removed on exit. Its inode tables are written at mkfs time, so the
    filesystem does no lazy initialisation while a run is timed."""

    def __init__(self, parent, size_gib=8):
        self.image = os.path.join(parent, "fresh.ext4")
        self.path = os.path.join(parent, "fs")
        self.size = size_gib << 30

    def __enter__(self):
        with open(self.image, "wb") as fh:
            fh.truncate(self.size)
        sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.image)
        os.makedirs(self.path, exist_ok=True)
        sh("mount", "-o", "loop", self.image, self.path)
        return self.path

    def __exit__(self, *exc):
        unmount_under(self.path)
        subprocess.run(["umount", self.path], stderr=subprocess.DEVNULL)
        subprocess.run(["umount", "-l", self.path], stderr=subprocess.DEVNULL)
        os.remove(self.image)


class Serve:
    """`strata serve` on ROOT, containerd's proxy snapshotter."""

    def __init__(self, strata, root, socket, config):
        self.strata, self.root, self.socket, self.config = strata, root, socket, config

    def __enter__(self):
        os.makedirs(os.path.dirname(self.root), exist_ok=True)
        self.log = open(self.root + ".serve.log", "a")
        self.proc = subprocess.Popen([self.strata, "--root", self.root, "--config", self.config,
                                      "serve", "--address", self.socket],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(200):
            if os.path.exists(self.socket):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"strata serve exited; see {self.log.name}")
            time.sleep(0.05)
        raise RuntimeError("strata serve did not listen")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()

    def log_text(self):
        with open(self.log.name) as fh:
            return fh.read()

    def settle(self):
        """Waits until the upper dirs commits left behind (duplicates of
        stored files, directories) are deleted: strata deletes them in the
        background after each Commit."""
        tmp = os.path.join(self.root, "tmp")
        for _ in range(600):
            if not os.listdir(tmp):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{tmp} did not empty")

    def objects(self):
        out = sh(self.strata, "--root", self.root, "df", "--json", capture=True)
        return json.loads(out)["objects"]


class Containerd:
    """A private containerd under WORKDIR/containerd: plain (ctr), or with the
    CRI plugin on and `cri_snapshotter` as the CRI's snapshotter."""

    def __init__(self, workdir, strata_socket, cri_snapshotter=None):
        script = "containerd-cri.sh" if cri_snapshotter else "containerd.sh"
        self.script = os.path.join(FIX, script)
        self.env = dict(os.environ, STRATA_CONTAINERD_DIR=os.path.join(workdir, "containerd"),
                        STRATA_SOCKET=strata_socket)
        if cri_snapshotter:
            self.env["STRATA_CRI_SNAPSHOTTER"] = cri_snapshotter
        self.dir = self.env["STRATA_CONTAINERD_DIR"]
        self.root = os.path.join(self.dir, "root")
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.content = os.path.join(self.root, "io.containerd.content.v1.content")
        self.overlayfs = os.path.join(self.root, "io.containerd.snapshotter.v1.overlayfs")

    def __enter__(self):
        sh("bash", self.script, "start", env=self.env)
        return self

    def __exit__(self, *exc):
        sh("bash", self.script, "stop", env=self.env)

    def ctr(self, *args, capture=False):
        return sh("bash", self.script, "ctr", *args, env=self.env, capture=capture)

    def reset(self, serve=None):
        """Remove every image and content blob; containerd's GC removes the
        snapshots (strata's through its Remove and Cleanup)."""
        for name in self.ctr("images", "ls", "-q", capture=True).split():
            self.ctr("images", "rm", "--sync", name)
        for digest in self.ctr("content", "ls", "-q", capture=True).split():
            self.ctr("content", "rm", digest)
        lease = self.ctr("leases", "create", capture=True).strip()
        self.ctr("leases", "delete", "--sync", lease)
        if serve:
            for _ in range(300):
                if serve.objects() == 0:
                    return
                time.sleep(0.1)
            raise RuntimeError("strata still holds objects after containerd's GC")

    def pull(self, ref, snapshotter):
        start = time.monotonic()
        self.ctr("images", "pull", "--plain-http", "--snapshotter", snapshotter, ref)
        return time.monotonic() - start

    def run(self, ref, snapshotter, *cmd):
        start = time.monotonic()
        self.ctr("run", "--rm", "--snapshotter", snapshotter, ref, f"bench-{os.getpid()}", *cmd)
        return time.monotonic() - start


class Cri:
    """`strata-cri` against a containerd with its CRI plugin."""

    def __init__(self, binary, containerd, log_root):
        self.binary, self.socket, self.log_root = binary, containerd.socket, log_root

    def call(self, *args):
        out = sh(self.binary, "--socket", self.socket, *args, capture=True)
        return json.loads(out)

    def pull(self, ref):
        return self.call("pull", ref)["pull_s"]

    def run(self, ref, *cmd):
        """Seconds from the CreateContainer call to the container's exit as
        containerd recorded it (its `finished_at`); the client's own wait
        polls every 20 ms, a step as large as the gap measured."""
        out = self.call("run", "--log-root", self.log_root, ref, "--", *cmd)
        if out["exit_code"] != 0:
            raise RuntimeError(f"{ref} {cmd}: exit {out['exit_code']}: {out['stderr']}")
        t = out["timings"]
        if "exited_after_create_s" in t:
            return t["exited_after_create_s"]
        return t["create_container_s"] + t["start_container_s"] + t["wait_s"]
