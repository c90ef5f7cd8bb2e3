//! The kernel ladder: which way each kernel feature strata needs is used,
//! chosen from what the kernel offers ([`Offered`], found by
//! [`probe`](crate::probe)) and what the operator asks (`[kernel]` in the
//! config). Pure: no system calls here.
//!
//! | rung | best | fallback |
//! |---|---|---|
//! | EROFS image | mounted straight from its file (Linux 6.12+) | through a loop device |
//! | data-only lower | `lowerdir+`/`datadir+` (6.8+) | `lowerdir=META::DATA` (6.5+) |
//! | object integrity | fs-verity on objects, `verity=require` | user-space digests and fsck |

use std::fmt;

use crate::LowerMode;

/// How an image's EROFS file is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErofsSource {
    /// `fsconfig(source=FILE)`: no block device.
    File,
    /// Through an autoclear loop device.
    Loop,
}

/// Whether the kernel checks object contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verity {
    /// Objects are checked by digest in user space (import, commit, fsck).
    Off,
    /// The kernel would check every object read against its fs-verity digest.
    Require,
}

/// One `[kernel]` setting: `"auto"`, or a rung forced by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice<T> {
    #[default]
    Auto,
    Forced(T),
}

/// The `[kernel]` section of the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    pub erofs: Choice<ErofsSource>,
    pub lowers: Choice<LowerMode>,
    pub verity: Choice<Verity>,
}

/// What the running kernel was found to support.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    pub erofs: bool,
    pub erofs_file: bool,
    pub loop_devices: bool,
    pub lowers_append: bool,
    pub lowers_double_colon: bool,
    pub verity: bool,
}

/// The rungs in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ladder {
    pub erofs: ErofsSource,
    pub lowers: LowerMode,
    pub verity: Verity,
}

impl Default for Ladder {
    /// The top rungs, for callers that do not probe (tests).
    fn default() -> Self {
        Ladder {
            erofs: ErofsSource::File,
            lowers: LowerMode::Append,
            verity: Verity::Off,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    /// Nothing on the ladder works on this kernel.
    #[error("this kernel lacks {missing}, which strata needs ({needs})")]
    Unsupported { missing: &'static str, needs: &'static str },
    /// The config forces a rung this kernel does not have.
    #[error("[kernel] {key} = {value:?} is set, but this kernel lacks {missing}")]
    Forced {
        key: &'static str,
        value: &'static str,
        missing: &'static str,
    },
    /// A rung the kernel has but strata cannot use yet.
    #[error("{setting}: {what} is not built yet")]
    NotBuilt { setting: &'static str, what: &'static str },
    #[error("[kernel] {key} = {value:?}: expected one of {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Chooses the highest rung the kernel offers, or the forced one.
pub fn choose(config: &KernelConfig, offered: &Offered) -> Result<Ladder, LadderError> {
    if !offered.erofs {
        return Err(LadderError::Unsupported {
            missing: "the erofs filesystem",
            needs: "every image is an EROFS metadata image",
        });
    }
    let erofs = match config.erofs {
        Choice::Forced(ErofsSource::File) if !offered.erofs_file => {
            return Err(forced(
                "erofs",
                ErofsSource::File.name(),
                "EROFS mounts from a file (Linux 6.12+)",
            ))
        }
        Choice::Forced(ErofsSource::Loop) if !offered.loop_devices => {
            return Err(forced("erofs", ErofsSource::Loop.name(), "loop devices"))
        }
        Choice::Forced(source) => source,
        Choice::Auto if offered.erofs_file => ErofsSource::File,
        Choice::Auto if offered.loop_devices => ErofsSource::Loop,
        Choice::Auto => {
            return Err(LadderError::Unsupported {
                missing: "both EROFS mounts from a file (Linux 6.12+) and loop devices",
                needs: "to mount an EROFS image",
            })
        }
    };
    let lowers = match config.lowers {
        Choice::Forced(LowerMode::Append) if !offered.lowers_append => {
            return Err(forced("lowers", "append", "overlayfs lowerdir+/datadir+ (Linux 6.8+)"))
        }
        Choice::Forced(LowerMode::DoubleColon) if !offered.lowers_double_colon => {
            return Err(forced(
                "lowers",
                "double-colon",
                "overlayfs data-only lowers (Linux 6.5+)",
            ))
        }
        Choice::Forced(mode) => mode,
        Choice::Auto if offered.lowers_append => LowerMode::Append,
        Choice::Auto if offered.lowers_double_colon => LowerMode::DoubleColon,
        Choice::Auto => {
            return Err(LadderError::Unsupported {
                missing: "overlayfs data-only lower layers (Linux 6.5+)",
                needs: "the object store is mounted as one",
            })
        }
    };
    let verity = match config.verity {
        Choice::Forced(Verity::Require) if !offered.verity => {
            return Err(forced(
                "verity",
                Verity::Require.name(),
                "fs-verity on the store's filesystem",
            ))
        }
        Choice::Forced(verity) => verity,
        // Enabling fs-verity on objects is not built yet: auto stays off
        // even where the kernel has it (docs/kernel.md).
        Choice::Auto => Verity::Off,
    };
    if verity == Verity::Require {
        return Err(LadderError::NotBuilt {
            setting: "[kernel] verity = \"require\"",
            what: "enabling fs-verity on objects",
        });
    }
    Ok(Ladder { erofs, lowers, verity })
}

fn forced(key: &'static str, value: &'static str, missing: &'static str) -> LadderError {
    LadderError::Forced { key, value, missing }
}

impl ErofsSource {
    pub fn name(self) -> &'static str {
        match self {
            ErofsSource::File => "file",
            ErofsSource::Loop => "loop",
        }
    }
}

impl Verity {
    pub fn name(self) -> &'static str {
        match self {
            Verity::Off => "off",
            Verity::Require => "require",
        }
    }
}

/// The config name of a lower mode.
pub fn lowers_name(mode: LowerMode) -> &'static str {
    match mode {
        LowerMode::Append => "append",
        LowerMode::DoubleColon => "double-colon",
    }
}

