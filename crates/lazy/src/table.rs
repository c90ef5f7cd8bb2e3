//! The names LAZY serves, and the inodes the kernel knows them by (pure).
//!
//! The tree is two levels deep like `objects/`: the root holds the 256
//! directories `00`..`ff`, always; directory `XX` holds the listed names
//! whose digest starts with byte `XX`, each as its other 62 hex digits.
//! A name keeps its inode number while the kernel holds a reference to it
//! (LOOKUP counted, FORGET subtracted), even once it is no longer listed,
//! so an open through a cached dentry still finds its name.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;

use strata_tree::Digest;

pub(crate) const ROOT_INO: u64 = 1;
const FIRST_DIR_INO: u64 = 2;
const FIRST_FILE_INO: u64 = FIRST_DIR_INO + 256;

/// What an inode number stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Root,
    Dir(u8),
    File { name: Digest, size: u64 },
}

#[derive(Debug)]
struct FileInode<B> {
    name: Digest,
    size: u64,
    listed: bool,
    /// LOOKUP replies minus FORGET counts: while above zero the kernel may
    /// still send requests for this inode.
    lookups: u64,
    /// The passthrough backing of the inode (one per inode, as the kernel
    /// requires while any of its files is open), kept until FORGET.
    backing: Option<B>,
    /// Restored from a predecessor's journal: the kernel's count is not
    /// known, so the inode is kept for the session's life.
    pinned: bool,
    /// A backing id the predecessor registered, not yet adopted.
    restored_backing: Option<u32>,
}

impl<B> FileInode<B> {
    /// A listed name the kernel does not know yet.
    fn new(name: Digest, size: u64) -> Self {
        Self {
            name,
            size,
            listed: true,
            lookups: 0,
            backing: None,
            pinned: false,
            restored_backing: None,
        }
    }
}

/// A LOOKUP's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub ino: u64,
    pub size: u64,
    /// The kernel held no reference before: a fact for the journal.
    pub first_reference: bool,
}

/// What a FORGET released.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Forgot<B> {
    /// The backing to close: the kernel evicted the inode.
    pub backing: Option<B>,
    /// The kernel holds no reference any more.
    pub evicted: bool,
}

/// Listed names and known inodes. `B` is the backing handle type (fuser's
/// `BackingId`; anything in unit tests).
#[derive(Debug)]
pub(crate) struct Table<B> {
    by_name: BTreeMap<Digest, u64>,
    files: HashMap<u64, FileInode<B>>,
    next_ino: u64,
}

impl<B> Default for Table<B> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
            files: HashMap::new(),
            next_ino: FIRST_FILE_INO,
        }
    }
}

