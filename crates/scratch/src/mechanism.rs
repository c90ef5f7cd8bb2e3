//! Which mechanism gives a sized scratch its limit, decided from facts
//! about the filesystem it would live on (pure: facts in, a plan out).
//!
//! A size limit the store's own filesystem enforces keeps the upper and
//! work dirs on that filesystem, so overlayfs copies up by reflink where
//! the filesystem has one, and needs no loop device:
//!
//! - btrfs with quotas enabled: a subvolume per scratch with a qgroup limit
//!   on the bytes it references;
//! - ext4 or XFS mounted with `prjquota`: a directory with its own project
//!   id (inherited below it) and a project quota.
//!
//! Everything else gets an image file on a loop device, formatted from a
//! template. Enabling quotas is the operator's decision; the plan says
//! what is missing when it falls back.

/// How a sized scratch gets its size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// An image file cloned from a template, on a loop device.
    Loop,
    /// A btrfs subvolume with a qgroup limit.
    BtrfsQgroup,
    /// An ext4 or XFS directory with a project quota.
    ProjectQuota,
}

impl Mechanism {
    /// A short name, for logs, metric labels and `strata version`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Loop => "loop",
            Mechanism::BtrfsQgroup => "btrfs-qgroup",
            Mechanism::ProjectQuota => "project-quota",
        }
    }

    /// Whether `df` inside the container shows the scratch's size.
    pub fn statfs_shows_size(self) -> bool {
        match self {
            // Loop: it is a filesystem of that size. Project quotas: statfs
            // of a directory with PROJINHERIT reports the project's limit.
            Mechanism::Loop | Mechanism::ProjectQuota => true,
            // qgroups do not enter statfs: df shows the whole filesystem.
            Mechanism::BtrfsQgroup => false,
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the filesystem under a scratch place can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsFacts {
    Btrfs {
        quotas: bool,
    },
    Ext4 {
        prjquota: bool,
    },
    Xfs {
        prjquota: bool,
    },
    /// Any other filesystem, by its statfs magic.
    Other {
        magic: u64,
    },
}

pub const BTRFS_MAGIC: u64 = 0x9123_683e;
pub const EXT4_MAGIC: u64 = 0xef53;
pub const XFS_MAGIC: u64 = 0x5846_5342;

/// The mechanism for a place, and why when it is the loop fallback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub mechanism: Mechanism,
    /// Why not a filesystem quota; `None` when one is used.
    pub fallback: Option<&'static str>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fallback {
            Some(why) => write!(f, "{} ({why})", self.mechanism),
            None => write!(f, "{}", self.mechanism),
        }
    }
}

pub fn plan(facts: &FsFacts) -> Plan {
    let quota = |mechanism| Plan {
        mechanism,
        fallback: None,
    };
    let fallback = |why| Plan {
        mechanism: Mechanism::Loop,
        fallback: Some(why),
    };
    match facts {
        FsFacts::Btrfs { quotas: true } => quota(Mechanism::BtrfsQgroup),
        FsFacts::Btrfs { quotas: false } => fallback(
            "btrfs without quotas; `btrfs quota enable` on the store's filesystem gives subvolumes with qgroup limits",
        ),
        FsFacts::Ext4 { prjquota: true } | FsFacts::Xfs { prjquota: true } => quota(Mechanism::ProjectQuota),
        FsFacts::Ext4 { prjquota: false } => {
            fallback("ext4 not mounted with prjquota (needs mkfs -O project,quota and a kernel with CONFIG_QFMT_V2)")
        }
        FsFacts::Xfs { prjquota: false } => {
            fallback("xfs not mounted with prjquota (needs a kernel with CONFIG_XFS_QUOTA)")
        }
        FsFacts::Other { .. } => fallback("the filesystem has no quota strata can set"),
    }
}

/// The superblock options (mountinfo's last field) of the mount whose
/// device is `major:minor`, from `/proc/self/mountinfo` text. Every mount
/// of one device shares them.
pub fn super_options(mountinfo: &str, major: u32, minor: u32) -> Option<Vec<&str>> {
    let dev = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != dev {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        // fstype, source, super options
        Some(after.split(' ').nth(2)?.split(',').collect())
    })
}

/// Whether superblock options turn project quota enforcement on (ext4
/// and XFS both list `prjquota`; XFS's accounting-only mode is `pqnoenforce`).
pub fn prjquota_enforced(options: &[&str]) -> bool {
    options.iter().any(|o| matches!(*o, "prjquota" | "pquota"))
}

