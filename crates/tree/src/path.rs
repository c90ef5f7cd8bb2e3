//! Validation of paths that come from untrusted input (tar headers, diffs).
//!
//! A path is accepted only as a list of plain names: no `..`, no absolute
//! form, no empty or over-long name, no NUL. Nothing is ever resolved on disk.

pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {path:?} is absolute")]
    Absolute { path: String },
    #[error("path {path:?} climbs out of the root with '..'")]
    DotDot { path: String },
    #[error("path {path:?} has a name longer than {MAX_NAME_LEN} bytes")]
    NameTooLong { path: String },
    #[error("path {path:?} has a NUL byte")]
    Nul { path: String },
    #[error("path {path:?} is deeper than the limit of {limit} components")]
    TooDeep { path: String, limit: usize },
}

/// Splits a relative path into its names, dropping `.` and empty components.
/// `./a//b/` becomes `["a", "b"]`; the root itself becomes `[]`.
pub fn split_path(raw: &[u8], max_depth: usize) -> Result<Vec<Vec<u8>>, PathError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.first() == Some(&b'/') {
        return Err(PathError::Absolute { path: shown() });
    }
    if raw.contains(&0) {
        return Err(PathError::Nul { path: shown() });
    }
    let mut names = Vec::new();
    for name in raw.split(|&b| b == b'/') {
        match name {
            b"" | b"." => continue,
            b".." => return Err(PathError::DotDot { path: shown() }),
            _ if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong { path: shown() }),
            _ => names.push(name.to_vec()),
        }
    }
    if names.len() > max_depth {
        return Err(PathError::TooDeep {
            path: shown(),
            limit: max_depth,
        });
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok: &[(&[u8], &[&str])] = &[
            (b"a/b", &["a", "b"]),
            (b"./a//b/", &["a", "b"]),
            (b".", &[]),
            (b"./", &[]),
            (b"a/./b", &["a", "b"]),
        ];
        for (raw, want) in ok {
            let got = split_path(raw, 100).unwrap();
            let want: Vec<Vec<u8>> = want.iter().map(|s| s.as_bytes().to_vec()).collect();
            assert_eq!(got, want, "{raw:?}");
        }
        let long = vec![b'x'; 256];
        let bad: &[(&[u8], &str)] = &[
            (b"/etc/passwd", "absolute"),
            (b"../x", "'..'"),
            (b"a/../../x", "'..'"),
            (b"a/..", "'..'"),
            (&long, "longer"),
            (b"a\0b", "NUL"),
            (b"a/b/c", "deeper"),
        ];
        for (raw, want) in bad {
            let err = split_path(raw, 2).unwrap_err().to_string();
            assert!(err.contains(want), "{raw:?}: {err}");
        }
    }
}
