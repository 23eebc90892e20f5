//! Open encrypted files: logical size, per-extent keys and written bits, and the data path.
//!
//! Ordering invariant (crash safety): the store never refers to data that is not durable.
//! Additions (a new extent's wrapped DEK, newly written blocks, a larger size) are kept in
//! memory and committed only after the data file has been synced (on fsync, close and
//! truncate). Removals (truncation, deletion) are committed before the data is cut. After any
//! crash, every block the store calls written decrypts under the DEK the store holds.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::backend::DataFile;
use super::blocks::{open_run, seal_run, BlockKey};
use super::volume::Core;
use crate::crypto::{fill_random, BlockAad, DataCipher, BLOCK_SIZE, GCM_SIV_NONCE};
use crate::format::{BlockTable, Layout, Placement, WrittenBits};
use crate::keys::FileId;
use crate::store::{Change, ExtentRecord, FileRecord};
use crate::{Error, Result};

const BLOCK: u64 = BLOCK_SIZE as u64;

mod convert;
mod pages;

thread_local! {
    /// Each thread's buffer for ciphertext slots being read (no allocation per request).
    static SLOTS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's buffer for ciphertext slots being written.
    static OUT_SLOTS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Seals `plain` (whole blocks from `first`) with fresh nonces and writes the slots, using
/// this thread's reusable buffer (sealing overwrites every byte written).
fn seal_and_write(
    data: &dyn DataFile,
    layout: Layout,
    keys: &[&DataCipher],
    aad: BlockAad,
    first: u64,
    plain: &[u8],
) -> std::io::Result<()> {
    let n = plain.len() / BLOCK_SIZE;
    let slot = layout.slot_size() as usize;
    let mut nonces = vec![0u8; n * GCM_SIV_NONCE];
    fill_random(&mut nonces);
    let mut slots = OUT_SLOTS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if slots.len() < n * slot {
        slots.resize(n * slot, 0);
    }
    seal_run(keys, aad, first, &nonces, plain, &mut slots[..n * slot], slot);
    let result = data.write_all_at(&slots[..n * slot], layout.slot_offset(first));
    OUT_SLOTS.with(|b| *b.borrow_mut() = slots);
    result
}

/// One extent's key material as stored: wrapped only.
#[derive(Clone)]
struct Extent {
    kek_id: [u8; 16],
    wrapped: Vec<u8>,
    blocks: Blocks,
    /// Changed since the last commit.
    dirty: bool,
}

/// Where an extent's blocks are: format 1 slots (each carrying its nonce and tag) or format 2
/// pages (`format::BlockTable`, the seals in the store row).
#[derive(Clone)]
enum Blocks {
    Slots(WrittenBits),
    Pages(BlockTable),
}

impl Blocks {
    fn written(&self) -> &WrittenBits {
        match self {
            Blocks::Slots(w) => w,
            Blocks::Pages(t) => t.written(),
        }
    }

    /// What the store row's `written` column holds.
    fn stored(&self) -> Cow<'_, [u8]> {
        match self {
            Blocks::Slots(w) => Cow::Borrowed(w.as_bytes()),
            Blocks::Pages(t) => Cow::Owned(t.to_bytes()),
        }
    }

    fn clear_from(&mut self, from: usize) {
        match self {
            Blocks::Slots(w) => w.clear_from(from),
            Blocks::Pages(t) => t.clear_from(from),
        }
    }
}

/// How much a file grows between two write-behinds.
const WRITE_BEHIND: u64 = 8 << 20;

pub(super) struct Inner {
    size: u64,
    extents: BTreeMap<u64, Extent>,
    /// Size or extent set changed since the last commit.
    meta_dirty: bool,
    /// The last link is gone; records are deleted when the last handle closes.
    unlinked: bool,
    /// The file size at which the last write-behind ended (see `write_behind`).
    written_behind: u64,
}

/// The shared state of one open file (all handles and hardlinks share it).
pub(super) struct FileState {
    pub(super) id: FileId,
    core: Arc<Core>,
    data: Box<dyn DataFile>,
    /// The plaintext path, for error messages.
    name: RwLock<PathBuf>,
    /// A scratch file: its DEKs are wrapped by the per-boot scratch key.
    scratch: bool,
    inner: RwLock<Inner>,
    /// Data written since the last data sync (set by in-place overwrites under the read lock).
    data_dirty: AtomicBool,
    /// A format-2 file, its extents placed as its record's cipher code says (3 or 4).
    pages: Option<Placement>,
    /// The block after the last one read (a code-4 file's prefetch is for sequential
    /// readers only: `pages::group_ahead`).
    read_end: AtomicU64,
}

