//! What an xattr from a layer must be to reach an EROFS image the kernel
//! reads back as written, and that copy-up can set again. (A NUL in a name
//! is refused earlier, with the PAX record that carries it, as Go's tar does.)

/// The kernel's XATTR_NAME_MAX and XATTR_SIZE_MAX.
const NAME_MAX: usize = 255;
const VALUE_MAX: usize = 65536;

/// `security.capability` holds a `vfs_cap_data`: a little-endian
/// `magic_etc` whose top byte is the revision, then the sets. setxattr
/// (containerd's applier, overlayfs copy-up) takes revision 2 (20 bytes)
/// and 3 (24 bytes, with a root id) only; revision 1 is read but never set.
fn check_capability(value: &[u8]) -> Result<(), String> {
    let revision = value.get(3).copied();
    match (revision, value.len()) {
        (Some(2), 20) | (Some(3), 24) => Ok(()),
        (Some(1), 12) => Err("security.capability is a revision 1 vfs_cap_data, which setxattr refuses".into()),
        _ => Err(format!(
            "security.capability of {} bytes is not a revision 2 (20 bytes) or 3 (24 bytes) vfs_cap_data",
            value.len()
        )),
    }
}

pub(super) fn check(name: &[u8], value: &[u8]) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() {
        return Err("xattr with an empty name".into());
    }
    if name.contains(&0) {
        return Err(format!("xattr name {:?} contains a NUL byte", shown()));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "xattr name of {} bytes is over the limit of {NAME_MAX}",
            name.len()
        ));
    }
    if value.len() > VALUE_MAX {
        return Err(format!(
            "xattr {:?} of {} bytes is over the limit of {VALUE_MAX}",
            shown(),
            value.len()
        ));
    }
    if name == b"security.capability" {
        check_capability(value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_table() {
        let v2 = [&[0, 0, 0, 2][..], &[0; 16]].concat();
        let v3 = [&[1, 0, 0, 3][..], &[0; 20]].concat();
        let v1 = [&[0, 0, 0, 1][..], &[0; 8]].concat();
        assert!(check(b"security.capability", &v2).is_ok());
        assert!(check(b"security.capability", &v3).is_ok());
        assert!(check(b"security.capability", &v1).unwrap_err().contains("revision 1"));
        assert!(check(b"security.capability", &v2[..19]).is_err());
        assert!(check(b"security.capability", &[&v2[..], &[0]].concat()).is_err());
        assert!(check(b"security.capability", b"\x01\x02").is_err());
        assert!(check(
            b"security.capability",
            &[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        )
        .is_err());
        assert!(check(b"user.a\0b", b"").unwrap_err().contains("NUL"));
        assert!(check(b"", b"").is_err());
        assert!(check(&[b'u'; 256], b"").is_err());
        assert!(check(b"user.big", &vec![0; VALUE_MAX + 1]).is_err());
        assert!(check(b"user.big", &vec![0; VALUE_MAX]).is_ok());
    }
}
