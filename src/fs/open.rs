//! Making and opening a volume: `init` (keys, store, data directory, and the header last, so
//! its presence marks a complete volume), reading the header, and `open` (unlocking the keys
//! through the KMS, the store, the storage seam, the upgrade of older volumes to record MACs).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::commit::Committer;
use super::names;
use super::volume::{
    kek_since, unix_now, Core, InitOptions, Volume, VolumeInfo, DATA_DIR, HEADER_FILE, KEK_SINCE, ROOT_OWNED,
    STORE_FILE,
};
use crate::crypto::random_array;
use crate::durable;
use crate::format::{Layout, VolumeHeader};
use crate::keys::KeyRing;
use crate::kms::{self, Kms};
use crate::secret::Secrets;
use crate::store::{Change, Store};
use crate::{Error, Result};

const DEFAULT_KMS: &str = "local:keystore";

/// The header feature bit of `opts.format` (checked before anything is created).
fn format_feature(opts: &InitOptions) -> Result<u32> {
    use crate::format::CipherKind::{Aes256GcmSiv, Aes256Xts};
    match (opts.cipher, opts.format) {
        (Aes256GcmSiv, None | Some(2)) => Ok(crate::format::FEATURE_PAGES),
        (_, None | Some(1)) => Ok(0),
        (Aes256Xts, Some(2)) => Err(Error::InvalidArgument(
            "format 2 needs aes-256-gcm-siv: aes-256-xts is length-preserving and keeps no tag".into(),
        )),
        (_, Some(f)) => Err(Error::InvalidArgument(format!("unknown format {f}: use 1 or 2"))),
    }
}