impl FileState {
    /// Builds the state of file `id` from its store record. A file without a record is an
    /// integrity error (its rows were deleted) — except on a volume made before every file
    /// had one, where it is an empty file never flushed, unless its data file holds blocks.
    pub(super) fn load(
        core: Arc<Core>,
        id: FileId,
        data: Box<dyn DataFile>,
        name: PathBuf,
        scratch: bool,
    ) -> Result<FileState> {
        let layout = core.layout;
        let (size, extents, pages) = match core.store.load(&id)? {
            Some((FileRecord { size, mac, cipher }, recs)) => {
                let want = record_mac_with(
                    &core.keys.names(),
                    cipher,
                    &id,
                    size,
                    recs.iter().map(|r| (r.index, &r.written[..])),
                );
                if mac.as_deref() != Some(&want[..]) {
                    return Err(Error::integrity(
                        &name,
                        "its record in the metadata store does not authenticate (size, extents or written blocks altered)",
                    ));
                }
                let pages = placement_of(cipher, core.cipher_code).map_err(|code| {
                    Error::integrity(
                        &name,
                        format!(
                            "its record names cipher code {code}, which this build does not know (a newer envelopefs?)"
                        ),
                    )
                })?;
                (size, recs, pages)
            }
            None if core.files_recorded() => return Err(record_missing(&name)),
            None => {
                let len = data.size().map_err(|e| Error::io(&name, "stat data file", e))?;
                if len > layout.physical_len(0) {
                    return Err(Error::integrity(&name, "the metadata store has no record of this file's keys"));
                }
                (0, Vec::new(), None)
            }
        };
        let mut map = BTreeMap::new();
        for ExtentRecord { index, kek_id, wrapped, written } in extents {
            let bpe = layout.blocks_per_extent();
            let blocks = match pages {
                Some(p) => BlockTable::from_bytes(&written, bpe, p.stride(index, bpe)).map(Blocks::Pages),
                None => WrittenBits::from_bytes(written, bpe).map(Blocks::Slots),
            };
            let blocks = blocks.ok_or_else(|| {
                Error::corrupt(core.store.path(), format!("{}: extent {index} bitmap size", name.display()))
            })?;
            map.insert(index, Extent { kek_id, wrapped, blocks, dirty: false });
        }
        // What is there already is not growth to write behind.
        let written_behind = size;
        let inner = Inner { size, extents: map, meta_dirty: false, unlinked: false, written_behind };
        Ok(Self::with_inner(core, id, data, name, scratch, inner, pages))
    }

    fn with_inner(
        core: Arc<Core>,
        id: FileId,
        data: Box<dyn DataFile>,
        name: PathBuf,
        scratch: bool,
        inner: Inner,
        pages: Option<Placement>,
    ) -> FileState {
        // Code 3 only: its extents' slot 1 would be read ahead, a hole in a file written
        // once (`pages::read_ahead`). Code 4's slot-0 pages are one run per group.
        if pages == Some(Placement::Pairs) {
            if let Err(e) = data.no_readahead() {
                tracing::debug!("{}: readahead left on: {e}", name.display());
            }
        }
        FileState {
            id,
            core,
            data,
            name: RwLock::new(name),
            scratch,
            inner: RwLock::new(inner),
            data_dirty: AtomicBool::new(false),
            pages,
            read_end: AtomicU64::new(0),
        }
    }

    /// The state of a file just created (no record yet).
    pub(super) fn new_empty(
        core: Arc<Core>,
        id: FileId,
        data: Box<dyn DataFile>,
        name: PathBuf,
        scratch: bool,
    ) -> FileState {
        // Dirty from the start: its (empty) record is committed with its first commit, so a
        // file without a record never passes for an empty one.
        let inner = Inner { size: 0, extents: BTreeMap::new(), meta_dirty: true, unlinked: false, written_behind: 0 };
        let pages = new_placement(&core);
        Self::with_inner(core, id, data, name, scratch, inner, pages)
    }

    pub(super) fn size(&self) -> u64 {
        self.read_inner().size
    }

    pub(super) fn set_name(&self, name: PathBuf) {
        *self.name.write().unwrap_or_else(|p| p.into_inner()) = name;
    }

    pub(super) fn mark_unlinked(&self) {
        self.write_inner().unlinked = true;
    }

    /// The file has no name and no handle left: its blocks can never be read again, so
    /// their space is given back now, not after the commit that deletes its keys (on a full
    /// disk that commit may need the space). A crash in between leaves keys without a data
    /// file, which recovery deletes.
    pub(super) fn discard_data(&self) {
        if let Err(e) = self.data.set_len(0) {
            tracing::warn!("{}: freeing an unlinked file's space: {e}", self.name().display());
        }
    }

    pub(super) fn is_unlinked(&self) -> bool {
        self.read_inner().unlinked
    }

    /// Whether this file's state may stay loaded after its last close (`fs::linger`): it
    /// has a name, nothing to commit, and is not scratch (whose keys go with the boot).
    pub(super) fn may_linger(&self) -> bool {
        let inner = self.read_inner();
        !inner.unlinked && !inner.meta_dirty && !self.scratch
    }

    /// About what this file's state holds in memory (what keeping it loaded costs).
    pub(super) fn kept_bytes(&self) -> usize {
        let inner = self.read_inner();
        let blocks = |b: &Blocks| match b {
            Blocks::Slots(w) => w.as_bytes().len(),
            Blocks::Pages(t) => t.heap_bytes(),
        };
        // 64: an extent's own fields and its place in the map, about.
        inner.extents.values().map(|x| 64 + x.wrapped.len() + blocks(&x.blocks)).sum()
    }

