//! Filesystem semantics without FUSE: volumes, directories with encrypted names, and
//! encrypted files read and written through per-extent DEKs.
//!
//! Owns: the backing tree under `CIPHERDIR/data`, open-file state (logical size, extent
//! keys, written-block bitmaps), read-modify-write of partial blocks, rayon-parallel block
//! crypto, and the ordering between data writes and store commits. It combines `keys`,
//! `format` and `store`, and never imports `fuser`: everything here is testable without a
//! mount.

mod backend;
mod binding;
mod blocks;
mod commit;
mod dirs;
mod file;
mod file_set;
mod fsck;
mod inode_fs;
mod linger;
mod links;
mod listing;
mod made;
mod meta;
mod names;
mod open;
mod open_ahead;
mod presence;
mod records;
mod rekey;
mod revoke;
mod root;
mod rotate;
mod rotate_names;
mod scratch;
mod shred;
mod shred_files;
mod tenant_conversion;
mod tenants;
mod trash;
mod tree;
mod upgrade;
mod volume;
mod walk_ahead;
mod xattr;

pub use backend::{DataFile, OsStorage, Storage, SyncPoint};
pub use dirs::ListedDir;
pub use file::FileHandle;
pub use fsck::{FsckReport, Problem, ProblemKind, LOST_FOUND};
pub use inode_fs::{Caller, InodeFs, SetAttr, ROOT_INO};
pub use listing::{Listed, Listing};
pub use meta::{epoch_parts, time, Attr, AttrChanges, RenameMode, SetTime, StatFs};
pub use revoke::DarkReport;
pub use root::next_root;
pub use rotate::RotationStep;
pub use rotate_names::NamesMoved;
pub use scratch::{ScratchSetup, ScratchState};
pub use shred::ShredReport;
pub use shred_files::ShredFilesReport;
pub use tenant_conversion::{Conversion, ConversionPhase};
pub use tenants::{TenantEntry, TENANTS_DIR};
pub use upgrade::UpgradeReport;
pub use volume::{
    DirEntry, EntryKind, InitOptions, LiveStats, Stat, Volume, VolumeInfo, DATA_DIR, HEADER_FILE, STORE_FILE,
};
pub use xattr::XattrMode;
