//! What to mount, as data: no system calls here.

use std::path::{Path, PathBuf};

use strata_sys::FsOption;

/// How the data-only lower layer is passed to overlayfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerMode {
    /// `lowerdir+=META`, `datadir+=OBJECTS` (Linux 6.8+; no length limit, no escaping).
    Append,
    /// `lowerdir=META::OBJECTS` (Linux 6.5+; one option string).
    DoubleColon,
}

/// One overlay: metadata lower, data-only lower, optional upper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayPlan {
    /// Where the image's EROFS is mounted.
    pub meta: PathBuf,
    /// The object store directory.
    pub data: PathBuf,
    /// Upper and work dir, for a writable overlay.
    pub upper: Option<(PathBuf, PathBuf)>,
}

impl OverlayPlan {
    /// The `fsconfig` calls for this overlay.
    pub fn fs_options(&self, mode: LowerMode) -> Vec<FsOption> {
        self.fs_options_with_data(mode, &[])
    }

    /// The `fsconfig` calls with a lazily pulled image's further
    /// data-only lowers, ALIASES and LAZY (`more_data`, in that order), in
    /// the order [`data_lowers`](Self::data_lowers) gives.
    pub fn fs_options_with_data(&self, mode: LowerMode, more_data: &[PathBuf]) -> Vec<FsOption> {
        let s = |k: &str, v: &Path| FsOption::String(k.to_owned(), v.display().to_string());
        let data = self.data_lowers(more_data);
        let mut out = match mode {
            LowerMode::Append => {
                let mut out = vec![s("lowerdir+", &self.meta)];
                out.extend(data.iter().map(|d| s("datadir+", d)));
                out
            }
            LowerMode::DoubleColon => {
                let mut lowers = self.meta.display().to_string();
                for dir in data {
                    lowers.push_str("::");
                    lowers.push_str(&dir.display().to_string());
                }
                vec![FsOption::String("lowerdir".into(), lowers)]
            }
        };
        if let Some((upper, work)) = &self.upper {
            out.push(s("upperdir", upper));
            out.push(s("workdir", work));
        }
        out.push(FsOption::String("metacopy".into(), "on".into()));
        out.push(FsOption::String("redirect_dir".into(), "on".into()));
        out
    }

    /// The data-only lowers in the order overlayfs looks in them:
    /// `META::ALIASES::OBJECTS::LAZY` for a lazily pulled image. Its lazy
    /// layers' files are named by SHA-256, which no fs-verity name in
    /// OBJECTS is, so ALIASES comes first: with OBJECTS first every such
    /// open began with a failed lookup, a directory block read once the
    /// cache is cold (reading the image whole ran at 0.90-0.92x of a
    /// fully pulled one). Files of whole-pulled layers, named by fs-verity
    /// digest, pay that miss in ALIASES instead. LAZY, which fetches, is
    /// last.
    fn data_lowers<'a>(&'a self, more_data: &'a [PathBuf]) -> Vec<&'a Path> {
        match more_data.split_first() {
            Some((aliases, rest)) => std::iter::once(aliases.as_path())
                .chain(std::iter::once(self.data.as_path()))
                .chain(rest.iter().map(PathBuf::as_path))
                .collect(),
            None => vec![self.data.as_path()],
        }
    }

    /// The option strings of a mount(2)-style spec (for containerd).
    pub fn mount_options(&self, mode: LowerMode) -> Vec<String> {
        self.mount_options_with_data(mode, &[])
    }

    /// [`mount_options`](Self::mount_options) with further data-only
    /// lowers, as [`fs_options_with_data`](Self::fs_options_with_data).
    pub fn mount_options_with_data(&self, mode: LowerMode, more_data: &[PathBuf]) -> Vec<String> {
        self.fs_options_with_data(mode, more_data)
            .into_iter()
            .map(|o| match o {
                FsOption::Flag(k) => k,
                FsOption::String(k, v) => format!("{k}={v}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_per_mode() {
        let plan = OverlayPlan {
            meta: "/s/mnt/abc".into(),
            data: "/s/objects".into(),
            upper: Some(("/u".into(), "/w".into())),
        };
        assert_eq!(
            plan.mount_options(LowerMode::DoubleColon),
            vec![
                "lowerdir=/s/mnt/abc::/s/objects",
                "upperdir=/u",
                "workdir=/w",
                "metacopy=on",
                "redirect_dir=on"
            ]
        );
        let append = plan.fs_options(LowerMode::Append);
        assert_eq!(append[0], FsOption::String("lowerdir+".into(), "/s/mnt/abc".into()));
        assert_eq!(append[1], FsOption::String("datadir+".into(), "/s/objects".into()));
    }

    #[test]
    fn a_lazy_image_gets_four_lowers_aliases_first_in_both_modes() {
        let plan = OverlayPlan {
            meta: "/s/mnt/abc".into(),
            data: "/s/objects".into(),
            upper: None,
        };
        let more = ["/s/sha256".into(), "/s/lazy".into()];
        let colons = plan.fs_options_with_data(LowerMode::DoubleColon, &more);
        assert_eq!(
            colons[0],
            FsOption::String("lowerdir".into(), "/s/mnt/abc::/s/sha256::/s/objects::/s/lazy".into())
        );
        let append = plan.fs_options_with_data(LowerMode::Append, &more);
        let s = |k: &str, v: &str| FsOption::String(k.into(), v.into());
        assert_eq!(
            append[..4],
            [
                s("lowerdir+", "/s/mnt/abc"),
                s("datadir+", "/s/sha256"),
                s("datadir+", "/s/objects"),
                s("datadir+", "/s/lazy")
            ]
        );
        assert_eq!(
            plan.fs_options_with_data(LowerMode::Append, &[]),
            plan.fs_options(LowerMode::Append)
        );
    }
}
