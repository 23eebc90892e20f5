//! The sidecar metadata store (`CIPHERDIR/meta.db`): SQLite in WAL mode with
//! `secure_delete=ON`, so deleted wrapped keys are overwritten in the database file.
//!
//! Holds per-file records (logical size, cipher), per-extent wrapped DEKs with their
//! written-block bitmaps, and the full ciphertext of names too long for the backing file
//! system. It sees only wrapped keys and ciphertext. All changes go through [`Store::apply`],
//! one transaction per call — never one per block.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::{Error, Result};

mod sizes;
mod warm;
use sizes::SizeChange;

/// Prepared statements kept per connection: more than the store's distinct cached queries
/// (about twenty), so that none is parsed again while the other is used (rusqlite keeps 16).
const STATEMENTS: usize = 32;

/// `PRAGMA application_id`: "EVFS".
const APPLICATION_ID: i64 = 0x4556_4653;
/// `PRAGMA user_version`: the schema version this build writes. Older versions are
/// migrated on open (1 → 2 adds `xattrs`, 2 → 3 adds `meta`, 3 → 4 `files.mac`, 4 → 5
/// `links`).
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE files (
    id     BLOB PRIMARY KEY,
    size   INTEGER NOT NULL,
    cipher INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE extents (
    file_id BLOB NOT NULL,
    idx     INTEGER NOT NULL,
    kek_id  BLOB NOT NULL,
    wrapped BLOB NOT NULL,
    written BLOB NOT NULL,
    PRIMARY KEY (file_id, idx)
) WITHOUT ROWID;
CREATE TABLE long_names (
    dir_id BLOB NOT NULL,
    hash   BLOB NOT NULL,
    name   BLOB NOT NULL,
    PRIMARY KEY (dir_id, hash)
) WITHOUT ROWID;
";

/// Schema version 5: the entries a file with hard links may be reached by (`fs::links`).
const SCHEMA_V5: &str = "
CREATE TABLE links (
    object_id BLOB NOT NULL,
    tag       BLOB NOT NULL,
    PRIMARY KEY (object_id, tag)
) WITHOUT ROWID;
";

/// Schema version 4: each file record carries a MAC (by the name key) over its size, extent
/// set and written bitmaps, so an edited row is an integrity error, not a hole of zeros.
const SCHEMA_V4: &str = "ALTER TABLE files ADD COLUMN mac BLOB;";

/// Schema version 3: volume-level state, e.g. an unfinished KEK rotation.
const SCHEMA_V3: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
";

/// Schema version 2: encrypted extended attributes.
const SCHEMA_V2: &str = "
CREATE TABLE xattrs (
    object_id BLOB NOT NULL,
    name      BLOB NOT NULL,
    value     BLOB NOT NULL,
    PRIMARY KEY (object_id, name)
) WITHOUT ROWID;
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub size: u64,
    pub cipher: u8,
    /// `None` only in records written before schema version 4.
    pub mac: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentRecord {
    pub index: u64,
    pub kek_id: [u8; 16],
    pub wrapped: Vec<u8>,
    pub written: Vec<u8>,
}

/// One extent's wrapped DEK with its place (what a KEK rotation moves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDek {
    pub file: [u8; 16],
    pub index: u64,
    pub kek_id: [u8; 16],
    pub wrapped: Vec<u8>,
}

/// [`Store::extents_not_under`]: ?1 and ?2 the KEK ids skipped, ?3 the limit, (?4, ?5) the
/// key to walk on from.
const EXTENTS_NOT_UNDER: &str = "SELECT file_id, idx, kek_id, wrapped FROM extents \
    WHERE (file_id, idx) > (?4, ?5) AND kek_id != ?1 AND kek_id != ?2 ORDER BY file_id, idx LIMIT ?3";

/// One change; a slice of them is applied atomically by [`Store::apply`].
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    PutFile {
        id: &'a [u8; 16],
        size: u64,
        cipher: u8,
        mac: &'a [u8; 16],
    },
    PutExtent {
        file: &'a [u8; 16],
        index: u64,
        kek_id: &'a [u8; 16],
        wrapped: &'a [u8],
        written: &'a [u8],
    },
    /// Deletes the wrapped DEKs of extents `first..` (truncation).
    DropExtentsFrom {
        file: &'a [u8; 16],
        first: u64,
    },
    /// Deletes the file record and every wrapped DEK of the file.
    DeleteFile {
        id: &'a [u8; 16],
    },
    PutLongName {
        dir: &'a [u8; 16],
        hash: &'a [u8],
        name: &'a [u8],
    },
    DeleteLongName {
        dir: &'a [u8; 16],
        hash: &'a [u8],
    },
    PutXattr {
        object: &'a [u8; 16],
        name: &'a [u8],
        value: &'a [u8],
    },
    DeleteXattr {
        object: &'a [u8; 16],
        name: &'a [u8],
    },
    PutMeta {
        key: &'a str,
        value: &'a [u8],
    },
    DeleteMeta {
        key: &'a str,
    },
    /// Replaces one extent's wrapped DEK (KEK rotation) if it is still `old` (an extent
    /// truncated and rewritten meanwhile keeps its new DEK); its written bits stay.
    RewrapExtent {
        file: &'a [u8; 16],
        index: u64,
        old: &'a [u8],
        kek_id: &'a [u8; 16],
        wrapped: &'a [u8],
    },
    /// Records that the file `object` (with hard links) may be reached by the entry whose tag
    /// is `tag` (`fs::links`).
    PutLink {
        object: &'a [u8; 16],
        tag: &'a [u8; 16],
    },
    DeleteLink {
        object: &'a [u8; 16],
        tag: &'a [u8; 16],
    },
    /// Replaces a file record's MAC (a KEK rotation's new name keys) if it is still `old`.
    ResealFile {
        id: &'a [u8; 16],
        old: &'a [u8],
        mac: &'a [u8; 16],
    },
    /// Deletes every extended attribute of a directory (rmdir).
    DeleteXattrs {
        object: &'a [u8; 16],
    },
}