    /// Whether this state, kept since its last close, may serve an open that opened `fresh`
    /// (`writer`: to write): only through the same data file (not one put at its name since,
    /// whose record must be checked), and a writer only if it holds that file writable. A
    /// backend that cannot tell which file it holds (no `metadata`) says no: the state is
    /// loaded again.
    pub(super) fn may_serve(&self, fresh: &dyn DataFile, writer: bool) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.data.metadata(), fresh.metadata()) {
            (Ok(kept), Ok(new)) => {
                (kept.dev(), kept.ino()) == (new.dev(), new.ino()) && (!writer || self.data.writable())
            }
            _ => false,
        }
    }

    fn name(&self) -> PathBuf {
        self.name.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        // Every mutation of `Inner` completes before any call that can panic, so a poisoned
        // lock still guards consistent state.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn aad(&self) -> BlockAad {
        BlockAad { volume_id: *self.core.keys.volume_id(), file_id: self.id, block_index: 0 }
    }

    pub(super) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inner = self.read_inner();
        if offset >= inner.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(inner.size - offset) as usize;
        let blocks = Layout::block_range(offset, len as u64);
        let whole = (blocks.end - blocks.start) as usize * BLOCK_SIZE;
        if offset.is_multiple_of(BLOCK) && buf.len() >= whole {
            // Aligned (the kernel's reads): decrypt straight into the caller's buffer.
            self.load_blocks(&inner, blocks.start, &mut buf[..whole])?;
            return Ok(len);
        }
        let mut plain = vec![0u8; whole];
        self.load_blocks(&inner, blocks.start, &mut plain)?;
        let skip = (offset - blocks.start * BLOCK) as usize;
        buf[..len].copy_from_slice(&plain[skip..skip + len]);
        Ok(len)
    }

    /// Decrypts blocks `first..first + plain.len()/4096` into `plain` (holes read as zeros).
    fn load_blocks(&self, inner: &Inner, first: u64, plain: &mut [u8]) -> Result<()> {
        if self.pages.is_some() {
            return self.load_pages(inner, first, plain);
        }
        let layout = self.core.layout;
        let n = plain.len() / BLOCK_SIZE;
        let ciphers = self.ciphers_for_read(inner, first, n)?;
        let keys: Vec<BlockKey<'_>> = ciphers.iter().map(|c| c.as_deref()).collect();
        let Some(last_written) = keys.iter().rposition(Option::is_some) else {
            plain.fill(0);
            return Ok(());
        };
        let slot = layout.slot_size() as usize;
        let mut slots = SLOTS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        // Reused without zeroing: every byte that is decrypted is read from disk first.
        if slots.len() < n * slot {
            slots.resize(n * slot, 0);
        }
        let result = self.load_slots(&keys, first, last_written, &mut slots[..n * slot], plain);
        SLOTS.with(|b| *b.borrow_mut() = slots);
        result
    }

    fn load_slots(
        &self,
        keys: &[BlockKey<'_>],
        first: u64,
        last_written: usize,
        slots: &mut [u8],
        plain: &mut [u8],
    ) -> Result<()> {
        let layout = self.core.layout;
        let slot = layout.slot_size() as usize;
        let got = self
            .data
            .read_at(&mut slots[..(last_written + 1) * slot], layout.slot_offset(first))
            .map_err(|e| Error::io(self.name(), "read", e))?;
        if got < (last_written + 1) * slot {
            let missing = first + (got / slot) as u64;
            return Err(Error::integrity(
                self.name(),
                format!("block {missing} is missing from the data file (truncated?)"),
            ));
        }
        open_run(keys, self.aad(), first, slot, slots, plain).map_err(|block| {
            tracing::error!(file = %self.name().display(), block, "block failed authentication");
            Error::integrity(self.name(), format!("block {block} failed authentication (tampered or corrupt)"))
        })
    }

    /// The cipher of each block in `first..first+n`, `None` for blocks never written.
    fn ciphers_for_read(&self, inner: &Inner, first: u64, n: usize) -> Result<Vec<Option<Arc<DataCipher>>>> {
        let layout = self.core.layout;
        let mut out = Vec::with_capacity(n);
        let mut current: Option<(u64, Option<Arc<DataCipher>>)> = None;
        for b in first..first + n as u64 {
            let (e, bit) = layout.extent_of(b);
            let Some(ext) = inner.extents.get(&e).filter(|x| x.blocks.written().get(bit)) else {
                out.push(None);
                continue;
            };
            if current.as_ref().map(|(ce, _)| *ce) != Some(e) {
                current = Some((e, Some(self.unwrap_dek(e, ext)?)));
            }
            out.push(current.as_ref().and_then(|(_, c)| c.clone()));
        }
        Ok(out)
    }

    fn unwrap_dek(&self, e: u64, ext: &Extent) -> Result<Arc<DataCipher>> {
        if !self.core.keys.knows_kek(&ext.kek_id) {
            return Err(Error::integrity(self.name(), format!("extent {e} is wrapped under an unknown KEK")));
        }
        self.core.keys.dek(&self.id, e, &ext.kek_id, &ext.wrapped).map_err(|_| {
            tracing::error!(file = %self.name().display(), extent = e, "wrapped DEK failed to unwrap");
            Error::integrity(self.name(), format!("the wrapped key of extent {e} does not authenticate"))
        })
    }

    pub(super) fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.max_size())
            .ok_or_else(|| Error::InvalidArgument("write beyond the maximum file size".into()))?;
        if let Some(n) = self.overwrite_in_place(offset, end, data)? {
            return Ok(n);
        }
        let mut inner = self.write_inner();
        self.write_locked(&mut inner, offset, end, data)
    }

    /// The common case of random and rewrite workloads — whole blocks, all already written,
    /// inside the file — changes no metadata: it runs under the shared lock, so writers to
    /// one file proceed in parallel (each block is one pwrite, atomic against the others).
    fn overwrite_in_place(&self, offset: u64, end: u64, data: &[u8]) -> Result<Option<usize>> {
        // Format 2 records a new seal (and maybe a new slot) per write: never in place.
        if self.pages.is_some() || !offset.is_multiple_of(BLOCK) || !end.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let inner = self.read_inner();
        if end > inner.size {
            return Ok(None);
        }
        let layout = self.core.layout;
        let blocks = Layout::block_range(offset, data.len() as u64);
        let n = (blocks.end - blocks.start) as usize;
        let all_written = blocks.clone().all(|b| {
            let (e, bit) = layout.extent_of(b);
            inner.extents.get(&e).is_some_and(|x| x.blocks.written().get(bit))
        });
        if !all_written {
            return Ok(None);
        }
        let ciphers = self.ciphers_for_read(&inner, blocks.start, n)?;
        let keys: Vec<&DataCipher> = ciphers.iter().flatten().map(|c| c.as_ref()).collect();
        seal_and_write(self.data.as_ref(), layout, &keys, self.aad(), blocks.start, data)
            .map_err(|e| Error::io(self.name(), "write", e))?;
        self.data_dirty.store(true, Ordering::Release);
        Ok(Some(data.len()))
    }

    /// Before the file grows past its size: the rest of its last block, past the size,
    /// becomes zeros (a truncation leaves old bytes there, unseen until now). The visible
    /// contents do not change, so a power cut at any point leaves a valid state.
    fn zero_tail(&self, inner: &mut Inner) -> Result<()> {
        let size = inner.size;
        let b = size / BLOCK;
        let (e, bit) = self.core.layout.extent_of(b);
        if size.is_multiple_of(BLOCK) || !inner.extents.get(&e).is_some_and(|x| x.blocks.written().get(bit)) {
            return Ok(());
        }
        let mut block = vec![0u8; BLOCK_SIZE];
        self.load_blocks(inner, b, &mut block)?;
        block[(size % BLOCK) as usize..].fill(0);
        self.write_blocks(inner, b * BLOCK, (b + 1) * BLOCK, &block)?;
        inner.size = size;
        Ok(())
    }

    fn write_locked(&self, inner: &mut Inner, offset: u64, end: u64, data: &[u8]) -> Result<usize> {
        if offset > inner.size {
            self.zero_tail(inner)?;
        }
        let grows = end > inner.size;
        let n = self.write_blocks(inner, offset, end, data)?;
        if grows {
            self.write_behind(inner);
        }
        Ok(n)
    }

    /// Once a file has grown by `WRITE_BEHIND` bytes since the last time, starts writing
    /// that part of its data file back to the disk. A large file written from start to end
    /// then reaches the disk while the rest is still being encrypted, instead of all at its
    /// `fsync` or whenever the kernel's flusher gets to it; small files and rewrites inside
    /// a file are left to the flusher. It only starts I/O: what is durable, and when, does
    /// not change (an `fsync` still waits for all of it).
    fn write_behind(&self, inner: &mut Inner) {
        if inner.size.saturating_sub(inner.written_behind) < WRITE_BEHIND {
            return;
        }
        let end_of = |size| data_end(self.core.layout, self.pages, Layout::blocks_for(size));
        // From the start of the data file the first time (its header too).
        let from = if inner.written_behind == 0 { 0 } else { end_of(inner.written_behind) };
        let end = end_of(inner.size);
        if let Err(e) = self.data.start_writeback(from, end - from) {
            tracing::debug!(file = %self.name().display(), "write-behind: {e}");
        }
        inner.written_behind = inner.size;
    }

    fn write_blocks(&self, inner: &mut Inner, offset: u64, end: u64, data: &[u8]) -> Result<usize> {
        let layout = self.core.layout;
        let blocks = Layout::block_range(offset, data.len() as u64);
        let n = (blocks.end - blocks.start) as usize;
        let mut plain = vec![0u8; n * BLOCK_SIZE];
        // Read-modify-write of partially covered edge blocks.
        if !offset.is_multiple_of(BLOCK) {
            self.load_blocks(inner, blocks.start, &mut plain[..BLOCK_SIZE])?;
        }
        if !end.is_multiple_of(BLOCK) && (n > 1 || offset.is_multiple_of(BLOCK)) {
            self.load_blocks(inner, blocks.end - 1, &mut plain[(n - 1) * BLOCK_SIZE..])?;
        }
        let skip = (offset - blocks.start * BLOCK) as usize;
        plain[skip..skip + data.len()].copy_from_slice(data);

        let ciphers = self.ciphers_for_write(inner, blocks.start, n)?;
        let keys: Vec<&DataCipher> = ciphers.iter().map(|c| c.as_ref()).collect();
        if self.pages.is_some() {
            self.write_pages(inner, &keys, blocks.start, &plain)?;
        } else {
            seal_and_write(self.data.as_ref(), layout, &keys, self.aad(), blocks.start, &plain)
                .map_err(|e| Error::io(self.name(), "write", e))?;
            for b in blocks.clone() {
                let (e, bit) = layout.extent_of(b);
                let ext = inner.extents.get_mut(&e).expect("ciphers_for_write created every extent");
                if let Blocks::Slots(w) = &mut ext.blocks {
                    if !w.get(bit) {
                        w.set(bit);
                        ext.dirty = true;
                        inner.meta_dirty = true;
                    }
                }
            }
        }
        if end > inner.size {
            inner.size = end;
            inner.meta_dirty = true;
        }
        self.data_dirty.store(true, Ordering::Release);
        Ok(data.len())
    }

    /// The cipher of each block in `first..first+n`, creating a DEK for extents without one.
    fn ciphers_for_write(&self, inner: &mut Inner, first: u64, n: usize) -> Result<Vec<Arc<DataCipher>>> {
        let layout = self.core.layout;
        let mut out = Vec::with_capacity(n);
        let mut current: Option<(u64, Arc<DataCipher>)> = None;
        for b in first..first + n as u64 {
            let (e, _) = layout.extent_of(b);
            if current.as_ref().map(|(ce, _)| *ce) != Some(e) {
                let cipher = match inner.extents.get(&e) {
                    Some(ext) => self.unwrap_dek(e, ext)?,
                    None => {
                        let (kek_id, wrapped, cipher) =
                            self.core.keys.new_dek(&self.id, e, self.scratch).ok_or_else(|| {
                                Error::integrity(self.name(), "the scratch key is gone (the volume is unmounting)")
                            })?;
                        let bpe = layout.blocks_per_extent();
                        let blocks = match self.pages {
                            Some(p) => Blocks::Pages(p.new_table(first_page(p, &inner.extents, bpe), e, bpe)),
                            None => Blocks::Slots(WrittenBits::new(bpe)),
                        };
                        let ext = Extent { kek_id, wrapped, blocks, dirty: true };
                        inner.extents.insert(e, ext);
                        inner.meta_dirty = true;
                        cipher
                    }
                };
                current = Some((e, cipher));
            }
            out.push(current.as_ref().expect("set above").1.clone());
        }
        Ok(out)
    }

    pub(super) fn set_len(&self, new_size: u64) -> Result<()> {
        if new_size > self.max_size() {
            return Err(Error::InvalidArgument("size beyond the maximum file size".into()));
        }
        let mut inner = self.write_inner();
        if new_size >= inner.size {
            // Growing adds a hole: only the size changes (and the old last block's tail
            // reads as zeros).
            if new_size > inner.size {
                self.zero_tail(&mut inner)?;
                inner.size = new_size;
                inner.meta_dirty = true;
            }
            return Ok(());
        }
        let layout = self.core.layout;
        let keep_blocks = Layout::blocks_for(new_size);
        // What the store holds until the truncation commits: put back if it does not (so no
        // later write takes a page the store still names for a fresh extent's).
        let first_changed = keep_blocks.div_ceil(layout.blocks_per_extent()).saturating_sub(1);
        let before: Vec<(u64, Extent)> = inner.extents.range(first_changed..).map(|(&e, x)| (e, x.clone())).collect();
        let before = (before, inner.size, inner.meta_dirty, inner.written_behind);
        // The bytes past the new end inside the last kept block stay as they are: invisible
        // until the file grows, and growing zeroes them first (`zero_tail`). Rewriting them
        // here, before the commit, would change the old state a power cut can fall back to.
        let keep_extents = keep_blocks.div_ceil(layout.blocks_per_extent());
        inner.extents.retain(|&e, _| e < keep_extents);
        self.core.keys.forget(&self.id, keep_extents);
        if keep_extents > 0 {
            let last = keep_extents - 1;
            if let Some(ext) = inner.extents.get_mut(&last) {
                let from = (keep_blocks - layout.first_block(last)) as usize;
                if ext.blocks.written().count() > 0 {
                    ext.blocks.clear_from(from);
                    ext.dirty = true;
                }
            }
        }
        inner.size = new_size;
        inner.meta_dirty = true;
        // Growth to write behind counts from the cut.
        inner.written_behind = inner.written_behind.min(keep_blocks * BLOCK);
        // Commit the removal before cutting the data, so the store never names a block that
        // is gone.
        if let Err(e) = self.commit(&mut inner, &[Change::DropExtentsFrom { file: &self.id, first: keep_extents }]) {
            let (extents, size, meta_dirty, written_behind) = before;
            inner.extents.retain(|&e, _| e < first_changed);
            inner.extents.extend(extents);
            (inner.size, inner.meta_dirty, inner.written_behind) = (size, meta_dirty, written_behind);
            return Err(e);
        }
        let len = match self.pages {
            Some(_) => self.pages_len(&inner)?,
            None => layout.physical_len(keep_blocks),
        };
        self.data.set_len(len).map_err(|e| Error::io(self.name(), "truncate data file", e))?;
        // Only a group keeps dropped extents' pages below the cut.
        if self.pages == Some(Placement::Groups) {
            let dropped = before.0.iter().filter(|(e, _)| *e >= keep_extents).map(|(_, x)| &x.blocks);
            self.free_pages_below(dropped, len);
        }
        Ok(())
    }

    /// The first offset >= `offset` in a written block (SEEK_DATA), or ENXIO.
    pub(super) fn seek_data(&self, offset: u64) -> Result<u64> {
        self.seek(offset, true)
    }

    /// The first offset >= `offset` in a hole or at end of file (SEEK_HOLE), or ENXIO.
    pub(super) fn seek_hole(&self, offset: u64) -> Result<u64> {
        self.seek(offset, false)
    }

    fn seek(&self, offset: u64, data: bool) -> Result<u64> {
        let inner = self.read_inner();
        if offset >= inner.size {
            return Err(Error::io(self.name(), "lseek", std::io::Error::from_raw_os_error(6)));
        }
        let layout = self.core.layout;
        let written = |b: u64| {
            let (e, bit) = layout.extent_of(b);
            inner.extents.get(&e).is_some_and(|x| x.blocks.written().get(bit))
        };
        let end = Layout::blocks_for(inner.size);
        match (offset / BLOCK..end).find(|&b| written(b) == data) {
            Some(b) => Ok((b * BLOCK).max(offset).min(inner.size)),
            None if data => Err(Error::io(self.name(), "lseek", std::io::Error::from_raw_os_error(6))),
            None => Ok(inner.size),
        }
    }

    /// fsync: data, then the metadata that refers to it.
    pub(super) fn sync(&self) -> Result<()> {
        let mut inner = self.write_inner();
        if self.data_dirty.load(Ordering::Acquire) && !inner.meta_dirty {
            self.data.sync_data().map_err(|e| Error::io(self.name(), "fsync", e))?;
            self.data_dirty.store(false, Ordering::Release);
            return Ok(());
        }
        self.commit(&mut inner, &[])
    }

    /// Re-wraps in-memory DEKs that are not under the target KEK (a rotation is running or
    /// just finished): only the dirty ones (`dirty_only`, before a commit) or all of them.
    fn rewrap_to_target(&self, inner: &mut Inner, dirty_only: bool) -> Result<()> {
        if self.scratch {
            return Ok(()); // scratch DEKs stay under the scratch key
        }
        let target = self.core.keys.target_kek_id();
        for (&e, ext) in inner.extents.iter_mut().filter(|(_, x)| x.kek_id != target && (x.dirty || !dirty_only)) {
            let (kek_id, wrapped) =
                self.core.keys.rewrap_dek(&self.id, e, &ext.kek_id, &ext.wrapped).map_err(|_| {
                    Error::integrity(self.name(), format!("the wrapped key of extent {e} does not authenticate"))
                })?;
            ext.kek_id = kek_id;
            ext.wrapped = wrapped;
        }
        Ok(())
    }

    /// Moves every in-memory DEK of this open file to the target KEK (KEK rotation). The store
    /// rows are re-wrapped by the rotation itself; a later commit writes the same KEK.
    pub(super) fn rewrap_all(&self) -> Result<()> {
        let mut inner = self.write_inner();
        self.rewrap_to_target(&mut inner, false)
    }

    /// On last close: commit what is pending, or delete everything if the file is gone.
    pub(super) fn release(&self) -> Result<()> {
        let mut inner = self.write_inner();
        if inner.unlinked {
            self.core.store.apply(&[Change::DeleteFile { id: &self.id }])?;
            self.core.keys.forget(&self.id, 0);
            inner.extents.clear();
            inner.meta_dirty = false;
            return Ok(());
        }
        self.commit(&mut inner, &[])
    }

    /// Whether this file has metadata (or a deletion) the store does not have yet.
    pub(super) fn needs_commit(&self) -> bool {
        let inner = self.read_inner();
        inner.meta_dirty || inner.unlinked
    }

    /// The MAC of the record this file's in-memory state commits.
    fn record_mac_of(&self, inner: &Inner) -> [u8; 16] {
        let stored: Vec<(u64, Cow<'_, [u8]>)> = inner.extents.iter().map(|(&i, e)| (i, e.blocks.stored())).collect();
        record_mac_with(
            &self.core.keys.names(),
            self.code(),
            &self.id,
            inner.size,
            stored.iter().map(|(i, b)| (*i, &b[..])),
        )
    }

    /// The largest size this file may have (format 2: page offsets stay below `i64::MAX`).
    fn max_size(&self) -> u64 {
        if self.pages.is_some() {
            crate::format::MAX_PAGES_SIZE
        } else {
            i64::MAX as u64
        }
    }

    /// The cipher code of this file's record.
    fn code(&self) -> u8 {
        self.pages.map_or(self.core.cipher_code, Placement::code)
    }

    /// The store now holds this file's state as it is in memory (format 2 then writes new
    /// versions of its blocks away from the pages the store names).
    pub(super) fn committed(&self, inner: &mut Inner) {
        for ext in inner.extents.values_mut() {
            if let Blocks::Pages(t) = &mut ext.blocks {
                t.committed();
            }
        }
    }

    /// For a group commit: the file's state, locked until the commit is applied (or undone),
    /// so that no later commit of this file (an fsync) can reach the store before it and be
    /// overwritten by this older snapshot.
    pub(super) fn lock_for_commit(&self) -> RwLockWriteGuard<'_, Inner> {
        self.write_inner()
    }

    /// For a group commit: takes the pending metadata (marking it clean) without syncing the
    /// data file — the committer syncs the whole backing file system before it commits.
    ///
    /// An unlinked file has nothing to commit: it may still be open (and read), and its keys
    /// go by id when its last handle closes ([`Core::release`], `Volume::drop_file`).
    pub(super) fn snapshot_for_commit(&self, inner: &mut Inner) -> Result<Option<CommitSnapshot>> {
        if inner.unlinked || !inner.meta_dirty {
            return Ok(None);
        }
        self.rewrap_to_target(inner, true)?;
        let mac = self.record_mac_of(inner);
        let mut extents = Vec::new();
        for (&index, ext) in inner.extents.iter_mut().filter(|(_, x)| x.dirty) {
            extents.push((index, ext.kek_id, ext.wrapped.clone(), ext.blocks.stored().into_owned()));
            ext.dirty = false;
        }
        let size = inner.size;
        inner.meta_dirty = false;
        self.data_dirty.store(false, Ordering::Release);
        Ok(Some(CommitSnapshot { size, mac, extents, cipher: self.code() }))
    }

    /// A group commit of `snap` failed: its metadata is pending again.
    pub(super) fn restore_dirty(&self, inner: &mut Inner, snap: &CommitSnapshot) {
        inner.meta_dirty = true;
        self.data_dirty.store(true, Ordering::Release);
        for (index, ..) in &snap.extents {
            if let Some(e) = inner.extents.get_mut(index) {
                e.dirty = true;
            }
        }
    }

    /// Syncs the data file, then commits pending metadata plus `extra` in one transaction.
    fn commit(&self, inner: &mut Inner, extra: &[Change<'_>]) -> Result<()> {
        if !inner.meta_dirty && extra.is_empty() {
            return Ok(());
        }
        if self.data_dirty.load(Ordering::Acquire) {
            self.data.sync_data().map_err(|e| Error::io(self.name(), "fsync", e))?;
            self.data_dirty.store(false, Ordering::Release);
        }
        self.rewrap_to_target(inner, true)?;
        let cipher = self.code();
        let mac = self.record_mac_of(inner);
        let mut changes = vec![Change::PutFile { id: &self.id, size: inner.size, cipher, mac: &mac }];
        changes.extend_from_slice(extra);
        let stored: Vec<(u64, &Extent, Cow<'_, [u8]>)> =
            inner.extents.iter().filter(|(_, x)| x.dirty).map(|(&i, x)| (i, x, x.blocks.stored())).collect();
        for (index, ext, written) in &stored {
            changes.push(Change::PutExtent {
                file: &self.id,
                index: *index,
                kek_id: &ext.kek_id,
                wrapped: &ext.wrapped,
                written,
            });
        }
        self.core.store.apply(&changes)?;
        drop(changes);
        drop(stored);
        for ext in inner.extents.values_mut() {
            ext.dirty = false;
        }
        self.committed(inner);
        inner.meta_dirty = false;
        Ok(())
    }
}

/// The placement a record's cipher code names, in a volume whose format-1 code is `volume`:
/// `Ok(None)` for format 1, `Err(code)` for a code this build does not know.
fn placement_of(code: u8, volume: u8) -> std::result::Result<Option<Placement>, u8> {
    match Placement::of_code(code) {
        Some(p) => Ok(Some(p)),
        None if code == volume => Ok(None),
        None => Err(code),
    }
}

/// The page a format-2 file's extent areas start at: where its extents are (a file
/// converted by `upgrade` has them after its old format-1 slots), else 1. Every extent of a
/// file is at that page plus [`Placement::offset`], so a new one never overlaps another.
fn first_page(placement: Placement, extents: &BTreeMap<u64, Extent>, bpe: u64) -> u64 {
    extents
        .iter()
        .find_map(|(&e, x)| match &x.blocks {
            Blocks::Pages(t) => Some(t.base() - placement.offset(e, bpe)),
            Blocks::Slots(_) => None,
        })
        .unwrap_or(1)
}

/// Where the data of blocks `0..blocks` ends in a data file written front to back (format 2:
/// all in slot 0 of extents from page 1), for write-behind.
fn data_end(layout: Layout, pages: Option<Placement>, blocks: u64) -> u64 {
    let Some(placement) = pages else { return layout.physical_len(blocks) };
    let Some(last) = blocks.checked_sub(1) else { return crate::format::PAGE };
    let (e, i) = layout.extent_of(last);
    (1 + placement.offset(e, layout.blocks_per_extent()) + i as u64 + 1) * crate::format::PAGE
}

/// A regular file whose record is missing from the store (rows deleted, or `meta.db`
/// replaced by an older copy): an integrity error, never an empty file.
pub(super) fn record_missing(path: &Path) -> Error {
    Error::integrity(path, "the metadata store has no record of this file (its rows were deleted or meta.db replaced)")
}

/// Where a file made now places its extents: groups in a format-2 volume, else format 1.
fn new_placement(core: &Core) -> Option<Placement> {
    core.pages.load(Ordering::Acquire).then_some(Placement::Groups)
}

/// The record (cipher code and MAC) of an empty file made now: format 2 in a format-2
/// volume.
pub(super) fn empty_record(core: &Core, id: &FileId) -> (u8, [u8; 16]) {
    let code = new_placement(core).map_or(core.cipher_code, Placement::code);
    (code, record_mac_with(&core.keys.names(), code, id, 0, std::iter::empty()))
}

/// The MAC of a file's record as the store will hold it: its size, the cipher and every
/// extent's index and written bitmap (the wrapped DEKs authenticate themselves, bound to
/// their file, extent and KEK). Keyed by the name key, so KEK rotation leaves it alone.
pub(super) fn record_mac_with<'a>(
    names: &crate::crypto::NameCipher,
    cipher: u8,
    id: &FileId,
    size: u64,
    extents: impl Iterator<Item = (u64, &'a [u8])> + Clone,
) -> [u8; 16] {
    names.mac_built(crate::crypto::NamePurpose::Record, id, |data| {
        // Sized once: a large file's tables are megabytes.
        data.reserve(9 + extents.clone().map(|(_, w)| 12 + w.len()).sum::<usize>());
        data.extend_from_slice(&size.to_le_bytes());
        data.push(cipher);
        for (index, written) in extents {
            data.extend_from_slice(&index.to_le_bytes());
            data.extend_from_slice(&(written.len() as u32).to_le_bytes());
            data.extend_from_slice(written);
        }
    })
}

/// One changed extent in a snapshot: (index, KEK id, wrapped DEK, written bitmap).
pub(super) type ExtentSnapshot = (u64, [u8; 16], Vec<u8>, Vec<u8>);

/// A file's pending metadata, taken for a group commit.
pub(super) struct CommitSnapshot {
    size: u64,
    mac: [u8; 16],
    /// The changed extents.
    extents: Vec<ExtentSnapshot>,
    /// The record's cipher code.
    cipher: u8,
}

impl CommitSnapshot {
    /// The store changes of this snapshot for file `id`.
    pub(super) fn changes<'a>(&'a self, id: &'a FileId, out: &mut Vec<Change<'a>>) {
        out.push(Change::PutFile { id, size: self.size, cipher: self.cipher, mac: &self.mac });
        for (index, kek_id, wrapped, written) in &self.extents {
            out.push(Change::PutExtent { file: id, index: *index, kek_id, wrapped, written });
        }
    }
}