impl Volume {
    /// Creates a new volume in `cipherdir` (missing or empty).
    pub fn init(cipherdir: &Path, opts: &InitOptions, secrets: &dyn Secrets) -> Result<VolumeHeader> {
        if !VolumeHeader::valid_extent_shift(opts.extent_shift) {
            return Err(Error::InvalidArgument("extent size must be a power of two from 4K to 16M".into()));
        }
        format_feature(opts)?;
        let created_dir = match fs::read_dir(cipherdir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::NotEmpty(cipherdir.to_path_buf()));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(cipherdir)
                    .map_err(|e| Error::io(cipherdir, "create directory", e))?;
                true
            }
            Err(e) => return Err(Error::io(cipherdir, "read directory", e)),
        };
        let result = Self::init_in(cipherdir, opts, secrets);
        if result.is_err() {
            // Leave nothing half-made behind: the directory was empty (or absent) before.
            let _ = if created_dir { fs::remove_dir_all(cipherdir) } else { empty_dir(cipherdir) };
        }
        result
    }

    fn init_in(cipherdir: &Path, opts: &InitOptions, secrets: &dyn Secrets) -> Result<VolumeHeader> {
        let uri = opts.kms_uri.clone().unwrap_or_else(|| DEFAULT_KMS.to_string());
        let kms = kms::create(&uri, cipherdir, secrets, opts.kdf, opts.create_key)?;
        let mut header = VolumeHeader {
            features: crate::format::FEATURE_RECORD_MACS
                | crate::format::FEATURE_ROOT_BOUND
                | crate::format::FEATURE_RECORDS_SEALED
                | crate::format::FEATURE_FILES_RECORDED
                | crate::format::FEATURE_ENTRIES_BOUND
                | crate::format::FEATURE_XATTRS_SEALED
                | crate::format::FEATURE_FILE_SET
                | crate::format::FEATURE_KEK_GENERATION
                | crate::format::FEATURE_LINKS_BOUND
                | crate::format::FEATURE_ROOT_OWNED_SEALED
                | format_feature(opts)?,
            volume_id: random_array(),
            cipher: opts.cipher,
            extent_shift: opts.extent_shift,
            kek_id: [0; 16],
            kek_generation: 1,
            kms_uri: kms.uri().to_string(),
            wrapped_kek: Vec::new(),
            wrapped_name_key: Vec::new(),
        };
        let created = (opts.create_key && !uri.starts_with("local:")).then(|| header.kms_uri.clone());
        let result = Self::init_rest(cipherdir, &kms, &mut header, created.as_deref());
        if let (Err(_), Some(_)) = (&result, &created) {
            // Do not leave an orphan root key behind in the HSM or KMS.
            let _ = kms.destroy_root(Some(7));
        }
        result?;
        Ok(header)
    }

    /// Everything after the root: keys, store (recording a root made for this volume), the
    /// data directory and, last, the header.
    fn init_rest(cipherdir: &Path, kms: &dyn Kms, header: &mut VolumeHeader, created: Option<&str>) -> Result<()> {
        let keys = KeyRing::generate(kms, header)?;
        let store = Store::create(&cipherdir.join(STORE_FILE))?;
        // The KEK's age, and the set of files, empty (see `fs::file_set`): one commit.
        let versioned = header.features & crate::format::FEATURE_PAGES != 0;
        let empty_set = keys.file_set().fns(versioned).value(&[0; 16], 0);
        store.apply(&[
            Change::PutMeta { key: KEK_SINCE, value: &unix_now().to_le_bytes() },
            Change::PutMeta { key: super::file_set::FILE_SET, value: &empty_set },
        ])?;
        if let Some(uri) = created {
            let sealed = super::records::seal_with(&keys, ROOT_OWNED, uri.as_bytes(), false);
            store.apply(&[Change::PutMeta { key: ROOT_OWNED, value: &sealed }])?;
        }
        drop(store);
        let data = cipherdir.join(DATA_DIR);
        fs::DirBuilder::new().mode(0o700).create(&data).map_err(|e| Error::io(&data, "create directory", e))?;
        let root = super::binding::bound_header_with(
            &keys,
            crate::format::ObjectKind::Directory,
            random_array(),
            &super::binding::Entry::root(),
        );
        names::write_dir_id(&data, &root)?;
        durable::sync_dir(&data)?;
        durable::replace_file(&cipherdir.join(HEADER_FILE), &header.encode(), 0o600)
    }

    /// Reads the volume header of `cipherdir` (no secret needed).
    pub fn read_header(cipherdir: &Path) -> Result<VolumeHeader> {
        let path = cipherdir.join(HEADER_FILE);
        if !cipherdir.is_dir() {
            return Err(Error::NotAVolume { path: cipherdir.into(), reason: "no such directory".into() });
        }
        // Never through a planted symlink, never a FIFO; a header is well under 64 KiB.
        let bytes = crate::confine::read_file(&path, 64 * 1024).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::NotAVolume { path: cipherdir.into(), reason: format!("{HEADER_FILE} is missing") }
            }
            other => other,
        })?;
        VolumeHeader::decode(&bytes).map_err(|e| e.at(&path))
    }

    /// The volume header, refusing a shredded volume.
    pub fn read_live_header(cipherdir: &Path) -> Result<VolumeHeader> {
        let header = Self::read_header(cipherdir)?;
        if header.is_shredded() {
            return Err(Error::Shredded(cipherdir.to_path_buf()));
        }
        Ok(header)
    }

    /// Header and store counts of an unmounted volume.
    pub fn info(cipherdir: &Path) -> Result<VolumeInfo> {
        let header = Self::read_header(cipherdir)?;
        let store = Store::open(&cipherdir.join(STORE_FILE))?;
        let (files, extents) = store.counts()?;
        let sealed = header.features & crate::format::FEATURE_RECORDS_SEALED != 0;
        let scratch = super::scratch::recorded(&store, sealed)?;
        Ok(VolumeInfo { header, files, extents, kek_since: kek_since(&store)?, scratch })
    }

    /// Opens `cipherdir`, asking `secrets` for what its KMS needs.
    pub fn open(cipherdir: &Path, secrets: &dyn Secrets) -> Result<Volume> {
        let header = Self::read_live_header(cipherdir)?;
        let kms = kms::open(&header.kms_uri, cipherdir, secrets)?;
        Self::open_with_kms(cipherdir, header.clone(), &kms).map_err(|e| match e {
            Error::Integrity { path, reason } if Self::root_rotation_interrupted(cipherdir, &header) => {
                Error::Integrity {
                    path,
                    reason: format!("{reason}; a root rotation was interrupted: run `envelopefs rotate --root` again"),
                }
            }
            e => e,
        })
    }

    fn root_rotation_interrupted(cipherdir: &Path, header: &VolumeHeader) -> bool {
        kms::local_keystore_path(&header.kms_uri, cipherdir).is_ok_and(|ks| super::root::next_keystore(&ks).exists())
    }

    /// Opens `cipherdir` with an already-connected KMS.
    pub fn open_with_kms(cipherdir: &Path, header: VolumeHeader, kms: &dyn Kms) -> Result<Volume> {
        Self::open_with_storage(cipherdir, header, kms, Arc::new(super::OsStorage))
    }

    /// Opens `cipherdir` with data files and sync points from `storage` (the seam the
    /// power-cut tests use; [`super::OsStorage`] is the real thing).
    pub fn open_with_storage(
        cipherdir: &Path,
        header: VolumeHeader,
        kms: &dyn Kms,
        storage: Arc<dyn super::Storage>,
    ) -> Result<Volume> {
        if header.is_shredded() {
            return Err(Error::Shredded(cipherdir.to_path_buf()));
        }
        // A header older than this host has seen (a KEK that was replaced) is not accepted.
        crate::anchor::check(&header, &cipherdir.join(HEADER_FILE))?;
        // And older than its root's anchor (an HSM token's), on any host.
        let root_anchor = crate::anchor::RootAnchor::read(kms, &header.volume_id)?;
        root_anchor.check_generation(&header, &cipherdir.join(HEADER_FILE))?;
        let keys = KeyRing::unlock(kms, &header, &cipherdir.join(HEADER_FILE))?;
        let store = Store::open(&cipherdir.join(STORE_FILE))?;
        let hook = storage.clone();
        store.set_before_commit(Box::new(move || hook.sync_point(super::SyncPoint::StoreCommit)));
        let header = match header.features & crate::format::FEATURE_RECORD_MACS {
            0 => Self::upgrade_record_macs(cipherdir, header, &keys, &store)?,
            _ => header,
        };
        let header = match header.features & crate::format::FEATURE_ROOT_BOUND {
            0 => match Self::bind_root(cipherdir, header.clone(), &keys) {
                Ok(h) => h,
                // Read-only backing storage: the upgrade waits for a writable open.
                Err(e @ Error::Io { .. }) => {
                    tracing::warn!("binding the root into the header must wait: {e}");
                    header
                }
                Err(e) => return Err(e),
            },
            _ => header,
        };
        let data_dir = cipherdir.join(DATA_DIR);
        let trash = super::trash::Trash::new(cipherdir);
        let tree = super::tree::Tree::open(&data_dir)?;
        let root_id = names::read_dir_id(&tree, &data_dir)?;
        let slot = header.cipher.slot_size();
        let core = Core {
            open_ahead: Default::default(),
            walk_ahead: Default::default(),
            in_memory: crate::confine::in_memory(&data_dir),
            keys,
            store,
            layout: Layout::new(slot, header.extent_shift),
            cipher_code: header.cipher.code(),
            data_dir,
            root_id,
            open: Mutex::new(HashMap::new()),
            lingering: Default::default(),
            scratch_dirs: Default::default(),
            committer: Committer::new(),
            storage,
            trash,
            tree,
            files_recorded: (header.features & crate::format::FEATURE_FILES_RECORDED != 0).into(),
            entries_bound: (header.features & crate::format::FEATURE_ENTRIES_BOUND != 0).into(),
            links_bound: (header.features & crate::format::FEATURE_LINKS_BOUND != 0).into(),
            pages: (header.features & crate::format::FEATURE_PAGES != 0
                && header.cipher == crate::format::CipherKind::Aes256GcmSiv)
                .into(),
            in_flight: Default::default(),
            xattr_lock: Default::default(),
        };
        let core = Arc::new(core);
        Committer::start(&core);
        let vol = Volume {
            core,
            dir_ids: Default::default(),
            encoded_names: Default::default(),
            tenant_dirs: Default::default(),
            file_ids: Default::default(),
            file_set_problem: Default::default(),
            cipherdir: cipherdir.to_path_buf(),
            header: header.into(),
            mount_marker: Default::default(),
            files_checked: Default::default(),
            inode_aliases: Default::default(),
            quiet: Default::default(),
            halted: Default::default(),
            dark: Default::default(),
            finished_rotation: Default::default(),
            rotation_left: Default::default(),
            names_generation: Default::default(),
            root_anchor,
        };
        if vol.names_moving()? {
            // A rotation was cut short while names were moving: half the tree is under each
            // name key. Nothing reads it before the rotation is finished.
            tracing::warn!("a `rotate --kek` was cut short while names were moving: finishing it");
            // The set of files is kept while the rotation re-seals record MACs (a versioned
            // set's marks cover them), as it was when the rotation was cut.
            if vol.header().features & crate::format::FEATURE_FILE_SET != 0 {
                vol.watch_file_set_before_rotation()?;
            }
            vol.resume_pending_rotation(kms)?;
            vol.rotate_kek(kms, &mut |_, _, _| {}).map_err(|e| match e {
                Error::Io { path, source, .. } => {
                    Error::Io { path, op: "finish an interrupted `rotate --kek` (needs writable storage)", source }
                }
                other => other,
            })?;
            vol.finished_rotation.store(true, std::sync::atomic::Ordering::Release);
        }
        if vol.header().features & crate::format::FEATURE_RECORDS_SEALED == 0 {
            vol.seal_records_upgrade()?;
        }
        // A bare `root.owned` (a volume made before bit 12) is never sealed now: nothing tells
        // it from a planted one, so its root is not destroyed by a shred or a root rotation
        // (the operator destroys it in the HSM or KMS).
        if vol.header().features & crate::format::FEATURE_ROOT_OWNED_SEALED == 0 {
            vol.upgrade(crate::format::FEATURE_ROOT_OWNED_SEALED, "root.owned records are sealed from now on", || {
                Ok(())
            })?;
        }
        if vol.header().features & crate::format::FEATURE_FILES_RECORDED == 0 {
            vol.record_files_upgrade()?;
        }
        if vol.header().features & crate::format::FEATURE_ENTRIES_BOUND == 0 {
            vol.bind_entries_upgrade()?;
        }
        // Attribute sets are sealed only once every header can carry their flag.
        if vol.header().features & crate::format::FEATURE_XATTRS_SEALED == 0 && vol.entries_bound() {
            vol.seal_xattrs_upgrade()?;
        }
        if vol.header().features & crate::format::FEATURE_FILE_SET == 0 && vol.xattrs_sealed() {
            vol.file_set_upgrade()?;
        }
        if vol.header().features & crate::format::FEATURE_FILE_SET != 0 {
            vol.watch_file_set()?;
        }
        if vol.header().features & crate::format::FEATURE_LINKS_BOUND == 0 && vol.entries_bound() {
            vol.links_upgrade()?;
        }
        vol.dir_id(&vol.core.data_dir)?; // the root directory's binding
        vol.resume_pending_rotation(kms)?;
        vol.anchor_generation(kms);
        Ok(vol)
    }

    /// A volume made before record MACs: gives every record its MAC (one transaction), then
    /// sets the header's feature bit, from which on a record without one is refused. A crash
    /// in between only repeats the first step.
    fn upgrade_record_macs(
        cipherdir: &Path,
        header: VolumeHeader,
        keys: &KeyRing,
        store: &Store,
    ) -> Result<VolumeHeader> {
        let _lock = durable::lock_header(cipherdir)?;
        let mut records = Vec::new();
        for id in store.file_ids()? {
            if let Some((rec, extents)) = store.load(&id)? {
                let mac = super::file::record_mac_with(
                    &keys.names(),
                    rec.cipher,
                    &id,
                    rec.size,
                    extents.iter().map(|e| (e.index, &e.written[..])),
                );
                records.push((id, rec, mac));
            }
        }
        let changes: Vec<Change<'_>> = records
            .iter()
            .map(|(id, rec, mac)| Change::PutFile { id, size: rec.size, cipher: rec.cipher, mac })
            .collect();
        store.apply(&changes)?;
        let header = with_feature(cipherdir, header, keys, crate::format::FEATURE_RECORD_MACS)?;
        tracing::info!(records = records.len(), "file records now carry MACs (volume feature record-macs)");
        Ok(header)
    }
}