/// [`Store::load`]: a file's record and its extents, in order.
const LOAD: &str = "SELECT f.size, f.cipher, f.mac, e.idx, e.kek_id, e.wrapped, e.written \
    FROM files f LEFT JOIN extents e ON e.file_id = f.id WHERE f.id = ?1 ORDER BY e.idx";

pub struct Store {
    /// A second, read-only connection for the frequent lookups (`stat`, names, xattrs,
    /// opening a file), so they do not queue behind a commit's sync (WAL lets readers run
    /// beside the writer and see every committed transaction). Declared first: dropped
    /// before the writer, whose close then checkpoints the WAL.
    reader: std::sync::OnceLock<Option<Mutex<Connection>>>,
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Asked before every commit (the storage seam's sync point); an error aborts it.
    before_commit: std::sync::OnceLock<CommitHook>,
    /// Keeps the digest of the set of file records (see [`FileSetHook`]).
    file_set: Mutex<Option<FileSetHook>>,
    sizes: sizes::Sizes,
    warmer: warm::Warmer,
    /// Set when the volume's root was revoked while mounted: every later write is refused.
    refused: std::sync::OnceLock<String>,
}

/// A long-name row: (directory id, hash, full ciphertext).
pub type LongName = ([u8; 16], Vec<u8>, Vec<u8>);

/// The store's connection with `synchronous=NORMAL` for one lazy transaction
/// ([`Store::apply_lazy`]), `FULL` again when dropped, however the transaction ended.
struct Synchronous<'a> {
    conn: MutexGuard<'a, Connection>,
    lazy: bool,
}

impl<'a> Synchronous<'a> {
    fn set(conn: MutexGuard<'a, Connection>, durable: bool) -> rusqlite::Result<Self> {
        // Set for a durable commit too (a pragma costs microseconds, the commit an fsync): a
        // restore that failed after a lazy one never leaves later commits lazy.
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        Ok(Synchronous { conn, lazy: !durable })
    }
}

impl std::ops::Deref for Synchronous<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Synchronous<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Synchronous<'_> {
    fn drop(&mut self) {
        if self.lazy {
            if let Err(e) = self.conn.pragma_update(None, "synchronous", "FULL") {
                tracing::error!("store: synchronous=FULL not restored after a lazy commit (set again before the next durable one): {e}");
            }
        }
    }
}

/// See [`Store::set_before_commit`].
pub type CommitHook = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// Keeps `meta` record `key` equal to `tag(digest)`, where `digest` is the XOR of
/// `mark(id, mac)` over every file record, in the same transaction as every record added,
/// deleted or (when the marks cover the record's MAC) changed (`fs::file_set`). The digest
/// itself lives only here, in memory (checked against the record when the volume was
/// opened); it moves on when a transaction commits.
pub struct FileSetHook {
    pub key: &'static str,
    pub fns: SetFns,
    /// The digest and the number of changes of the set committed so far.
    pub state: Mutex<([u8; 16], u64)>,
    /// Told the number of changes after each commit that moved the set.
    pub committed: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

/// The mark of a file record: of its id and MAC.
pub type MarkFn = Box<dyn Fn(&[u8; 16], &[u8]) -> [u8; 16] + Send + Sync>;
/// The tag of a set: of its digest and number of changes.
pub type TagFn = Box<dyn Fn(&[u8; 16], u64) -> [u8; 16] + Send + Sync>;

/// How a set of files is marked and tagged.
pub struct SetFns {
    /// The mark of a record (its id, and its MAC, which a versioned set covers).
    pub mark: MarkFn,
    /// The tag of a digest after a number of changes (which a versioned set covers).
    pub tag: TagFn,
    /// The marks cover each record's MAC, and the stored value is `u64le changes || tag`
    /// (format 2: a record put back from an older copy changes the set); else just the tag.
    pub versioned: bool,
}

impl SetFns {
    /// The stored value of a set with `digest` after `changes` changes.
    pub fn value(&self, digest: &[u8; 16], changes: u64) -> Vec<u8> {
        let tag = (self.tag)(digest, changes);
        match self.versioned {
            true => [&changes.to_le_bytes()[..], &tag].concat(),
            false => tag.to_vec(),
        }
    }

    /// The number of changes a stored value claims (0 when not versioned), if well-formed.
    pub fn changes_of(&self, value: &[u8]) -> Option<u64> {
        match (self.versioned, value.len()) {
            (true, 24) => Some(u64::from_le_bytes(value[..8].try_into().ok()?)),
            (false, 16) => Some(0),
            _ => None,
        }
    }