/// Project ids strata gives out: a range clear of the small ids people
/// assign by hand and of the ids `/etc/projid` tools start at.
pub const FIRST_PROJECT: u32 = 0x5354_0000;
pub const PROJECTS: u32 = 0x0100_0000;

/// Project ids to try, in order, for scratch `fs` of the store whose tag
/// hashes to `seed`: spread so two stores on one filesystem rarely try the
/// same ids, and only a few, since each is checked with the kernel.
pub fn project_candidates(seed: u32, fs: u64) -> impl Iterator<Item = u32> {
    let fs_low = u32::try_from(fs % u64::from(PROJECTS)).expect("below PROJECTS");
    let start = seed.wrapping_mul(0x9e37_79b9).wrapping_add(fs_low) % PROJECTS;
    (0..64u32).map(move |i| FIRST_PROJECT + (start.wrapping_add(i) % PROJECTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let cases = [
            (FsFacts::Btrfs { quotas: true }, Mechanism::BtrfsQgroup, false),
            (FsFacts::Btrfs { quotas: false }, Mechanism::Loop, true),
            (FsFacts::Ext4 { prjquota: true }, Mechanism::ProjectQuota, false),
            (FsFacts::Ext4 { prjquota: false }, Mechanism::Loop, true),
            (FsFacts::Xfs { prjquota: true }, Mechanism::ProjectQuota, false),
            (FsFacts::Xfs { prjquota: false }, Mechanism::Loop, true),
            (FsFacts::Other { magic: 0x0102_1994 }, Mechanism::Loop, true),
        ];
        for (facts, mechanism, falls_back) in cases {
            let p = plan(&facts);
            assert_eq!(p.mechanism, mechanism, "{facts:?}");
            assert_eq!(p.fallback.is_some(), falls_back, "{facts:?}: {p}");
        }
        assert!(plan(&FsFacts::Btrfs { quotas: false })
            .to_string()
            .starts_with("loop (btrfs without quotas"));
        assert!(!Mechanism::BtrfsQgroup.statfs_shows_size());
        assert!(Mechanism::ProjectQuota.statfs_shows_size());
    }

    #[test]
    fn super_options_by_device() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n\
                    40 22 7:1 / /var/lib/strata rw,relatime shared:9 - ext4 /dev/loop1 rw,prjquota\n\
                    41 22 7:2 / /srv/x rw - xfs /dev/loop2 rw,attr2,inode64,logbufs=8,pqnoenforce\n\
                    42 22 7:3 / /srv/y rw - xfs /dev/loop3 rw,attr2,inode64,prjquota\n\
                    43 22 7:1 /sub /srv/bind rw,relatime - ext4 /dev/loop1 rw,prjquota\n";
        let enforced = |major, minor| super_options(text, major, minor).map(|o| prjquota_enforced(&o));
        assert_eq!(enforced(254, 0), Some(false));
        assert_eq!(enforced(7, 1), Some(true));
        assert_eq!(enforced(7, 2), Some(false), "accounting only");
        assert_eq!(enforced(7, 3), Some(true));
        assert_eq!(enforced(7, 9), None);
        assert_eq!(enforced(25, 40), None, "254:0 is not 25:40 nor 2:54");
    }

    #[test]
    fn project_candidates_stay_in_range_and_differ_per_store() {
        for (seed, fs) in [(0, 0), (u32::MAX, u64::MAX), (7, 1 << 40), (12345, 99)] {
            let ids: Vec<u32> = project_candidates(seed, fs).collect();
            assert_eq!(ids.len(), 64);
            assert!(ids
                .iter()
                .all(|id| (FIRST_PROJECT..FIRST_PROJECT + PROJECTS).contains(id)));
            let unique: std::collections::BTreeSet<_> = ids.iter().collect();
            assert_eq!(unique.len(), 64, "no id tried twice");
        }
        let a: Vec<u32> = project_candidates(1, 5).take(1).collect();
        let b: Vec<u32> = project_candidates(2, 5).take(1).collect();
        assert_ne!(a, b, "two stores start at different ids");
        let next: Vec<u32> = project_candidates(1, 6).take(1).collect();
        assert_ne!(a, next, "two scratches of a store start at different ids");
    }
}