/// An open file. Reads and writes go through the volume's keys; `close` commits what is
/// pending (dropping the handle does the same, logging any error).
pub struct FileHandle {
    pub(super) state: Arc<FileState>,
    pub(super) core: Arc<Core>,
    pub(super) writable: bool,
    pub(super) released: bool,
}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHandle").field("name", &self.state.name()).field("writable", &self.writable).finish()
    }
}

impl FileHandle {
    /// Reads up to `buf.len()` bytes at `offset`; fewer at end of file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.state.read_at(offset, buf)
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        self.state.write_at(offset, data)
    }

    /// Truncates or extends the file.
    pub fn set_len(&self, size: u64) -> Result<()> {
        self.check_writable()?;
        self.state.set_len(size)
    }

    pub fn len(&self) -> u64 {
        self.state.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// lseek(SEEK_DATA).
    pub fn seek_data(&self, offset: u64) -> Result<u64> {
        self.state.seek_data(offset)
    }

    /// lseek(SEEK_HOLE).
    pub fn seek_hole(&self, offset: u64) -> Result<u64> {
        self.state.seek_hole(offset)
    }

    /// fsync(2): everything written so far survives a crash.
    pub fn sync(&self) -> Result<()> {
        self.state.sync()
    }

    /// The file's id (its object header id; shared by hardlinks).
    /// Attributes from the open data file itself (fstat of a file whose last name is gone:
    /// its link count is then 0).
    pub fn attr(&self) -> Result<super::Attr> {
        let name = self.state.name.read().unwrap_or_else(|p| p.into_inner()).clone();
        let meta = self.state.data.metadata().map_err(|e| Error::io(&name, "stat", e))?;
        let mut a = super::meta::attr_from(&meta, super::EntryKind::File, self.len());
        if self.state.is_unlinked() {
            a.nlink = 0;
        }
        Ok(a)
    }

    /// Clears setuid, and setgid where its group may execute, through the open data file (a
    /// file whose last name is gone has nothing else that reaches it), if it has them; its
    /// attributes after.
    pub fn drop_privs(&self) -> Result<super::Attr> {
        let a = self.attr()?;
        match super::meta::without_privs(nix::libc::S_IFREG | u32::from(a.perm)) {
            Some(mode) => {
                let name = self.state.name.read().unwrap_or_else(|p| p.into_inner()).clone();
                self.state.data.set_permissions(mode).map_err(|e| Error::io(&name, "chmod", e))?;
                self.attr()
            }
            None => Ok(a),
        }
    }

    pub fn file_id(&self) -> FileId {
        self.state.id
    }

    pub fn close(mut self) -> Result<()> {
        self.released = true;
        self.core.release(&self.state, false)
    }

    /// Closes without waiting for the store: pending metadata goes in the next group commit
    /// (the close of a mounted file; POSIX promises durability only after fsync).
    pub fn close_deferred(mut self) -> Result<()> {
        self.released = true;
        self.core.release(&self.state, true)
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::io(self.state.name(), "write", std::io::Error::from_raw_os_error(9)))
        }
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.core.release(&self.state, false) {
                tracing::error!(error = %e, "closing a file handle failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Key256, NameCipher};

    /// A record's cipher code names a placement, the volume's format 1, or nothing known.
    #[test]
    fn an_unknown_record_code_is_refused() {
        assert_eq!(placement_of(3, 1), Ok(Some(Placement::Pairs)));
        assert_eq!(placement_of(4, 1), Ok(Some(Placement::Groups)));
        assert_eq!(placement_of(1, 1), Ok(None));
        assert_eq!(placement_of(2, 2), Ok(None));
        assert_eq!(placement_of(2, 1), Err(2), "another volume's format-1 code");
        assert_eq!(placement_of(5, 1), Err(5), "a code from a newer build");
    }

    /// The record-MAC vector of docs/FORMAT.md §9: name key `66`×32, file id `22`×16, size
    /// 5000, cipher 1, one extent (index 0) with written bitmap `03 00`.
    #[test]
    fn record_mac_vector() {
        let names = NameCipher::new(&Key256::from_bytes(&[0x66; 32]));
        let mac = record_mac_with(&names, 1, &[0x22; 16], 5000, [(0u64, &[0x03u8, 0x00][..])].into_iter());
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "6cad36185213632ebc9adc1e6da2d716");
        // Any change to what it covers changes it.
        assert_ne!(mac, record_mac_with(&names, 1, &[0x22; 16], 5001, [(0u64, &[0x03u8, 0x00][..])].into_iter()));
        assert_ne!(mac, record_mac_with(&names, 1, &[0x22; 16], 5000, [(0u64, &[0x01u8, 0x00][..])].into_iter()));
        assert_ne!(mac, record_mac_with(&names, 1, &[0x22; 16], 5000, std::iter::empty()));
        assert_ne!(mac, record_mac_with(&names, 1, &[0x23; 16], 5000, [(0u64, &[0x03u8, 0x00][..])].into_iter()));
    }
}