impl<B> Table<B> {
    /// Lists `name` with `size`. False if it was listed already.
    pub fn insert(&mut self, name: Digest, size: u64) -> bool {
        if let Some(ino) = self.by_name.get(&name) {
            let file = self.files.get_mut(ino).expect("by_name and files agree");
            file.size = size;
            return !std::mem::replace(&mut file.listed, true);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_name.insert(name, ino);
        self.files.insert(ino, FileInode::new(name, size));
        true
    }

    /// Stops listing `name`: once the kernel holds its inode no more,
    /// lookups answer ENOENT; until then it keeps working. False if it
    /// was not listed.
    pub fn remove(&mut self, name: &Digest) -> bool {
        let Some(&ino) = self.by_name.get(name) else {
            return false;
        };
        let file = self.files.get_mut(&ino).expect("by_name and files agree");
        let was_listed = std::mem::replace(&mut file.listed, false);
        if file.lookups == 0 && !file.pinned {
            self.drop_inode(ino);
        }
        was_listed
    }

    pub fn is_listed(&self, name: &Digest) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|ino| self.files.get(ino).is_some_and(|f| f.listed))
    }

    pub fn listed_count(&self) -> usize {
        self.files.values().filter(|f| f.listed).count()
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT_INO => Some(Node::Root),
            i if (FIRST_DIR_INO..FIRST_FILE_INO).contains(&i) => {
                Some(Node::Dir(u8::try_from(i - FIRST_DIR_INO).expect("256 directories")))
            }
            i => self.files.get(&i).map(|f| Node::File {
                name: f.name,
                size: f.size,
            }),
        }
    }

    /// A LOOKUP of a listed name: its inode and size, counted as a kernel
    /// reference. A name no longer listed is found too while the kernel
    /// holds its inode: that LOOKUP revalidates a dentry the kernel cached
    /// (its entry TTL passed), and an ENOENT would make an overlay that
    /// found a file's data here answer ESTALE for that file.
    pub fn lookup(&mut self, name: &Digest) -> Option<Found> {
        let ino = *self.by_name.get(name)?;
        let file = self.files.get_mut(&ino).expect("by_name and files agree");
        if !file.listed && file.lookups == 0 && !file.pinned {
            return None;
        }
        file.lookups += 1;
        Some(Found {
            ino,
            size: file.size,
            first_reference: file.lookups == 1 && !file.pinned,
        })
    }

    /// An inode a predecessor handed the kernel (its journal says so):
    /// kept for the session's life, unlisted until listed again.
    pub fn restore(&mut self, ino: u64, name: Digest, size: u64, backing: Option<u32>) {
        if ino < FIRST_FILE_INO {
            return;
        }
        self.next_ino = self.next_ino.max(ino + 1);
        // The newest inode of a name is the one new lookups get.
        if self.by_name.get(&name).is_none_or(|&known| known < ino) {
            self.by_name.insert(name, ino);
        }
        let restored = FileInode {
            listed: false,
            pinned: true,
            restored_backing: backing,
            ..FileInode::new(name, size)
        };
        self.files.insert(ino, restored);
    }

    /// Hands out only inode numbers above `ino` (the highest a
    /// predecessor ever handed out).
    pub fn number_past(&mut self, ino: u64) {
        self.next_ino = self.next_ino.max(ino.saturating_add(1));
    }

    /// The predecessor's backing id of `ino`, once: the caller adopts it.
    pub fn take_restored_backing(&mut self, ino: u64) -> Option<u32> {
        self.files.get_mut(&ino)?.restored_backing.take()
    }

    /// A FORGET of `count` references. Returns the backing to release once
    /// the kernel holds none (it has evicted the inode, so no file of it is
    /// open).
    pub fn forget(&mut self, ino: u64, count: u64) -> Forgot<B> {
        let kept = Forgot {
            backing: None,
            evicted: false,
        };
        let Some(file) = self.files.get_mut(&ino) else {
            return kept;
        };
        file.lookups = file.lookups.saturating_sub(count);
        if file.lookups > 0 || file.pinned {
            return kept;
        }
        let backing = file.backing.take();
        if !file.listed {
            self.drop_inode(ino);
        }
        Forgot { backing, evicted: true }
    }

    pub fn backing(&self, ino: u64) -> Option<&B> {
        self.files.get(&ino)?.backing.as_ref()
    }

    /// Keeps `backing` for `ino` unless it has one; returns the one kept.
    /// None if the inode is gone.
    pub fn keep_backing(&mut self, ino: u64, make: impl FnOnce() -> Option<B>) -> Option<&B> {
        let file = self.files.get_mut(&ino)?;
        if file.backing.is_none() {
            file.backing = make();
        }
        file.backing.as_ref()
    }

    /// Listed names in directory `dir`, with their inodes, in name order.
    pub fn dir_entries(&self, dir: u8) -> Vec<(u64, Digest)> {
        let mut low = [0u8; 32];
        low[0] = dir;
        self.by_name
            .range(Digest(low)..)
            .take_while(|(name, _)| name.0[0] == dir)
            .filter(|(_, ino)| self.files.get(ino).is_some_and(|f| f.listed))
            .map(|(name, ino)| (*ino, *name))
            .collect()
    }

    fn drop_inode(&mut self, ino: u64) {
        if let Some(file) = self.files.remove(&ino) {
            if self.by_name.get(&file.name) == Some(&ino) {
                self.by_name.remove(&file.name);
            }
        }
    }
}

/// The inode of directory `XX`.
pub(crate) fn dir_ino(dir: u8) -> u64 {
    FIRST_DIR_INO + u64::from(dir)
}

/// `XX` for a directory name of two lowercase hex digits.
pub(crate) fn parse_dir_name(name: &OsStr) -> Option<u8> {
    let text = name.to_str()?;
    if text.len() != 2 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    u8::from_str_radix(text, 16).ok()
}

/// The digest a file name stands for in directory `dir`.
pub(crate) fn parse_file_name(dir: u8, name: &OsStr) -> Option<Digest> {
    Digest::from_object_path(&format!("{dir:02x}"), name.to_str()?).ok()
}

