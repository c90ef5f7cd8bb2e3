//! The names of what a process keeps in the store's `tmp/`: each says
//! what it is and which process owns it (`KIND-PID-REST`), so start-up
//! recovery can remove what a dead process left and gc can leave a live
//! process's work alone. Every such name is made and read here.

/// What a `tmp/` entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TmpKind {
    /// Objects being staged, or a short-lived probe file.
    Stage,
    /// An EROFS image before its rename into `images/`.
    Image,
    /// A directory being deleted.
    Trash,
}

impl TmpKind {
    const ALL: [TmpKind; 3] = [TmpKind::Stage, TmpKind::Image, TmpKind::Trash];

    fn prefix(self) -> &'static str {
        match self {
            TmpKind::Stage => "stage",
            TmpKind::Image => "image",
            TmpKind::Trash => "trash",
        }
    }
}

/// The name of a `tmp/` entry of this process.
pub(crate) fn tmp_name(kind: TmpKind, rest: impl std::fmt::Display) -> String {
    format!("{}-{}-{rest}", kind.prefix(), std::process::id())
}

/// The kind and owner of a `tmp/` entry, if strata made it.
pub(crate) fn parse_tmp_name(name: &str) -> Option<(TmpKind, i32)> {
    TmpKind::ALL.into_iter().find_map(|kind| {
        let rest = name.strip_prefix(kind.prefix())?.strip_prefix('-')?;
        let pid = rest.split('-').next()?.parse().ok()?;
        Some((kind, pid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_not_ours() {
        for kind in TmpKind::ALL {
            let name = tmp_name(kind, "x-1");
            let pid = i32::try_from(std::process::id()).unwrap();
            assert_eq!(parse_tmp_name(&name), Some((kind, pid)), "{name}");
        }
        assert_eq!(parse_tmp_name("stage-123-4"), Some((TmpKind::Stage, 123)));
        assert_eq!(parse_tmp_name("image-77-abcdef"), Some((TmpKind::Image, 77)));
        assert_eq!(parse_tmp_name("trash-9-1"), Some((TmpKind::Trash, 9)));
        for stranger in ["stagex-1-2", "stage-", "stage-abc-1", "lost+found", "trash"] {
            assert_eq!(parse_tmp_name(stranger), None, "{stranger}");
        }
    }
}
