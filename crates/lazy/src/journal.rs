//! The session journal: what a LAZY server's successor needs to take its
//! FUSE session over after a kill -9 (docs/lazy-pulls.md, "Hand-over").
//!
//! The kernel keeps the connection while any process holds the /dev/fuse
//! fd, and it keeps naming files by the inode numbers and passthrough
//! backing ids the dead server handed out. The server writes each of
//! those facts here before the kernel can learn it (before the reply that
//! carries it), so a successor that replays the journal answers every
//! inode the kernel knows and reuses every backing id still registered.
//!
//! The journal is a memfd the keeper creates and holds: it needs no path,
//! no cleanup, and outlives any one server. Records are fixed 64-byte
//! blocks written whole with one `pwrite`; a block that does not decode
//! ends the replay, as a torn tail would.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use strata_tree::Digest;

const RECORD: usize = 64;
const MAGIC: [u8; 4] = *b"SLZJ";

/// Where the journal stops growing (1,048,576 records): a server that
/// handed out more inodes than that is not hand-over safe for the rest,
/// and says so once.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// One fact about the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// The INIT the first server answered: the kernel's ABI and flags.
    Session { major: u32, minor: u32, flags: u64 },
    /// The kernel may hold `ino` as the file `name` of `size` bytes.
    Known { ino: u64, size: u64, name: Digest },
    /// The kernel evicted `ino` (FORGET down to zero).
    Forgotten { ino: u64 },
    /// Backing id `id` is registered for `ino`.
    Backing { ino: u64, id: u32 },
    /// The backing id of `ino` is being closed.
    BackingClosed { ino: u64 },
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD] {
        let mut block = [0u8; RECORD];
        block[..4].copy_from_slice(&MAGIC);
        let mut put = |at: usize, bytes: &[u8]| block[at..at + bytes.len()].copy_from_slice(bytes);
        match *self {
            Record::Session { major, minor, flags } => {
                put(4, &[1]);
                put(8, &major.to_le_bytes());
                put(12, &minor.to_le_bytes());
                put(16, &flags.to_le_bytes());
            }
            Record::Known { ino, size, name } => {
                put(4, &[2]);
                put(8, &ino.to_le_bytes());
                put(16, &size.to_le_bytes());
                put(24, &name.0);
            }
            Record::Forgotten { ino } => {
                put(4, &[3]);
                put(8, &ino.to_le_bytes());
            }
            Record::Backing { ino, id } => {
                put(4, &[4]);
                put(8, &ino.to_le_bytes());
                put(16, &id.to_le_bytes());
            }
            Record::BackingClosed { ino } => {
                put(4, &[5]);
                put(8, &ino.to_le_bytes());
            }
        }
        block
    }

    pub fn decode(block: &[u8; RECORD]) -> Option<Record> {
        if block[..4] != MAGIC || block[5..8] != [0; 3] {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
        Some(match block[4] {
            1 => Record::Session {
                major: u32_at(8),
                minor: u32_at(12),
                flags: u64_at(16),
            },
            2 => Record::Known {
                ino: u64_at(8),
                size: u64_at(16),
                name: Digest(block[24..56].try_into().expect("32 bytes")),
            },
            3 => Record::Forgotten { ino: u64_at(8) },
            4 => Record::Backing {
                ino: u64_at(8),
                id: u32_at(16),
            },
            5 => Record::BackingClosed { ino: u64_at(8) },
            _ => return None,
        })
    }
}

/// An inode the kernel may still hold, as the journal left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RestoredInode {
    pub name: Digest,
    pub size: u64,
    pub backing: Option<u32>,
}

/// A replayed journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// The INIT answered; None if no server got that far.
    pub session: Option<(u32, u32, u64)>,
    pub inodes: BTreeMap<u64, RestoredInode>,
    /// The highest inode number ever recorded, forgotten or not: the
    /// successor hands out only higher ones.
    pub highest_ino: u64,
    /// Bytes of whole records: where the successor appends.
    pub len: u64,
}