impl Volume {
    /// A volume made before sealed steering records: seals the records it has (trusted this
    /// once), then sets the feature bit (one atomic header replacement; a crash in between
    /// only repeats the first step). Read-only storage defers it.
    fn seal_records_upgrade(&self) -> Result<()> {
        self.upgrade(crate::format::FEATURE_RECORDS_SEALED, "sealing the store's records", || self.seal_bare_records())
            .map(|_| ())
    }

    /// The step every in-place upgrade of an open volume takes: under the header lock,
    /// `work` (which must be safe to repeat: a crash before the header write repeats it),
    /// then feature `bit` set in the header. Returns whether the bit is set now: read-only
    /// storage (an I/O or store error) defers the upgrade to a writable open.
    pub(super) fn upgrade(&self, bit: u32, what: &str, work: impl FnOnce() -> Result<()>) -> Result<bool> {
        let cipherdir = self.cipherdir().to_path_buf();
        let done = (|| {
            let _lock = durable::lock_header(&cipherdir)?;
            work()?;
            let header = with_feature(&cipherdir, self.header(), self.keys(), bit)?;
            self.set_header(header);
            tracing::info!("{what}: done (volume feature bit {})", bit.trailing_zeros());
            Ok(true)
        })();
        match done {
            Err(e @ Error::Io { .. }) | Err(e @ Error::Store { .. }) => {
                tracing::warn!("{what} must wait for a writable open: {e}");
                Ok(false)
            }
            other => other,
        }
    }

