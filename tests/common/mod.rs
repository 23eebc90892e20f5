//! Helpers shared by the integration tests: fast volumes in private temp dirs, a seeded
//! PRNG, and byte patterns.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use envelopefs::format::{CipherKind, KdfParams};
use envelopefs::fs::{InitOptions, Volume};
use envelopefs::secret::Passphrase;
use tempfile::TempDir;

pub mod kms;
pub mod mount;

/// A private temp dir on a disk (this build's target directory, or /var/tmp), for what a
/// tmpfs cannot show (a page cache to miss, a directory that is not in memory); `None`, and
/// the test's skip said, when both are in memory.
pub fn disk_scratch(prefix: &str) -> Option<TempDir> {
    let base = [env!("CARGO_TARGET_TMPDIR"), "/var/tmp"]
        .into_iter()
        .find(|d| Path::new(d).is_dir() && !envelopefs::confine::in_memory(Path::new(d)));
    if base.is_none() {
        eprintln!("skipped: no directory on a disk to try (target dir and /var/tmp are in memory)");
    }
    Some(tempfile::Builder::new().prefix(prefix).tempdir_in(base?).unwrap())
}

/// Cheap Argon2 parameters: the KDF is tested on its own; here it would only cost time.
pub const FAST_KDF: KdfParams = KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
pub const PASS: &str = "test passphrase";

pub fn pass() -> Passphrase {
    Passphrase::new(PASS).unwrap()
}

/// This test binary's own host state directory (anchors), made once and set as
/// `ENVELOPEFS_STATE_DIR` for every test in it: a fixture's volume id is the same in every
/// test binary, and an anchor one binary leaves must not refuse the fixture in another. Made
/// inside the state directory `scripts/test.sh` gives the run (which it removes at the end),
/// so nothing is left behind; a temp dir of its own, kept, when run without it.
#[allow(dead_code)] // not every test binary has a state of its own
pub fn own_state_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = match std::env::var_os("ENVELOPEFS_STATE_DIR") {
            Some(run) => tempfile::Builder::new().prefix("binary-").tempdir_in(run).unwrap().keep(),
            None => scratch().keep(),
        };
        std::env::set_var("ENVELOPEFS_STATE_DIR", &d);
        d
    })
    .clone()
}

/// A private temp dir, on tmpfs when available (fsync there is cheap, which keeps sweeps
/// that commit thousands of times fast).
pub fn scratch() -> TempDir {
    if let Some(base) = std::env::var_os("ENVELOPEFS_TEST_DIR") {
        return tempfile::Builder::new().prefix("evfs-test-").tempdir_in(base).unwrap();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("evfs-test-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::Builder::new().prefix("evfs-test-").tempdir().unwrap()
}

pub fn opts(cipher: CipherKind, extent_shift: u8) -> InitOptions {
    InitOptions { cipher, extent_shift, kms_uri: None, kdf: FAST_KDF, create_key: false, format: None }
}

/// A new volume in data format `format` at `<tmp>/vol`, opened.
pub fn new_volume_format(cipher: CipherKind, extent_shift: u8, format: u8) -> (TempDir, PathBuf, Volume) {
    let tmp = scratch();
    let dir = tmp.path().join("vol");
    Volume::init(&dir, &InitOptions { format: Some(format), ..opts(cipher, extent_shift) }, &pass()).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    (tmp, dir, vol)
}

/// A new volume at `<tmp>/vol`, opened.
pub fn new_volume(cipher: CipherKind, extent_shift: u8) -> (TempDir, PathBuf, Volume) {
    let tmp = scratch();
    let dir = tmp.path().join("vol");
    Volume::init(&dir, &opts(cipher, extent_shift), &pass()).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    (tmp, dir, vol)
}

pub fn reopen(dir: &Path) -> Volume {
    Volume::open(dir, &pass()).unwrap()
}

pub const CIPHERS: [CipherKind; 2] = [CipherKind::Aes256GcmSiv, CipherKind::Aes256Xts];

/// splitmix64: a small deterministic PRNG for reproducible workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed).fill(&mut v);
    v
}

/// Every non-directory entry below `dir`, recursively (symlinks are not followed).
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs_is_dir(&p) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Copies a directory tree (regular files and directories).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn fs_is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes `data` to `path` and fsyncs it (what must survive a crash must be fsync'ed).
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Every wrapped DEK in a volume's store, read beside whoever has it open.
pub fn wrapped_deks(cipherdir: &Path) -> Vec<Vec<u8>> {
    let c = rusqlite::Connection::open(cipherdir.join("meta.db")).unwrap();
    let mut s = c.prepare("SELECT wrapped FROM extents").unwrap();
    let rows = s.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    rows
}

/// The wrapped DEKs once there are at least `n` (a mount commits closed files a moment after
/// close returns: FUSE releases asynchronously, then the group commit runs).
pub fn wait_for_deks(cipherdir: &Path, n: usize) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while wrapped_deks(cipherdir).len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    wrapped_deks(cipherdir)
}

/// An installed tool (fsx from `~/.cargo/bin` or `PATH`; scripts/test.sh installs them).
pub fn tool(name: &str) -> PathBuf {
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    if let Some(p) = home_bin.filter(|p| p.exists()) {
        return p;
    }
    let found =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join(name)).find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} is not installed (scripts/test.sh installs it)"))
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn run(cmd: &mut std::process::Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Bytes of `path` in the page cache (util-linux's `fincore`).
pub fn resident(path: &Path) -> u64 {
    let out =
        run(std::process::Command::new(tool("fincore")).args(["--noheadings", "--bytes", "--output", "RES"]).arg(path));
    out.trim().parse().unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

/// Drops `path`'s pages from the page cache.
pub fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
}
