//! Reading `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

/// Mount points listed in mountinfo text, unescaped.
fn mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape(escaped)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mount_points(&t))
        .unwrap_or_default()
}

/// True when `path` is itself a mount point. One `statx` where the kernel
/// reports mount roots (5.8+); mountinfo, which grows with every container
/// on the node, only on older kernels.
pub fn is_mountpoint(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Ok(_) | Err(rustix::io::Errno::NOSYS) => read().iter().any(|m| m == path),
        Err(_) => false,
    }
}

/// Mount points at or below `dir`, deepest first (the order to unmount in).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = read().into_iter().filter(|m| m.starts_with(dir)).collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statx_agrees_with_mountinfo() {
        for path in ["/", "/proc", "/dev"] {
            let listed = read().iter().any(|m| m == Path::new(path));
            assert_eq!(is_mountpoint(Path::new(path)), listed, "{path}");
        }
        assert!(!is_mountpoint(Path::new("/proc/self")));
        assert!(!is_mountpoint(Path::new("/no/such/path")));
    }

    #[test]
    fn parses_and_unescapes() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /var/lib/strata/mnt/x ro - erofs none ro\n";
        assert_eq!(
            mount_points(text),
            vec![PathBuf::from("/mnt/a b"), PathBuf::from("/var/lib/strata/mnt/x")]
        );
    }
}
