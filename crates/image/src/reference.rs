//! Image references: `oci:DIR[:TAG]` for a layout directory, or
//! `HOST[:PORT]/NAME[:TAG|@DIGEST]` for a registry.

use std::path::PathBuf;

use crate::ImportError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Layout { dir: PathBuf, tag: Option<String> },
    Registry(RegistryRef),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RegistryRef {
    /// Plain http only for loopback; https everywhere else.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
            ImageRef::Registry(r) => {
                write!(f, "{}/{}", r.registry, r.repository)?;
                if let Some(tag) = &r.tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = &r.digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
        }
    }
}

fn bad(reference: &str, reason: &str) -> ImportError {
    ImportError::BadReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    }
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-'])
}

fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
                && part != "."
                && part != ".."
        })
}

pub(crate) fn check_digest(digest: &str) -> Result<&str, ImportError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    hex.ok_or_else(|| ImportError::BadDigest {
        digest: digest.to_owned(),
    })
}

/// Docker Hub's names; the first is the one references are written with.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The name an image is recorded and looked up under: a registry reference
/// in its full form (`library/` for Docker Hub, `:latest` when neither tag
/// nor digest is given); anything else (a layout reference, a `--name`) as
/// it is. `pull`, `rmi` and `mount` all go through this.
pub fn normalize_name(name: &str) -> String {
    match name.parse::<ImageRef>() {
        Ok(r @ ImageRef::Registry(_)) => r.to_string(),
        _ => name.to_owned(),
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = text.strip_prefix("oci:") {
            // The tag follows the last ':' unless that ':' is part of the path.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => (dir, Some(tag)),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad(text, "no layout directory after 'oci:'"));
            }
            if let Some(tag) = tag {
                if tag.is_empty() || tag.contains('\0') {
                    return Err(bad(text, "empty tag"));
                }
            }
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                tag: tag.map(str::to_owned),
            });
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest)?;
                (name, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        let (registry, path) = name
            .split_once('/')
            .ok_or_else(|| bad(text, "expected HOST[:PORT]/NAME[:TAG] or oci:DIR[:TAG]"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                text,
                "the first part must be a registry host (e.g. 127.0.0.1:5000)",
            ));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) => {
                if !valid_tag(tag) {
                    return Err(bad(text, "invalid tag"));
                }
                (repo, Some(tag.to_owned()))
            }
            None => (path, None),
        };
        if !valid_repository(repository) {
            return Err(bad(text, "invalid repository name"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        // Docker Hub: one host name, and official images live under `library/`.
        let (registry, repository) = if DOCKER_HUB.contains(&registry) {
            let repository = if repository.contains('/') {
                repository.to_owned()
            } else {
                format!("library/{repository}")
            };
            (DOCKER_HUB[0].to_owned(), repository)
        } else {
            (registry.to_owned(), repository.to_owned())
        };
        Ok(ImageRef::Registry(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let r: ImageRef = "127.0.0.1:5000/strata/minbase:latest".parse().unwrap();
        let ImageRef::Registry(r) = r else { panic!() };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "strata/minbase")
        );
        assert!(r.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let r: ImageRef = format!("registry.example.com/x@{d}").parse().unwrap();
        let ImageRef::Registry(r) = r else { panic!() };
        assert!(!r.is_loopback());
        assert_eq!((r.tag, r.digest), (None, Some(d)));
        assert_eq!(
            "oci:/tmp/lay:minbase".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "/tmp/lay".into(),
                tag: Some("minbase".into())
            }
        );
        assert_eq!(
            "oci:./lay".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "./lay".into(),
                tag: None
            }
        );
    }

    #[test]
    fn normalizes_docker_hub_and_latest() {
        assert_eq!(normalize_name("docker.io/debian:12"), "docker.io/library/debian:12");
        assert_eq!(
            normalize_name("index.docker.io/debian"),
            "docker.io/library/debian:latest"
        );
        assert_eq!(normalize_name("docker.io/me/app"), "docker.io/me/app:latest");
        assert_eq!(
            normalize_name("127.0.0.1:5000/strata/minbase"),
            "127.0.0.1:5000/strata/minbase:latest"
        );
        assert_eq!(
            normalize_name("127.0.0.1:5000/strata/minbase:latest"),
            "127.0.0.1:5000/strata/minbase:latest"
        );
        assert_eq!(normalize_name("oci:/l:minbase"), "oci:/l:minbase");
        assert_eq!(normalize_name("my-name"), "my-name");
        let ImageRef::Registry(r) = "docker.io/debian:12".parse().unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/debian")
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "noslash",
            "nohost/x",
            "h.io/../x",
            "h.io/X",
            "h.io/x:bad tag",
            "h.io/x@sha256:zz",
            "h.io/x@md5:abc",
            "oci:",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }
}
