//! A compact binary encoding of a merged [`Tree`], which older stores kept
//! per committed snapshot (`snapshots/<id>/tree`) so a child's commit could
//! merge onto it. Commit now reads the parent's tree back from its EROFS
//! image; these files are only read (the encoder is kept for the tests).
//!
//! All integers are little-endian; byte strings are a u32 length then bytes.
//! Files are written zstd-compressed (`"STRATREE2\n"` then one zstd frame
//! of the plain encoding below): names and stats compress about 2.4 times.
//! Plain files, as older stores wrote them, are still read.
//!
//! ```text
//! file    = "STRATREE1\n" u64:leaf_count leaf* dir(root)
//! leaf    = stat content
//! stat    = u32:mode u32:uid u32:gid i64:mtime_sec u32:mtime_nsec u32:n (bytes:name bytes:value)*n
//! content = 0 bytes:inline | 1 [32]digest u64:size | 2 bytes:target
//!         | 3 u64:rdev (char) | 4 u64:rdev (block) | 5 (fifo) | 6 (socket)
//! dir     = stat u32:n (bytes:name entry)*n
//! entry   = 0 dir | 1 u64:leaf_index
//! ```

use strata_tree::{Content, Digest, Dir, FileData, Leaf, LeafId, Node, Stat, Tree};

const MAGIC: &[u8] = b"STRATREE1\n";
const MAGIC_ZSTD: &[u8] = b"STRATREE2\n";
/// The largest plain encoding a compressed file may expand to.
const MAX_PLAIN_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
#[error("tree file is corrupt: {0}")]
pub struct CodecError(&'static str);

#[cfg(test)]
pub fn encode(tree: &Tree) -> Result<Vec<u8>, CodecError> {
    let plain = encode_plain(tree);
    let mut out = MAGIC_ZSTD.to_vec();
    zstd::stream::copy_encode(plain.as_slice(), &mut out, 3).map_err(|_| CodecError("zstd compression failed"))?;
    Ok(out)
}

#[cfg(test)]
fn encode_plain(tree: &Tree) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(tree.leaves.len() as u64).to_le_bytes());
    for leaf in &tree.leaves {
        put_stat(&mut out, &leaf.stat);
        match &leaf.content {
            Content::File(FileData::Inline(data)) => {
                out.push(0);
                put_bytes(&mut out, data);
            }
            Content::File(FileData::Object { digest, size }) => {
                out.push(1);
                out.extend_from_slice(&digest.0);
                out.extend_from_slice(&size.to_le_bytes());
            }
            Content::File(FileData::Missing { .. }) => panic!("a snapshot's tree never names a missing content"),
            Content::Symlink(target) => {
                out.push(2);
                put_bytes(&mut out, target);
            }
            Content::CharDevice(rdev) => {
                out.push(3);
                out.extend_from_slice(&rdev.to_le_bytes());
            }
            Content::BlockDevice(rdev) => {
                out.push(4);
                out.extend_from_slice(&rdev.to_le_bytes());
            }
            Content::Fifo => out.push(5),
            Content::Socket => out.push(6),
        }
    }
    put_dir(&mut out, &tree.root);
    out
}

