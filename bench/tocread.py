"""bench/tocread.py — eStargz and zstd:chunked tables of contents read
from an OCI layout, in Python, apart from strata's own reader
(crates/image/src/toc), for bench/partial.py: how many compressed bytes
hold the files a store lacks, and how many the TOCs take.

Each TOC is checked against the digest its layer annotation names before
it is used. The compressed range of each chunk follows the formats:
  eStargz       a chunk's gzip member starts at its `offset` and ends where
                the next member starts (the next entry with another
                `offset`), the last at the TOC; small files may share one
                member (`innerOffset`)
  zstd:chunked  a chunk starts at its `offset` and ends where the file's
                next chunk starts, the last at the file's `endOffset`;
                `chunkType: zeros` chunks hold no bytes
"""
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile

ESTARGZ_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
ESTARGZ_FOOTER = 51


def blob_path(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def sha256_text(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(layout, tag):
    with open(os.path.join(layout, "index.json")) as fh:
        index = json.load(fh)
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            with open(blob_path(layout, entry["digest"])) as fh:
                return json.load(fh)
    raise KeyError(f"{tag} is not in {layout}")


def zstd_annotation(annotations, key):
    for prefix in ZSTD_PREFIXES:
        if prefix + key in annotations:
            return annotations[prefix + key]
    return None


class Layer:
    """One TOC layer: `entries` (the TOC's, in order), `toc_bytes` (what
    must be read to get the TOC: eStargz from the TOC's member to the end,
    zstd:chunked the TOC's frame) and `data_end` (where file data ends)."""

    def __init__(self, layout, desc):
        self.digest, self.size = desc["digest"], desc["size"]
        annotations = desc.get("annotations", {})
        with open(blob_path(layout, self.digest), "rb") as blob:
            if ESTARGZ_DIGEST in annotations:
                self.format = "estargz"
                self._read_estargz(blob, annotations[ESTARGZ_DIGEST])
            elif zstd_annotation(annotations, "manifest-position"):
                self.format = "zstd:chunked"
                self._read_zstd(blob, annotations)
            else:
                raise ValueError(f"layer {self.digest} has no TOC annotation")

    def _read_estargz(self, blob, expected):
        blob.seek(self.size - ESTARGZ_FOOTER)
        footer = blob.read(ESTARGZ_FOOTER)
        found = re.search(rb"([0-9a-f]{16})STARGZ", footer)
        if not found:
            raise ValueError(f"layer {self.digest}: no eStargz footer")
        self.data_end = int(found.group(1), 16)
        blob.seek(self.data_end)
        member = blob.read(self.size - self.data_end)
        with tarfile.open(fileobj=io.BytesIO(gzip.GzipFile(fileobj=io.BytesIO(member)).read())) as tar:
            data = tar.extractfile("stargz.index.json").read()
        if sha256_text(data) != expected:
            raise ValueError(f"layer {self.digest}: the TOC does not match {expected}")
        self.toc_bytes = self.size - self.data_end
        self.entries = json.loads(data)["entries"]

    def _read_zstd(self, blob, annotations):
        offset, length = (int(n) for n in zstd_annotation(annotations, "manifest-position").split(":")[:2])
        blob.seek(offset)
        frame = blob.read(length)
        expected = zstd_annotation(annotations, "manifest-checksum")
        if sha256_text(frame) != expected:
            raise ValueError(f"layer {self.digest}: the TOC does not match {expected}")
        data = subprocess.run(["zstd", "-dc"], input=frame, stdout=subprocess.PIPE, check=True).stdout
        self.data_end = offset - 8  # the skippable frame's header
        self.toc_bytes = length
        self.entries = json.loads(data)["entries"]

    def contents(self):
        """{sha256: [(start, end) of each chunk holding bytes]}, for the
        first file of each content (the others hold the same bytes)."""
        spans = []  # (file number, digest, offset, zeros, file end), in TOC order
        file = None
        for e in self.entries:
            kind = e.get("type")
            if kind == "reg" and e.get("size", 0) > 0:
                file = (len(spans), e["digest"], e.get("endOffset", 0))
            elif kind != "chunk" or file is None:
                file = None
                continue
            spans.append((file[0], file[1], e["offset"], e.get("chunkType") == "zeros", file[2]))
        out, first = {}, {}
        for i, (number, digest, offset, zeros, file_end) in enumerate(spans):
            if first.setdefault(digest, number) != number:
                continue
            if self.format == "estargz":
                end = next((s[2] for s in spans[i + 1:] if s[2] != offset), self.data_end)
            else:
                nxt = spans[i + 1] if i + 1 < len(spans) else None
                end = nxt[2] if nxt and nxt[0] == number else file_end
            ranges = out.setdefault(digest, [])
            if not zeros:
                ranges.append((offset, end))
        return out


def union_bytes(ranges):
    """Bytes covered by `ranges`, each byte once."""
    total, end = 0, 0
    for start, stop in sorted(set(ranges)):
        start = max(start, end)
        if stop > start:
            total += stop - start
        end = max(end, stop)
    return total


INLINE_MAX = 512  # strata_erofs::INLINE_MAX: smaller files live inside EROFS images


def small_files(layout, tags):
    """The SHA-256 of every non-empty regular file of at most INLINE_MAX
    bytes in the layers of `tags`, from their TOCs (each checked against
    its annotated digest): what a store holding those images keeps inline
    in their EROFS images, and so by SHA-256 in its small-content table."""
    found = set()
    for tag in tags:
        for desc in manifest(layout, tag)["layers"]:
            for e in Layer(layout, desc).entries:
                if e.get("type") == "reg" and 0 < e.get("size", 0) <= INLINE_MAX:
                    found.add(e["digest"])
    return found


def stored_sha256(root):
    """The SHA-256 of every object in the store at `root` (files of at most
    INLINE_MAX bytes live in the EROFS images, not as objects: see
    small_files)."""
    found = set()
    objects = os.path.join(root, "objects")
    for parent, _, names in os.walk(objects):
        for name in names:
            h = hashlib.sha256()
            with open(os.path.join(parent, name), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            found.add("sha256:" + h.hexdigest())
    return found


def lacking(layout, tag, stored):
    """What a partial pull of `tag` into a store holding `stored` must
    fetch at least: per layer, the compressed ranges of the contents not in
    `stored`, and the TOC. Returns a dict of totals."""
    out = {"blob_bytes": 0, "toc_bytes": 0, "lacking_bytes": 0, "lacking_contents": 0, "contents": 0}
    for desc in manifest(layout, tag)["layers"]:
        layer = Layer(layout, desc)
        out["blob_bytes"] += layer.size
        out["toc_bytes"] += layer.toc_bytes
        ranges = []
        for digest, chunks in layer.contents().items():
            out["contents"] += 1
            if digest not in stored:
                out["lacking_contents"] += 1
                ranges += chunks
        out["lacking_bytes"] += union_bytes(ranges)
    return out