/// Replays `bytes` (pure): the last word on each inode wins.
pub(crate) fn replay(bytes: &[u8]) -> Replayed {
    let mut replayed = Replayed::default();
    for block in bytes.chunks_exact(RECORD) {
        let Some(record) = Record::decode(block.try_into().expect("a whole record")) else {
            break;
        };
        replayed.len += RECORD as u64;
        if let Record::Known { ino, .. } = record {
            replayed.highest_ino = replayed.highest_ino.max(ino);
        }
        let inodes = &mut replayed.inodes;
        match record {
            Record::Session { major, minor, flags } => replayed.session = Some((major, minor, flags)),
            Record::Known { ino, size, name } => {
                let backing = inodes.get(&ino).filter(|i| i.name == name).and_then(|i| i.backing);
                inodes.insert(ino, RestoredInode { name, size, backing });
            }
            Record::Forgotten { ino } => {
                // Its backing was closed first (BackingClosed), or is
                // kept with the inode's entry while one is open.
                if inodes.get(&ino).is_some_and(|i| i.backing.is_none()) {
                    inodes.remove(&ino);
                }
            }
            Record::Backing { ino, id } => {
                if let Some(inode) = inodes.get_mut(&ino) {
                    inode.backing = Some(id);
                }
            }
            Record::BackingClosed { ino } => {
                if let Some(inode) = inodes.get_mut(&ino) {
                    inode.backing = None;
                }
            }
        }
    }
    replayed
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("creating the LAZY session journal: {0}")]
    Create(#[source] std::io::Error),
    #[error("reading the LAZY session journal: {0}")]
    Read(#[source] std::io::Error),
}

/// The journal a keeper creates and hands to each server it starts.
pub fn create_journal() -> Result<OwnedFd, JournalError> {
    rustix::fs::memfd_create("strata-lazy-journal", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| JournalError::Create(e.into()))
}

/// A server's writer of the journal.
pub(crate) struct Journal {
    file: File,
    len: Mutex<u64>,
    full: AtomicBool,
}

impl Journal {
    /// Opens `fd` for a fresh session (an empty journal) or a take-over
    /// (replayed first).
    pub fn open(fd: OwnedFd) -> Result<(Journal, Replayed), JournalError> {
        let file = File::from(fd);
        let len = file.metadata().map_err(JournalError::Read)?.len();
        let len = usize::try_from(len.min(MAX_JOURNAL_BYTES)).expect("64 MiB fits");
        let mut bytes = vec![0u8; len];
        let mut read = 0;
        while read < len {
            let n =
                rustix::io::pread(&file, &mut bytes[read..], read as u64).map_err(|e| JournalError::Read(e.into()))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let replayed = replay(&bytes[..read]);
        let journal = Journal {
            file,
            len: Mutex::new(replayed.len),
            full: AtomicBool::new(false),
        };
        Ok((journal, replayed))
    }

    /// Appends `record`; false (logged) if it could not: the caller does
    /// not hand the kernel what a successor would not know.
    pub fn append(&self, record: Record) -> bool {
        let mut len = self.len.lock().unwrap_or_else(PoisonError::into_inner);
        if *len + RECORD as u64 > MAX_JOURNAL_BYTES {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "lazy: the session journal is full ({MAX_JOURNAL_BYTES} bytes); lookups of names LAZY has not handed out yet get EIO"
                );
            }
            return false;
        }
        let block = record.encode();
        match rustix::io::pwrite(&self.file, &block, *len) {
            Ok(RECORD) => {
                *len += RECORD as u64;
                true
            }
            Ok(n) => {
                tracing::warn!("lazy: a short write ({n} of {RECORD} bytes) to the session journal");
                false
            }
            Err(e) => {
                tracing::warn!("lazy: writing the session journal: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn journal(records: &[Record]) -> Vec<u8> {
        records.iter().flat_map(|r| r.encode()).collect()
    }

    #[test]
    fn every_record_decodes_to_itself() {
        let records = [
            Record::Session {
                major: 7,
                minor: 45,
                flags: 1 << 39 | 1 << 41,
            },
            Record::Known {
                ino: 300,
                size: u64::MAX,
                name: name(9),
            },
            Record::Forgotten { ino: 300 },
            Record::Backing { ino: 301, id: u32::MAX },
            Record::BackingClosed { ino: 301 },
        ];
        for record in records {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        let mut torn = Record::Forgotten { ino: 1 }.encode();
        torn[4] = 9;
        assert_eq!(Record::decode(&torn), None);
        assert_eq!(Record::decode(&[0; RECORD]), None);
    }

    #[test]
    fn replay_keeps_what_the_kernel_may_still_hold() {
        let bytes = journal(&[
            Record::Session {
                major: 7,
                minor: 45,
                flags: 3,
            },
            Record::Known {
                ino: 300,
                size: 10,
                name: name(1),
            },
            Record::Known {
                ino: 301,
                size: 20,
                name: name(2),
            },
            Record::Backing { ino: 301, id: 5 },
            Record::Known {
                ino: 302,
                size: 30,
                name: name(3),
            },
            Record::Backing { ino: 302, id: 6 },
            Record::BackingClosed { ino: 302 },
            Record::Forgotten { ino: 302 },
            Record::Forgotten { ino: 300 },
            // Looked up again after its FORGET.
            Record::Known {
                ino: 300,
                size: 10,
                name: name(1),
            },
        ]);
        let replayed = replay(&bytes);
        assert_eq!(replayed.session, Some((7, 45, 3)));
        assert_eq!(replayed.len, bytes.len() as u64);
        let inodes: Vec<_> = replayed.inodes.iter().map(|(i, r)| (*i, r.size, r.backing)).collect();
        assert_eq!(inodes, [(300, 10, None), (301, 20, Some(5))]);
        assert_eq!(replayed.highest_ino, 302, "a forgotten number is not handed out again");
    }

    #[test]
    fn replay_stops_at_a_torn_or_foreign_block() {
        let mut bytes = journal(&[Record::Known {
            ino: 300,
            size: 1,
            name: name(1),
        }]);
        bytes.extend_from_slice(&[0xff; RECORD]);
        bytes.extend(
            Record::Known {
                ino: 301,
                size: 1,
                name: name(2),
            }
            .encode(),
        );
        bytes.extend_from_slice(&[0; 10]);
        let replayed = replay(&bytes);
        assert_eq!(replayed.len, RECORD as u64);
        assert_eq!(replayed.inodes.keys().copied().collect::<Vec<_>>(), [300]);
    }

    #[test]
    fn a_journal_file_replays_what_was_appended() {
        let fd = create_journal().expect("memfd");
        let (journal, replayed) = Journal::open(fd.try_clone().unwrap()).unwrap();
        assert_eq!(replayed, Replayed::default());
        assert!(journal.append(Record::Known {
            ino: 400,
            size: 7,
            name: name(4),
        }));
        assert!(journal.append(Record::Backing { ino: 400, id: 2 }));
        drop(journal);
        let (again, replayed) = Journal::open(fd).unwrap();
        assert_eq!(replayed.len, 2 * RECORD as u64);
        assert_eq!(replayed.inodes[&400].backing, Some(2));
        assert!(again.append(Record::BackingClosed { ino: 400 }));
        assert_eq!(*again.len.lock().unwrap(), 3 * RECORD as u64);
    }
}
