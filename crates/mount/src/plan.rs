//! What to mount, as data: no system calls here.

use std::path::PathBuf;

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

    /// The `fsconfig` calls with further data-only lowers after the object
    /// store, looked in in order: a lazily pulled image's ALIASES and LAZY
    /// (`META::OBJECTS::ALIASES::LAZY`, docs/lazy-pulls.md).
    pub fn fs_options_with_data(&self, mode: LowerMode, more_data: &[PathBuf]) -> Vec<FsOption> {
        let s = |k: &str, v: &std::path::Path| FsOption::String(k.to_owned(), v.display().to_string());
        let mut out = match mode {
            LowerMode::Append => {
                let mut out = vec![s("lowerdir+", &self.meta), s("datadir+", &self.data)];
                out.extend(more_data.iter().map(|d| s("datadir+", d)));
                out
            }
            LowerMode::DoubleColon => {
                let mut lowers = format!("{}::{}", self.meta.display(), self.data.display());
                for dir in more_data {
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
    fn a_lazy_image_gets_four_lowers_in_both_modes() {
        let plan = OverlayPlan {
            meta: "/s/mnt/abc".into(),
            data: "/s/objects".into(),
            upper: None,
        };
        let more = ["/s/sha256".into(), "/s/lazy".into()];
        let colons = plan.fs_options_with_data(LowerMode::DoubleColon, &more);
        assert_eq!(
            colons[0],
            FsOption::String("lowerdir".into(), "/s/mnt/abc::/s/objects::/s/sha256::/s/lazy".into())
        );
        let append = plan.fs_options_with_data(LowerMode::Append, &more);
        let s = |k: &str, v: &str| FsOption::String(k.into(), v.into());
        assert_eq!(
            append[..4],
            [
                s("lowerdir+", "/s/mnt/abc"),
                s("datadir+", "/s/objects"),
                s("datadir+", "/s/sha256"),
                s("datadir+", "/s/lazy")
            ]
        );
        assert_eq!(
            plan.fs_options_with_data(LowerMode::Append, &[]),
            plan.fs_options(LowerMode::Append)
        );
    }
}