#[cfg(test)]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("names, xattrs and inline data are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
fn put_stat(out: &mut Vec<u8>, stat: &Stat) {
    out.extend_from_slice(&stat.mode.to_le_bytes());
    out.extend_from_slice(&stat.uid.to_le_bytes());
    out.extend_from_slice(&stat.gid.to_le_bytes());
    out.extend_from_slice(&stat.mtime_sec.to_le_bytes());
    out.extend_from_slice(&stat.mtime_nsec.to_le_bytes());
    let n = u32::try_from(stat.xattrs.len()).expect("xattr count fits u32");
    out.extend_from_slice(&n.to_le_bytes());
    for (k, v) in &stat.xattrs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

#[cfg(test)]
fn put_dir(out: &mut Vec<u8>, dir: &Dir) {
    put_stat(out, &dir.stat);
    let n = u32::try_from(dir.entries.len()).expect("entry count fits u32");
    out.extend_from_slice(&n.to_le_bytes());
    for (name, node) in &dir.entries {
        put_bytes(out, name);
        match node {
            Node::Dir(child) => {
                out.push(0);
                put_dir(out, child);
            }
            Node::Leaf(id) => {
                out.push(1);
                out.extend_from_slice(&(id.0 as u64).to_le_bytes());
            }
            Node::Whiteout => unreachable!("merged trees hold no whiteouts"),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = usize::try_from(self.u32()?).map_err(|_| CodecError("length"))?;
        Ok(self.take(n)?.to_vec())
    }
    fn stat(&mut self) -> Result<Stat, CodecError> {
        let mut stat = Stat {
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            mtime_sec: self.i64()?,
            mtime_nsec: self.u32()?,
            ..Stat::default()
        };
        for _ in 0..self.u32()? {
            let k = self.bytes()?;
            let v = self.bytes()?;
            stat.xattrs.insert(k, v);
        }
        Ok(stat)
    }
    fn dir(&mut self, leaves: usize, depth: usize) -> Result<Dir, CodecError> {
        // Recursive: bounded by what an image could hold anyway.
        if depth > strata_erofs::MAX_DEPTH {
            return Err(CodecError("too deep"));
        }
        let mut dir = Dir::new(self.stat()?);
        for _ in 0..self.u32()? {
            let name = self.bytes()?;
            let node = match self.u8()? {
                0 => Node::Dir(Box::new(self.dir(leaves, depth + 1)?)),
                1 => {
                    let id = usize::try_from(self.u64()?).map_err(|_| CodecError("leaf index"))?;
                    if id >= leaves {
                        return Err(CodecError("leaf index out of range"));
                    }
                    Node::Leaf(LeafId(id))
                }
                _ => return Err(CodecError("unknown entry tag")),
            };
            dir.entries.insert(name, node);
        }
        Ok(dir)
    }
}

pub fn decode(buf: &[u8]) -> Result<Tree, CodecError> {
    let Some(frame) = buf.strip_prefix(MAGIC_ZSTD) else {
        return decode_plain(buf);
    };
    let mut plain = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(frame).map_err(|_| CodecError("bad zstd frame"))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(decoder, MAX_PLAIN_BYTES + 1), &mut plain)
        .map_err(|_| CodecError("bad zstd frame"))?;
    if plain.len() as u64 > MAX_PLAIN_BYTES {
        return Err(CodecError("expands beyond the limit"));
    }
    decode_plain(&plain)
}

fn decode_plain(buf: &[u8]) -> Result<Tree, CodecError> {
    let mut r = Reader { buf };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(CodecError("bad magic"));
    }
    let count = usize::try_from(r.u64()?).map_err(|_| CodecError("leaf count"))?;
    let mut leaves = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let stat = r.stat()?;
        let content = match r.u8()? {
            0 => Content::File(FileData::Inline(r.bytes()?)),
            1 => {
                let digest = Digest(r.take(32)?.try_into().expect("32 bytes"));
                Content::File(FileData::Object { digest, size: r.u64()? })
            }
            2 => Content::Symlink(r.bytes()?),
            3 => Content::CharDevice(r.u64()?),
            4 => Content::BlockDevice(r.u64()?),
            5 => Content::Fifo,
            6 => Content::Socket,
            _ => return Err(CodecError("unknown content tag")),
        };
        leaves.push(Leaf { stat, content });
    }
    let root = r.dir(count, 0)?;
    if !r.buf.is_empty() {
        return Err(CodecError("trailing bytes"));
    }
    Ok(Tree {
        root,
        leaves,
        lower_links: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut tree = Tree::new(Stat {
            mode: 0o755,
            mtime_sec: -5,
            mtime_nsec: 7,
            ..Stat::default()
        });
        let mut stat = Stat {
            mode: 0o644,
            uid: 1,
            gid: 2,
            ..Stat::default()
        };
        stat.xattrs.insert(b"user.a".to_vec(), b"b".to_vec());
        let contents = [
            Content::File(FileData::Inline(b"hi".to_vec())),
            Content::File(FileData::Object {
                digest: Digest::of(b"x"),
                size: 1,
            }),
            Content::Symlink(b"../t".to_vec()),
            Content::CharDevice(0x0501),
            Content::BlockDevice(7),
            Content::Fifo,
            Content::Socket,
        ];
        let mut sub = Dir::new(Stat::default_dir());
        for (i, content) in contents.into_iter().enumerate() {
            let id = tree.push_leaf(Leaf {
                stat: stat.clone(),
                content,
            });
            sub.entries.insert(format!("f{i}").into_bytes(), Node::Leaf(id));
        }
        sub.entries.insert(b"link".to_vec(), Node::Leaf(LeafId(0)));
        tree.root.entries.insert(b"d".to_vec(), Node::Dir(Box::new(sub)));
        let bytes = encode(&tree).unwrap();
        assert!(bytes.starts_with(MAGIC_ZSTD));
        assert_eq!(decode(&bytes).unwrap(), tree);
        let plain = encode_plain(&tree);
        assert_eq!(decode(&plain).unwrap(), tree, "plain files of older stores still read");
        for whole in [&bytes, &plain] {
            for cut in [0, 5, 12, whole.len() - 1] {
                assert!(decode(&whole[..cut]).is_err(), "cut at {cut}");
            }
        }
    }
}