    /// Whether `value` is the stored value of `digest` (constant time in the tag).
    pub fn holds(&self, value: &[u8], digest: &[u8; 16]) -> bool {
        self.changes_of(value)
            .is_some_and(|n| aws_lc_rs::constant_time::verify_slices_are_equal(value, &self.value(digest, n)).is_ok())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The store's files (database, WAL, shared memory, rollback journal) are regular files or
/// absent: SQLite opens each of them `O_NOFOLLOW` itself (its `SQLITE_OPEN_NOFOLLOW` would also
/// refuse a symlink anywhere above, such as a symlinked home directory), and a FIFO or device
/// planted there is refused here rather than opened.
fn check_files(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        if let Some(meta) = crate::confine::lstat(Path::new(&p))? {
            crate::confine::check_kind(&meta, crate::confine::Expect::File, Path::new(&p))?;
        }
    }
    Ok(())
}

impl Store {
    /// Creates a new, empty store at `path` (which must not exist).
    pub fn create(path: &Path) -> Result<Store> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::Exists(path.to_path_buf()));
        }
        let store = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        // SQLite gives the WAL and shared-memory files the database file's mode.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| Error::io(path, "chmod", e))?;
        {
            let conn = store.lock();
            let err = |e| store.err(e);
            conn.execute_batch(SCHEMA).map_err(err)?;
            conn.execute_batch(SCHEMA_V2).map_err(err)?;
            conn.execute_batch(SCHEMA_V3).map_err(err)?;
            conn.execute_batch(SCHEMA_V4).map_err(err)?;
            conn.execute_batch(SCHEMA_V5).map_err(err)?;
            conn.pragma_update(None, "application_id", APPLICATION_ID).map_err(err)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(err)?;
        }
        Ok(store)
    }

    /// Opens an existing store, checking that it is ours and of a schema this build reads.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.is_file() {
            return Err(Error::corrupt(path, "metadata store is missing"));
        }
        let store = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        {
            let conn = store.lock();
            let app: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(|e| store.err(e))?;
            if app != APPLICATION_ID {
                return Err(Error::corrupt(path, "not an envelopefs metadata store (application id mismatch)"));
            }
            let mut version: i64 =
                conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| store.err(e))?;
            if version == 1 {
                conn.execute_batch(&format!("BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"))
                    .map_err(|e| store.err(e))?;
                version = 2;
            }
            if version == 2 {
                conn.execute_batch(&format!("BEGIN; {SCHEMA_V3} PRAGMA user_version = 3; COMMIT;"))
                    .map_err(|e| store.err(e))?;
                version = 3;
            }
            if version == 3 {
                conn.execute_batch(&format!("BEGIN; {SCHEMA_V4} PRAGMA user_version = 4; COMMIT;"))
                    .map_err(|e| store.err(e))?;
                version = 4;
            }
            if version == 4 {
                conn.execute_batch(&format!("BEGIN; {SCHEMA_V5} PRAGMA user_version = 5; COMMIT;"))
                    .map_err(|e| store.err(e))?;
                version = 5;
            }
            if version != SCHEMA_VERSION {
                return Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("metadata schema version {version}; this build reads {SCHEMA_VERSION}"),
                });
            }
            conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)).map_err(|e| store.err(e)).and_then(
                |s| {
                    if s == "ok" {
                        Ok(())
                    } else {
                        Err(Error::corrupt(path, format!("integrity check: {s}")))
                    }
                },
            )?;
        }
        Ok(store)
    }

    fn connect(path: &Path, flags: OpenFlags) -> Result<Store> {
        check_files(path)?;
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| Error::Store { path: path.to_path_buf(), reason: e.to_string() })?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        let store = Store {
            reader: std::sync::OnceLock::new(),
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            before_commit: std::sync::OnceLock::new(),
            file_set: Mutex::new(None),
            sizes: sizes::Sizes::default(),
            // The file SQLite just opened (checked by `check_files`), opened once, now.
            warmer: warm::Warmer::new(path),
            refused: std::sync::OnceLock::new(),
        };
        {
            let conn = store.lock();
            let err = |e| store.err(e);
            // Every commit is durable (synchronous=FULL) so fsync through the file system means
            // what it says; deleted rows are overwritten (secure_delete) so removed wrapped DEKs do
            // not linger in free pages.
            conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
            conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
            conn.pragma_update(None, "secure_delete", "ON").map_err(err)?;
            conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        }
        Ok(store)
    }

    /// Installs `hook`, called before every commit of [`Store::apply`] (once per store).
    pub fn set_before_commit(&self, hook: CommitHook) {
        let _ = self.before_commit.set(hook);
    }

    /// The number of changes of the set of files kept now, if one is kept.
    pub fn file_set_changes(&self) -> Option<u64> {
        let hook = self.file_set.lock().unwrap_or_else(|p| p.into_inner());
        hook.as_ref().map(|h| h.state.lock().unwrap_or_else(|p| p.into_inner()).1)
    }

    /// Installs the file-set digest keeper (its record must exist).
    pub fn set_file_set(&self, hook: FileSetHook) {
        let _conn = self.lock(); // never while a transaction uses the old one
        *self.file_set.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Keeps the set of files with new functions from now on (a KEK rotation's new name
    /// keys): the digest is recomputed from the records and the tag rewritten under `new`, in
    /// one durable transaction with no other change between, if the stored tag is the one
    /// `old` gives for the records (or `new` already does). Otherwise (records removed or
    /// added behind the volume's back) nothing is written, nothing keeps the set from now on,
    /// and false is returned: the set stays an integrity error.
    pub fn rekey_file_set(&self, key: &'static str, old: SetFns, new: SetFns) -> Result<bool> {
        self.writable()?;
        let mut conn = self.lock();
        let err = |e| self.err(e);
        let (mut was, mut now) = ([0u8; 16], [0u8; 16]);
        {
            let mut stmt = conn.prepare("SELECT id, mac FROM files").map_err(err)?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))).map_err(err)?;
            for row in rows {
                let (id, mac) = row.map_err(err)?;
                let id: [u8; 16] =
                    id.try_into().map_err(|_| Error::corrupt(&self.path, "a file record has a malformed id"))?;
                let mac = mac.unwrap_or_default();
                was.iter_mut().zip((old.mark)(&id, &mac)).for_each(|(d, m)| *d ^= m);
                now.iter_mut().zip((new.mark)(&id, &mac)).for_each(|(d, m)| *d ^= m);
            }
        }
        let stored: Option<Vec<u8>> =
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(err)?;
        let changes = stored.as_deref().and_then(|v| new.changes_of(v)).unwrap_or(0);
        match stored.as_deref() {
            Some(t) if new.holds(t, &now) => {}
            Some(t) if old.holds(t, &was) => {
                let tx = conn.transaction().map_err(err)?;
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![key, new.value(&now, changes)],
                )
                .map_err(err)?;
                if let Some(hook) = self.before_commit.get() {
                    hook().map_err(|e| Error::io(&self.path, "commit", e))?;
                }
                tx.commit().map_err(err)?;
            }
            _ => {
                *self.file_set.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(false);
            }
        }
        let committed = self.file_set.lock().unwrap_or_else(|p| p.into_inner()).take().and_then(|h| h.committed);
        *self.file_set.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(FileSetHook { key, fns: new, state: Mutex::new((now, changes)), committed });
        Ok(true)
    }

    /// Whether file `object` may be reached by the entry whose tag is `tag`.
    pub fn has_link(&self, object: &[u8; 16], tag: &[u8; 16]) -> Result<bool> {
        self.read_lock()
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM links WHERE object_id = ?1 AND tag = ?2)")
            .and_then(|mut s| s.query_row(params![&object[..], &tag[..]], |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    /// Every long-name row.
    pub fn long_names(&self) -> Result<Vec<LongName>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT dir_id, hash, name FROM long_names").map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (dir, hash, name) = row.map_err(|e| self.err(e))?;
            let dir =
                dir.try_into().map_err(|_| Error::corrupt(&self.path, "a long name has a malformed directory id"))?;
            out.push((dir, hash, name));
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record and extents of file `id`, if the store has it.
    /// The logical size of file `id`, if it has a record (one row read, for `stat`).
    pub fn file_size(&self, id: &[u8; 16]) -> Result<Option<u64>> {
        let generation = match self.sizes.get(id) {
            Ok(size) => return Ok(Some(size)),
            Err(generation) => generation,
        };
        // A size not cached is a row read at random: the sizes of a listing's other files
        // will be too, so the database is read back in one sweep (at most once a second).
        // Not before: a listing whose sizes are all cached reads nothing of it.
        self.warmer.warm();
        let size = self
            .read_lock()
            .prepare_cached("SELECT size FROM files WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id[..]], |r| r.get::<_, i64>(0)).optional())
            .map(|o| o.map(|v| v as u64))
            .map_err(|e| self.err(e))?;
        if let Some(size) = size {
            self.sizes.fill(id, size, generation);
        }
        Ok(size)
    }

    /// Whether any row of file `id` is left: its record or any wrapped DEK of its extents.
    pub fn has_rows(&self, id: &[u8; 16]) -> Result<bool> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM files WHERE id = ?1) OR EXISTS(SELECT 1 FROM extents WHERE file_id = ?1)",
            [&id[..]],
            |r| r.get::<_, bool>(0),
        )
        .map_err(|e| self.err(e))
    }

    pub fn load(&self, id: &[u8; 16]) -> Result<Option<(FileRecord, Vec<ExtentRecord>)>> {
        let conn = self.read_lock();
        let err = |e| self.err(e);
        // One cached statement, one read transaction: every open of a file not kept loaded
        // comes here (parsing the queries each time was a tenth of an open's work, and a
        // second query its own transaction). The record comes on every row; a file with no
        // extent has one row whose extent columns are NULL.
        let mut stmt = conn.prepare_cached(LOAD).map_err(err)?;
        let mut rows = stmt.query([&id[..]]).map_err(err)?;
        let (mut rec, mut extents) = (None, Vec::new());
        while let Some(r) = rows.next().map_err(err)? {
            if rec.is_none() {
                let (size, cipher, mac) = (r.get::<_, i64>(0), r.get(1), r.get(2));
                rec = Some(FileRecord {
                    size: size.map_err(err)? as u64,
                    cipher: cipher.map_err(err)?,
                    mac: mac.map_err(err)?,
                });
            }
            let Some(index) = r.get::<_, Option<i64>>(3).map_err(err)? else { continue };
            let index = index as u64;
            let kek: Vec<u8> = r.get(4).map_err(err)?;
            let kek_id = <[u8; 16]>::try_from(kek.as_slice())
                .map_err(|_| Error::corrupt(&self.path, format!("extent {index} has a malformed KEK id")))?;
            extents.push(ExtentRecord {
                index,
                kek_id,
                wrapped: r.get(5).map_err(err)?,
                written: r.get(6).map_err(err)?,
            });
        }
        Ok(rec.map(|rec| (rec, extents)))
    }

    /// The full encrypted name behind a hashed long name.
    pub fn long_name(&self, dir: &[u8; 16], hash: &[u8]) -> Result<Option<Vec<u8>>> {
        self.warmer.warm(); // a row at random, as a size not cached (see `file_size`)
        self.read_lock()
            .prepare_cached("SELECT name FROM long_names WHERE dir_id = ?1 AND hash = ?2")
            .and_then(|mut s| s.query_row(params![&dir[..], hash], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// A volume-level value (see `meta` keys in FORMAT.md).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.lock()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` extents after `after` in key order (file id, then index; `None`: from
    /// the first) whose DEK is wrapped neither under `kek_id` nor under `except` (the scratch
    /// key, whose DEKs a KEK rotation leaves alone). A caller that walks on from the last row
    /// returned reads each row once; starting from the first every time made a rotation
    /// quadratic in its DEKs.
    pub fn extents_not_under(
        &self,
        kek_id: &[u8; 16],
        except: Option<&[u8; 16]>,
        after: Option<(&[u8; 16], u64)>,
        limit: usize,
    ) -> Result<Vec<WrappedDek>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(EXTENTS_NOT_UNDER).map_err(|e| self.err(e))?;
        // Every file id is 16 bytes, so after the empty blob is from the first.
        let (after_file, after_index): (&[u8], i64) = match after {
            Some((f, i)) => (&f[..], i64::try_from(i).unwrap_or(i64::MAX)),
            None => (&[], -1),
        };
        let except = except.unwrap_or(kek_id);
        let rows = stmt
            .query_map(params![&kek_id[..], &except[..], limit as i64, after_file, after_index], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, Vec<u8>>(2)?, r.get(3)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (f, i, k, w) = row.map_err(|e| self.err(e))?;
            let (Ok(f), Ok(k)) = (<[u8; 16]>::try_from(f.as_slice()), <[u8; 16]>::try_from(k.as_slice())) else {
                return Err(Error::corrupt(&self.path, "malformed file or KEK id in extents"));
            };
            out.push(WrappedDek { file: f, index: i, kek_id: k, wrapped: w });
        }
        Ok(out)
    }

    /// Whether any extent's DEK is wrapped under `kek_id`.
    pub fn has_extents_under(&self, kek_id: &[u8; 16]) -> Result<bool> {
        self.lock()
            .query_row("SELECT EXISTS(SELECT 1 FROM extents WHERE kek_id = ?1)", [&kek_id[..]], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The encrypted value of extended attribute `name` (encrypted) of `object`.
    pub fn xattr(&self, object: &[u8; 16], name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.lock()
            .prepare_cached("SELECT value FROM xattrs WHERE object_id = ?1 AND name = ?2")
            .and_then(|mut s| s.query_row(params![&object[..], name], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Every (encrypted name, encrypted value) row of `object`, in name order.
    pub fn xattrs_of(&self, object: &[u8; 16]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let conn = self.read_lock();
        let mut stmt = conn
            .prepare_cached("SELECT name, value FROM xattrs WHERE object_id = ?1 ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([&object[..]], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }

    /// The ids of every object with extended-attribute rows.
    pub fn xattr_objects(&self) -> Result<Vec<[u8; 16]>> {
        self.ids("SELECT DISTINCT object_id FROM xattrs", "an xattr row has a malformed object id")
    }

    /// The 16-byte ids `sql` selects (`bad`: the error for one of another length).
    fn ids(&self, sql: &str, bad: &str) -> Result<Vec<[u8; 16]>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let id = row.map_err(|e| self.err(e))?;
            out.push(id.try_into().map_err(|_| Error::corrupt(&self.path, bad))?);
        }
        Ok(out)
    }

    /// The encrypted names of every extended attribute of `object`.
    pub fn xattr_names(&self, object: &[u8; 16]) -> Result<Vec<Vec<u8>>> {
        let conn = self.read_lock();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM xattrs WHERE object_id = ?1 ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([&object[..]], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<Vec<u8>>>>().map_err(|e| self.err(e))
    }

    /// Applies `changes` in one durable transaction.
    pub fn apply(&self, changes: &[Change<'_>]) -> Result<()> {
        self.apply_as(changes, true)
    }

    /// Applies `changes` in one transaction that is atomic and ordered but not yet durable
    /// (`synchronous=NORMAL` for it: no WAL fsync): the next durable commit makes it durable
    /// with itself, and a crash before then loses it whole. Only for changes that recovery
    /// after an unclean shutdown can make again from what the backing tree holds (the
    /// `links` rows of new names, `fs::links`).
    pub fn apply_lazy(&self, changes: &[Change<'_>]) -> Result<()> {
        self.apply_as(changes, false)
    }

    fn apply_as(&self, changes: &[Change<'_>], durable: bool) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.writable()?;
        let err = |e| self.err(e);
        let mut conn = Synchronous::set(self.lock(), durable).map_err(err)?;
        let tx = conn.transaction().map_err(err)?;
        let mut set_delta = [0u8; 16];
        let hook_slot = self.file_set.lock().unwrap_or_else(|p| p.into_inner());
        let hook = hook_slot.as_ref();
        // The MAC of file `id`'s record (empty if it has none), if it has a record.
        let record_mac = |id: &[u8; 16]| {
            tx.prepare_cached("SELECT mac FROM files WHERE id = ?1").and_then(|mut s| {
                s.query_row([&id[..]], |r| r.get::<_, Option<Vec<u8>>>(0))
                    .optional()
                    .map(|m| m.map(Option::unwrap_or_default))
            })
        };
        for c in changes {
            // A record added, deleted or (versioned) changed moves the set by its marks.
            if let Some(h) = hook {
                let mut flip = |id: &[u8; 16], mac: &[u8]| {
                    set_delta.iter_mut().zip((h.fns.mark)(id, mac)).for_each(|(d, m)| *d ^= m)
                };
                match *c {
                    Change::PutFile { id, mac, .. } => {
                        if let Some(old) = record_mac(id).map_err(err)? {
                            flip(id, &old);
                        }
                        flip(id, mac);
                    }
                    Change::DeleteFile { id } => {
                        if let Some(old) = record_mac(id).map_err(err)? {
                            flip(id, &old);
                        }
                    }
                    Change::ResealFile { id, old, mac } if record_mac(id).map_err(err)?.is_some_and(|m| m == old) => {
                        flip(id, old);
                        flip(id, mac);
                    }
                    _ => {}
                }
            }
            match *c {
                Change::PutFile { id, size, cipher, mac } => tx
                    .prepare_cached("INSERT OR REPLACE INTO files (id, size, cipher, mac) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut s| s.execute(params![&id[..], size as i64, cipher, &mac[..]])),
                Change::PutExtent { file, index, kek_id, wrapped, written } => tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO extents (file_id, idx, kek_id, wrapped, written) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| s.execute(params![&file[..], index as i64, &kek_id[..], wrapped, written])),
                Change::DropExtentsFrom { file, first } => tx
                    .prepare_cached("DELETE FROM extents WHERE file_id = ?1 AND idx >= ?2")
                    .and_then(|mut s| s.execute(params![&file[..], first as i64])),
                Change::DeleteFile { id } => tx
                    .execute("DELETE FROM extents WHERE file_id = ?1", [&id[..]])
                    .and_then(|_| tx.execute("DELETE FROM xattrs WHERE object_id = ?1", [&id[..]]))
                    .and_then(|_| tx.execute("DELETE FROM links WHERE object_id = ?1", [&id[..]]))
                    .and_then(|_| tx.execute("DELETE FROM files WHERE id = ?1", [&id[..]])),
                Change::PutXattr { object, name, value } => tx.execute(
                    "INSERT OR REPLACE INTO xattrs (object_id, name, value) VALUES (?1, ?2, ?3)",
                    params![&object[..], name, value],
                ),
                Change::DeleteXattr { object, name } => {
                    tx.execute("DELETE FROM xattrs WHERE object_id = ?1 AND name = ?2", params![&object[..], name])
                }
                Change::PutMeta { key, value } => {
                    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![key, value])
                }
                Change::DeleteMeta { key } => tx.execute("DELETE FROM meta WHERE key = ?1", [key]),
                Change::RewrapExtent { file, index, old, kek_id, wrapped } => tx
                    .prepare_cached(
                        "UPDATE extents SET kek_id = ?3, wrapped = ?4 WHERE file_id = ?1 AND idx = ?2 AND wrapped = ?5",
                    )
                    .and_then(|mut s| s.execute(params![&file[..], index as i64, &kek_id[..], wrapped, old])),
                Change::PutLink { object, tag } => tx
                    .prepare_cached("INSERT OR REPLACE INTO links (object_id, tag) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![&object[..], &tag[..]])),
                Change::DeleteLink { object, tag } => tx
                    .prepare_cached("DELETE FROM links WHERE object_id = ?1 AND tag = ?2")
                    .and_then(|mut s| s.execute(params![&object[..], &tag[..]])),
                Change::ResealFile { id, old, mac } => tx
                    .prepare_cached("UPDATE files SET mac = ?3 WHERE id = ?1 AND mac = ?2")
                    .and_then(|mut s| s.execute(params![&id[..], old, &mac[..]])),
                Change::DeleteXattrs { object } => tx.execute("DELETE FROM xattrs WHERE object_id = ?1", [&object[..]]),
                Change::PutLongName { dir, hash, name } => tx.execute(
                    "INSERT OR REPLACE INTO long_names (dir_id, hash, name) VALUES (?1, ?2, ?3)",
                    params![&dir[..], hash, name],
                ),
                Change::DeleteLongName { dir, hash } => {
                    tx.execute("DELETE FROM long_names WHERE dir_id = ?1 AND hash = ?2", params![&dir[..], hash])
                }
            }
            .map_err(err)?;
        }
        let mut next_digest = None;
        if let (Some(h), true) = (hook, set_delta != [0; 16]) {
            let (now, changes) = *h.state.lock().unwrap_or_else(|p| p.into_inner());
            let next: [u8; 16] = std::array::from_fn(|i| now[i] ^ set_delta[i]);
            let changes = changes + u64::from(h.fns.versioned);
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![h.key, h.fns.value(&next, changes)],
            )
            .map_err(err)?;
            next_digest = Some((h, (next, changes)));
        }
        // A lazy commit is no sync point: nothing of it is promised to survive a power cut.
        if let (Some(hook), true) = (self.before_commit.get(), durable) {
            hook().map_err(|e| Error::io(&self.path, "commit", e))?;
        }
        match tx.commit() {
            Ok(()) => {
                if let Some((h, next)) = next_digest {
                    *h.state.lock().unwrap_or_else(|p| p.into_inner()) = next;
                    if let Some(told) = &h.committed {
                        told(next.1);
                    }
                }
                self.sizes.committed(changes.iter().filter_map(|c| match *c {
                    Change::PutFile { id, size, .. } => Some(SizeChange::Set(id, size)),
                    Change::DeleteFile { id } => Some(SizeChange::Gone(id)),
                    _ => None,
                }));
                Ok(())
            }
            Err(e) => {
                self.sizes.clear(); // committed or not: read sizes afresh
                Err(err(e))
            }
        }
    }

    /// Asks the kernel to keep this store's database file in the page cache (rate-limited;
    /// see [`warm`]): called where many rows are about to be read, one per file.
    pub fn warm(&self) {
        self.warmer.warm();
    }

    /// The id of every file with a record (for `fsck`).
    pub fn file_ids(&self) -> Result<Vec<[u8; 16]>> {
        self.ids("SELECT id FROM files", "a file record has a malformed id")
    }

    /// The id and MAC (empty if none) of every file record.
    pub fn file_macs(&self) -> Result<Vec<([u8; 16], Vec<u8>)>> {
        let conn = self.lock();
        let err = |e| self.err(e);
        let mut stmt = conn.prepare("SELECT id, mac FROM files").map_err(err)?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))).map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, mac) = row.map_err(err)?;
            let id = id.try_into().map_err(|_| Error::corrupt(&self.path, "a file record has a malformed id"))?;
            out.push((id, mac.unwrap_or_default()));
        }
        Ok(out)
    }

    /// (files, extents) recorded.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let conn = self.lock();
        let count =
            |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(|e| self.err(e));
        Ok((count("SELECT count(*) FROM files")?, count("SELECT count(*) FROM extents")?))
    }

    /// Rebuilds the database into fresh pages and empties the WAL. `secure_delete` zeroes
    /// deleted cells, but an UPDATE can leave a stale copy of the old cell in a page's
    /// unallocated gap; after re-wrapping every DEK, this makes sure no old wrapped DEK or KEK
    /// id survives in the file.
    pub fn compact(&self) -> Result<()> {
        self.writable()?;
        self.lock().execute_batch("VACUUM").map_err(|e| self.err(e))?;
        self.checkpoint()
    }

    /// Moves the WAL's contents into the database file and truncates the WAL; an error if
    /// SQLite could not finish (a reader held the WAL), so nothing is claimed that was not done.
    pub fn checkpoint(&self) -> Result<()> {
        let busy: i64 =
            self.lock().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        if busy != 0 {
            return Err(Error::Store {
                path: self.path.clone(),
                reason: "the write-ahead log could not be checkpointed and truncated (a reader holds it); try again"
                    .into(),
            });
        }
        Ok(())
    }

    /// The read-only connection (opened on first use), or the writer if it cannot be opened.
    fn read_lock(&self) -> MutexGuard<'_, Connection> {
        let reader = self.reader.get_or_init(|| {
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .ok()
                .map(|c| {
                    c.set_prepared_statement_cache_capacity(STATEMENTS);
                    Mutex::new(c)
                })
        });
        match reader {
            Some(r) => r.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.lock(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolls the transaction back when it is dropped; the
        // connection itself stays consistent, so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An error once writes are refused (`refuse_writes`).
    fn writable(&self) -> Result<()> {
        match self.refused.get() {
            Some(why) => Err(Error::Revoked { path: self.path.clone(), reason: why.clone() }),
            None => Ok(()),
        }
    }

    /// From now on every write is refused with `why` (the keys that would seal its records
    /// are gone: `Volume::go_dark`), and the file-set hook (a key derived from the name key)
    /// is dropped.
    pub fn refuse_writes(&self, why: &str) {
        let _ = self.refused.set(why.to_string());
        self.file_set.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        // A full or read-only backing file system is the caller's ENOSPC/EROFS, not corruption.
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            let errno = match f.code {
                rusqlite::ErrorCode::DiskFull => Some(28),
                rusqlite::ErrorCode::ReadOnly => Some(30),
                _ => None,
            };
            if let Some(n) = errno {
                return Error::io(&self.path, "metadata store", std::io::Error::from_raw_os_error(n));
            }
        }
        Error::Store { path: self.path.clone(), reason: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_commit_is_seen_at_once_and_leaves_the_connection_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let s = Store::create(&path).unwrap();
        s.apply_lazy(&[Change::PutLink { object: &[1; 16], tag: &[2; 16] }]).unwrap();
        assert!(s.has_link(&[1; 16], &[2; 16]).unwrap());
        let level: i64 = s.lock().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(level, 2, "FULL again for the commits after it");
        s.apply(&[Change::PutLink { object: &[1; 16], tag: &[3; 16] }]).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert!(s.has_link(&[1; 16], &[2; 16]).unwrap() && s.has_link(&[1; 16], &[3; 16]).unwrap());
    }

    #[test]
    fn apply_load_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let s = Store::create(&path).unwrap();
        let id = [9u8; 16];
        s.apply(&[
            Change::PutFile { id: &id, size: 5000, cipher: 1, mac: &[0; 16] },
            Change::PutExtent { file: &id, index: 0, kek_id: &[1; 16], wrapped: &[2; 60], written: &[3; 32] },
            Change::PutExtent { file: &id, index: 1, kek_id: &[1; 16], wrapped: &[4; 60], written: &[5; 32] },
        ])
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        let (rec, ext) = s.load(&id).unwrap().unwrap();
        assert_eq!(rec.size, 5000);
        assert_eq!(ext.len(), 2);
        assert_eq!(ext[1].wrapped, vec![4; 60]);
        s.apply(&[Change::DropExtentsFrom { file: &id, first: 1 }]).unwrap();
        assert_eq!(s.load(&id).unwrap().unwrap().1.len(), 1);
        s.apply(&[Change::DeleteFile { id: &id }]).unwrap();
        assert!(s.load(&id).unwrap().is_none());
        assert_eq!(s.counts().unwrap(), (0, 0));
    }

    #[test]
    fn load_is_one_search_of_each_primary_key_in_extent_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("meta.db")).unwrap();
        let (a, b, bare) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        s.apply(&[
            Change::PutFile { id: &a, size: 9000, cipher: 1, mac: &[7; 16] },
            Change::PutFile { id: &b, size: 1, cipher: 1, mac: &[8; 16] },
            Change::PutFile { id: &bare, size: 0, cipher: 2, mac: &[9; 16] },
            Change::PutExtent { file: &a, index: 2, kek_id: &[1; 16], wrapped: &[2; 60], written: &[3; 32] },
            Change::PutExtent { file: &b, index: 1, kek_id: &[1; 16], wrapped: &[5; 60], written: &[5; 32] },
            Change::PutExtent { file: &a, index: 0, kek_id: &[1; 16], wrapped: &[4; 60], written: &[6; 32] },
        ])
        .unwrap();
        let (rec, ext) = s.load(&a).unwrap().unwrap();
        assert_eq!((rec.size, rec.cipher, rec.mac), (9000, 1, Some(vec![7; 16])));
        let got: Vec<_> = ext.iter().map(|e| (e.index, e.wrapped[0], e.written[0])).collect();
        assert_eq!(got, [(0, 4, 6), (2, 2, 3)], "in index order, only this file's");
        let (rec, ext) = s.load(&bare).unwrap().unwrap();
        assert_eq!((rec.size, rec.cipher, ext.len()), (0, 2, 0), "a record with no extent");
        assert!(s.load(&[4; 16]).unwrap().is_none());
        let plan: Vec<String> = {
            let conn = s.lock();
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {LOAD}")).unwrap();
            let rows = st.query_map([&a[..]], |r| r.get(3)).unwrap();
            rows.map(|r| r.unwrap()).collect()
        };
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan.iter().all(|p| p.starts_with("SEARCH") && p.contains("PRIMARY KEY")), "{plan:?}");
    }

    #[test]
    fn extents_not_under_walks_on_from_a_key_and_reads_each_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("meta.db")).unwrap();
        let (old, new, scratch) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let files = [[7u8; 16], [5u8; 16], [6u8; 16]];
        let mut changes = Vec::new();
        for f in &files {
            for index in 0..3 {
                // File 6's extent 1 is under the new KEK already, file 7's extent 2 scratch.
                let kek = match (f[0], index) {
                    (6, 1) => &new,
                    (7, 2) => &scratch,
                    _ => &old,
                };
                changes.push(Change::PutExtent { file: f, index, kek_id: kek, wrapped: &[9; 60], written: &[0; 32] });
            }
        }
        s.apply(&changes).unwrap();
        let keys = |v: Vec<WrappedDek>| v.into_iter().map(|d| (d.file[0], d.index)).collect::<Vec<_>>();
        let first = keys(s.extents_not_under(&new, Some(&scratch), None, 3).unwrap());
        assert_eq!(first, [(5, 0), (5, 1), (5, 2)], "key order, from the first");
        let next = keys(s.extents_not_under(&new, Some(&scratch), Some((&[5; 16], 2)), 3).unwrap());
        assert_eq!(next, [(6, 0), (6, 2), (7, 0)], "on from the key, skipping the new KEK's");
        let last = keys(s.extents_not_under(&new, Some(&scratch), Some((&[7; 16], 0)), 3).unwrap());
        assert_eq!(last, [(7, 1)], "the scratch key's DEK is left alone");
        assert!(s.extents_not_under(&new, Some(&scratch), Some((&[7; 16], 1)), 3).unwrap().is_empty());
        // The walk is a range of the primary key, not a scan of the table for each batch.
        let plan: String = s
            .lock()
            .query_row(
                &format!("EXPLAIN QUERY PLAN {EXTENTS_NOT_UNDER}"),
                params![&new[..], &scratch[..], 5, &[5u8; 16][..], 2],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("SEARCH extents USING PRIMARY KEY"), "{plan}");
    }

    #[test]
    fn garbage_and_foreign_databases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x42; 8192]).unwrap();
        assert!(matches!(Store::open(&junk), Err(Error::Store { .. }) | Err(Error::Corrupt { .. })));
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(matches!(Store::open(&foreign), Err(Error::Corrupt { .. })));
        assert!(matches!(Store::open(&dir.path().join("missing.db")), Err(Error::Corrupt { .. })));
    }
}