fn parse_choice<T>(
    key: &'static str,
    value: &str,
    expected: &'static str,
    rungs: &[(&str, T)],
) -> Result<Choice<T>, LadderError>
where
    T: Copy,
{
    if value == "auto" {
        return Ok(Choice::Auto);
    }
    rungs
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, rung)| Choice::Forced(*rung))
        .ok_or_else(|| LadderError::BadValue {
            key,
            value: value.chars().take(64).collect(),
            expected,
        })
}

impl KernelConfig {
    /// Parses one `[kernel]` key; `Ok(false)` for a key that is not one.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, LadderError> {
        match key {
            "erofs" => {
                self.erofs = parse_choice(
                    "erofs",
                    value,
                    "\"auto\", \"file\", \"loop\"",
                    &[("file", ErofsSource::File), ("loop", ErofsSource::Loop)],
                )?
            }
            "lowers" => {
                self.lowers = parse_choice(
                    "lowers",
                    value,
                    "\"auto\", \"append\", \"double-colon\"",
                    &[("append", LowerMode::Append), ("double-colon", LowerMode::DoubleColon)],
                )?
            }
            "verity" => {
                self.verity = parse_choice(
                    "verity",
                    value,
                    "\"auto\", \"off\", \"require\"",
                    &[("off", Verity::Off), ("require", Verity::Require)],
                )?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl fmt::Display for Ladder {
    /// `erofs=file lowers=append verity=off`, as `strata version` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "erofs={} lowers={} verity={}",
            self.erofs.name(),
            lowers_name(self.lowers),
            self.verity.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Offered = Offered {
        erofs: true,
        erofs_file: true,
        loop_devices: true,
        lowers_append: true,
        lowers_double_colon: true,
        verity: false,
    };

    fn config(erofs: &str, lowers: &str, verity: &str) -> KernelConfig {
        let mut c = KernelConfig::default();
        assert!(c.set("erofs", erofs).unwrap());
        assert!(c.set("lowers", lowers).unwrap());
        assert!(c.set("verity", verity).unwrap());
        c
    }

    #[test]
    fn auto_takes_the_highest_rung_offered() {
        let auto = KernelConfig::default();
        assert_eq!(
            choose(&auto, &ALL).unwrap().to_string(),
            "erofs=file lowers=append verity=off"
        );
        // Linux 6.6: data-only lowers through `::`, EROFS through a loop.
        let linux_6_6 = Offered {
            erofs_file: false,
            lowers_append: false,
            ..ALL
        };
        assert_eq!(
            choose(&auto, &linux_6_6).unwrap().to_string(),
            "erofs=loop lowers=double-colon verity=off"
        );
    }

    #[test]
    fn forced_rungs_are_used_or_refused_by_name() {
        assert_eq!(
            choose(&config("loop", "double-colon", "off"), &ALL)
                .unwrap()
                .to_string(),
            "erofs=loop lowers=double-colon verity=off"
        );
        let no_loop = Offered {
            loop_devices: false,
            ..ALL
        };
        let err = choose(&config("loop", "auto", "auto"), &no_loop).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[kernel] erofs = \"loop\" is set, but this kernel lacks loop devices"
        );
        let err = choose(&config("auto", "auto", "require"), &ALL).unwrap_err();
        assert!(err.to_string().contains("fs-verity"), "{err}");
    }

    #[test]
    fn a_kernel_without_data_only_lowers_is_refused_naming_the_feature() {
        // Debian 12's Linux 6.1.
        let linux_6_1 = Offered {
            erofs_file: false,
            lowers_append: false,
            lowers_double_colon: false,
            ..ALL
        };
        let err = choose(&KernelConfig::default(), &linux_6_1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this kernel lacks overlayfs data-only lower layers (Linux 6.5+), which strata needs \
             (the object store is mounted as one)"
        );
        let no_erofs = Offered { erofs: false, ..ALL };
        assert!(choose(&KernelConfig::default(), &no_erofs)
            .unwrap_err()
            .to_string()
            .contains("erofs filesystem"));
    }

    #[test]
    fn bad_values_and_unknown_keys() {
        let mut c = KernelConfig::default();
        assert_eq!(
            c.set("erofs", "fuse").unwrap_err().to_string(),
            "[kernel] erofs = \"fuse\": expected one of \"auto\", \"file\", \"loop\""
        );
        assert!(!c.set("nope", "auto").unwrap());
    }
}