/// The file name of `name` inside its directory.
pub(crate) fn file_name(name: &Digest) -> String {
    name.to_hex()[2..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(first: u8, last: u8) -> Digest {
        let mut d = [0u8; 32];
        d[0] = first;
        d[31] = last;
        Digest(d)
    }

    #[test]
    fn names_parse_only_in_their_canonical_form() {
        assert_eq!(parse_dir_name(OsStr::new("0a")), Some(10));
        assert_eq!(parse_dir_name(OsStr::new("0A")), None);
        assert_eq!(parse_dir_name(OsStr::new("a")), None);
        assert_eq!(parse_dir_name(OsStr::new("zz")), None);
        let name = digest(0xab, 0xcd);
        let file = file_name(&name);
        assert_eq!(file.len(), 62);
        assert_eq!(parse_file_name(0xab, OsStr::new(&file)), Some(name));
        assert_eq!(parse_file_name(0xab, OsStr::new(&file.to_uppercase())), None);
        assert_eq!(parse_file_name(0xab, OsStr::new(&file[1..])), None);
    }

    #[test]
    fn removed_names_stay_servable_until_forgotten() {
        let mut table: Table<&str> = Table::default();
        let name = digest(1, 1);
        assert!(table.insert(name, 100));
        assert!(!table.insert(name, 100));
        let Found {
            ino,
            size,
            first_reference,
        } = table.lookup(&name).unwrap();
        assert_eq!(size, 100);
        assert!(first_reference);
        assert_eq!(table.keep_backing(ino, || Some("b1")), Some(&"b1"));
        assert_eq!(
            table.keep_backing(ino, || Some("b2")),
            Some(&"b1"),
            "one backing per inode"
        );

        assert!(table.remove(&name));
        assert!(!table.is_listed(&name));
        assert_eq!(
            table.node(ino),
            Some(Node::File { name, size: 100 }),
            "the inode lives on"
        );
        assert_eq!(
            table.lookup(&name),
            Some(Found {
                ino,
                size: 100,
                first_reference: false
            }),
            "held by the kernel: a revalidating lookup finds it"
        );
        assert_eq!(table.dir_entries(1), vec![], "but it is not listed");
        assert_eq!(table.forget(ino, 1).backing, None);
        assert_eq!(
            table.forget(ino, 1),
            Forgot {
                backing: Some("b1"),
                evicted: true
            }
        );
        assert_eq!(table.node(ino), None, "forgotten and unlisted: gone");
        assert!(table.lookup(&name).is_none(), "unlisted and not held: not found");
    }

    #[test]
    fn forget_keeps_the_backing_while_references_remain() {
        let mut table: Table<u32> = Table::default();
        let name = digest(2, 2);
        table.insert(name, 1);
        let ino = table.lookup(&name).unwrap().ino;
        assert!(!table.lookup(&name).unwrap().first_reference);
        table.keep_backing(ino, || Some(9));
        assert!(!table.forget(ino, 1).evicted);
        assert_eq!(table.backing(ino), Some(&9));
        assert_eq!(table.forget(ino, 1).backing, Some(9));
        assert_eq!(table.node(ino), Some(Node::File { name, size: 1 }), "still listed");
    }

    #[test]
    fn restored_inodes_keep_their_numbers_and_outlive_forgets() {
        let mut table: Table<u32> = Table::default();
        let name = digest(3, 3);
        let restored = FIRST_FILE_INO + 40;
        table.restore(restored, name, 7, Some(12));
        table.restore(5, digest(9, 9), 1, None);
        assert_eq!(
            table.node(5),
            Some(Node::Dir(3)),
            "a directory's number is never a file's"
        );
        assert_eq!(table.node(restored), Some(Node::File { name, size: 7 }));
        assert!(!table.is_listed(&name));
        let found = table.lookup(&name).expect("the kernel may hold it: found unlisted");
        assert_eq!((found.ino, found.first_reference), (restored, false));
        assert!(table.insert(name, 7), "listed again, under the same inode");
        assert_eq!(table.lookup(&name).unwrap().ino, restored);
        assert_eq!(table.take_restored_backing(restored), Some(12));
        assert_eq!(table.take_restored_backing(restored), None, "adopted once");
        assert!(!table.forget(restored, u64::MAX).evicted, "pinned");
        assert!(table.remove(&name));
        assert_eq!(table.node(restored), Some(Node::File { name, size: 7 }));
        table.insert(digest(4, 4), 1);
        assert_eq!(
            table.lookup(&digest(4, 4)).unwrap().ino,
            restored + 1,
            "new inodes come after"
        );
    }

    #[test]
    fn directories_list_their_own_names_in_order() {
        let mut table: Table<()> = Table::default();
        for (first, last) in [(5, 3), (5, 1), (6, 0), (4, 9)] {
            table.insert(digest(first, last), 1);
        }
        table.remove(&digest(5, 3));
        let names: Vec<Digest> = table.dir_entries(5).into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, vec![digest(5, 1)]);
        assert_eq!(table.dir_entries(7), vec![]);
        assert_eq!(table.listed_count(), 3);
        assert_eq!(table.node(dir_ino(255)), Some(Node::Dir(255)));
        assert_eq!(table.node(ROOT_INO), Some(Node::Root));
    }
}
