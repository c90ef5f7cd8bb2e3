//! What a snapshot's DB row says of its scratch, and the JSON it is kept
//! as. Rows written before scratches had a mechanism (`{fs, file,
//! template, xfs}`) read as loop scratches; a new loop row is the old
//! shape plus `"mechanism": "loop"`, so an older strata still reads it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_scratch::{FsKind, Mechanism};

/// The scratch a snapshot uses, as recorded in its DB row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Stored", into = "Stored")]
pub(crate) struct ScratchUse {
    /// Id of the snapshot that created the scratch; names its entry in
    /// `ROOT/scratch/mnt/`.
    pub fs: u64,
    pub backing: Backing,
}

/// What gives a scratch its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Backing {
    /// An image file cloned from `template`, loop-mounted at the entry.
    Loop {
        file: PathBuf,
        template: PathBuf,
        kind: FsKind,
    },
    /// The btrfs subvolume `dir`, limited by its qgroup (`0/qgroup`).
    Subvolume { dir: PathBuf, qgroup: u64 },
    /// The directory `dir`, whose project `id` has a quota.
    Project { dir: PathBuf, id: u32 },
}

impl ScratchUse {
    pub fn mechanism(&self) -> Mechanism {
        match self.backing {
            Backing::Loop { .. } => Mechanism::Loop,
            Backing::Subvolume { .. } => Mechanism::BtrfsQgroup,
            Backing::Project { .. } => Mechanism::ProjectQuota,
        }
    }

    /// The image file of a loop scratch.
    pub fn file(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Loop { file, .. } => Some(file),
            _ => None,
        }
    }

    pub fn template(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Loop { template, .. } => Some(template),
            _ => None,
        }
    }

    /// The quota-limited directory of a btrfs or project scratch.
    pub fn limited_dir(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Loop { .. } => None,
            Backing::Subvolume { dir, .. } | Backing::Project { dir, .. } => Some(dir),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StoredMechanism {
    #[default]
    Loop,
    BtrfsQgroup,
    ProjectQuota,
}

/// The row's JSON: flat, every field but `fs` optional.
#[derive(Serialize, Deserialize)]
struct Stored {
    fs: u64,
    #[serde(default)]
    mechanism: StoredMechanism,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    template: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    xfs: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qgroup: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    project: Option<u32>,
}

impl TryFrom<Stored> for ScratchUse {
    type Error = String;

    fn try_from(s: Stored) -> Result<Self, String> {
        let missing = |field: &str| format!("a {:?} scratch without {field}", s.mechanism);
        let backing = match s.mechanism {
            StoredMechanism::Loop => Backing::Loop {
                file: s.file.clone().ok_or_else(|| missing("file"))?,
                template: s.template.clone().ok_or_else(|| missing("template"))?,
                kind: if s.xfs { FsKind::Xfs } else { FsKind::Ext4 },
            },
            StoredMechanism::BtrfsQgroup => Backing::Subvolume {
                dir: s.dir.clone().ok_or_else(|| missing("dir"))?,
                qgroup: s.qgroup.ok_or_else(|| missing("qgroup"))?,
            },
            StoredMechanism::ProjectQuota => Backing::Project {
                dir: s.dir.clone().ok_or_else(|| missing("dir"))?,
                id: s.project.ok_or_else(|| missing("project"))?,
            },
        };
        Ok(ScratchUse { fs: s.fs, backing })
    }
}

impl From<ScratchUse> for Stored {
    fn from(u: ScratchUse) -> Stored {
        let mut s = Stored {
            fs: u.fs,
            mechanism: StoredMechanism::Loop,
            file: None,
            template: None,
            xfs: false,
            dir: None,
            qgroup: None,
            project: None,
        };
        match u.backing {
            Backing::Loop { file, template, kind } => {
                s.file = Some(file);
                s.template = Some(template);
                s.xfs = kind == FsKind::Xfs;
            }
            Backing::Subvolume { dir, qgroup } => {
                s.mechanism = StoredMechanism::BtrfsQgroup;
                s.dir = Some(dir);
                s.qgroup = Some(qgroup);
            }
            Backing::Project { dir, id } => {
                s.mechanism = StoredMechanism::ProjectQuota;
                s.dir = Some(dir);
                s.project = Some(id);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_before_mechanisms_read_as_loop() {
        let old = r#"{"fs":4,"file":"/r/scratch/files/4.img","template":"/r/scratch/templates/t.img","xfs":true}"#;
        let u: ScratchUse = serde_json::from_str(old).unwrap();
        assert_eq!(
            u,
            ScratchUse {
                fs: 4,
                backing: Backing::Loop {
                    file: "/r/scratch/files/4.img".into(),
                    template: "/r/scratch/templates/t.img".into(),
                    kind: FsKind::Xfs,
                }
            }
        );
        assert_eq!(u.mechanism(), Mechanism::Loop);
        // An older strata reads a new loop row: same fields, one more.
        let json = serde_json::to_value(&u).unwrap();
        assert_eq!(json["file"], "/r/scratch/files/4.img");
        assert_eq!(json["mechanism"], "loop");
    }

    #[test]
    fn every_backing_round_trips() {
        let uses = [
            Backing::Loop {
                file: "/f".into(),
                template: "/t".into(),
                kind: FsKind::Ext4,
            },
            Backing::Subvolume {
                dir: "/r/scratch/dirs/9".into(),
                qgroup: 263,
            },
            Backing::Project {
                dir: "/loc/strata-x/dirs/9".into(),
                id: 0x5354_0001,
            },
        ];
        for backing in uses {
            let u = ScratchUse { fs: 9, backing };
            let text = serde_json::to_string(&u).unwrap();
            assert_eq!(serde_json::from_str::<ScratchUse>(&text).unwrap(), u, "{text}");
        }
        let broken = r#"{"fs":1,"mechanism":"btrfs-qgroup","dir":"/d"}"#;
        let err = serde_json::from_str::<ScratchUse>(broken).unwrap_err();
        assert!(err.to_string().contains("without qgroup"), "{err}");
    }
}