    /// A volume made before the root was bound into the header: re-seals the name key with
    /// the KMS URI in its binding and sets the feature bit (one atomic header replacement, so
    /// a crash leaves the old header, and the next open does it again).
    fn bind_root(cipherdir: &Path, header: VolumeHeader, keys: &KeyRing) -> Result<VolumeHeader> {
        let _lock = durable::lock_header(cipherdir)?;
        let header = with_feature(cipherdir, header, keys, crate::format::FEATURE_ROOT_BOUND)?;
        tracing::info!(root = %header.kms_uri, "the root reference is now bound into the header (volume feature root-bound)");
        Ok(header)
    }
}

/// `header` with feature `bit` set, its name key re-sealed for the binding that bit changes,
/// written in one atomic replacement (the caller holds the header lock): the step every
/// in-place upgrade of a volume ends with.
pub(super) fn with_feature(
    cipherdir: &Path,
    mut header: VolumeHeader,
    keys: &KeyRing,
    bit: u32,
) -> Result<VolumeHeader> {
    header.features |= bit;
    header.wrapped_name_key = keys
        .seal_name_key(&header)
        .map_err(|_| Error::integrity(cipherdir.join(HEADER_FILE), "the KEK changed while upgrading"))?;
    durable::replace_file(&cipherdir.join(HEADER_FILE), &header.encode(), 0o600)?;
    Ok(header)
}

/// Removes everything inside `dir` (used to undo a failed `init` in a directory that was
/// empty before).
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}
