//! The store's object name: the fs-verity SHA-256 digest (4 KiB blocks).

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use composefs::fsverity::{FsVerityHashValue, FsVerityHasher, Sha256HashValue};

/// An fs-verity SHA-256 digest with 4 KiB blocks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {text:?}: expected 64 lowercase hex characters")]
pub struct DigestParseError {
    pub text: String,
}

impl Digest {
    /// The digest of `data`, computed in user space.
    pub fn of(data: &[u8]) -> Self {
        let mut hasher = VerityHasher::new();
        hasher.update(data);
        hasher.finish()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `XX/REST`: the object's path below the objects directory.
    pub fn object_path(&self) -> String {
        let hex = self.to_hex();
        format!("{}/{}", &hex[..2], &hex[2..])
    }

    /// Parses an object path `XX/REST` back into a digest.
    pub fn from_object_path(dir: &str, file: &str) -> Result<Self, DigestParseError> {
        format!("{dir}{file}").parse()
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || DigestParseError { text: text.to_owned() };
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| err())?;
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Incremental fs-verity digest over a byte stream.
pub struct VerityHasher {
    inner: FsVerityHasher<Sha256HashValue>,
    len: u64,
}

impl Default for VerityHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl VerityHasher {
    pub fn new() -> Self {
        Self {
            inner: FsVerityHasher::new(),
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.inner.write_all(data).expect("hashing into memory cannot fail");
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(mut self) -> Digest {
        let value = self.inner.digest();
        let mut out = [0u8; 32];
        hex::decode_to_slice(value.to_hex(), &mut out).expect("a SHA-256 value is 32 bytes");
        Digest(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from `fsverity digest` (fsverity-utils) on files with this content.
    #[test]
    fn known_verity_digests() {
        assert_eq!(
            Digest::of(b"").to_hex(),
            "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
        );
        assert_eq!(
            Digest::of(b"hello world").to_hex(),
            "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut hasher = VerityHasher::new();
        for chunk in data.chunks(777) {
            hasher.update(chunk);
        }
        assert_eq!(hasher.finish(), Digest::of(&data));
    }

    #[test]
    fn parse_round_trip_and_rejects() {
        let d = Digest::of(b"x");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        let path = d.object_path();
        let (dir, file) = path.split_once('/').unwrap();
        assert_eq!(Digest::from_object_path(dir, file).unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
        assert!(d.to_hex().to_uppercase().parse::<Digest>().is_err());
        assert!("../etc/passwd".parse::<Digest>().is_err());
    }
}
