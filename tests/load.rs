//! Under load: fsstress-style parallel metadata and data operations on one mount for a
//! bounded time (180 s by default, `ENVELOPEFS_LOAD_SECS` for a longer run). Every thread
//! checks what it reads against its own model; threads also race each other in one shared
//! directory, where only the errors such races explain are allowed and every read returns
//! exactly one whole file written there (`LOAD_OWN` / `LOAD_SHARED` set the thread counts). The daemon's resident
//! memory is sampled throughout and must stay under its bound; afterwards the volume
//! remounts and fsck is clean.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::{ok, MountFixture};
use common::{pattern, Rng};

/// The daemon's resident memory must stay under this (its caches are bounded).
const RSS_LIMIT_KIB: u64 = 200 * 1024;

fn daemon_pid(m: &MountFixture) -> u32 {
    let o = m.run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]);
    ok(&o);
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"].as_u64().unwrap() as u32
}

fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// One thread's own subtree, checked exactly against its model.
fn own_tree(root: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> (u64, HashMap<PathBuf, Vec<u8>>) {
    let mut rng = Rng(seed);
    let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut dirs = vec![root.clone()];
    fs::create_dir(&root).unwrap();
    let mut ops = 0;
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        let dir = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let names: Vec<PathBuf> = files.keys().cloned().collect();
        let pick = |rng: &mut Rng| names.get(rng.below(names.len().max(1) as u64) as usize).cloned();
        match rng.below(12) {
            0..=2 => {
                let p = dir.join(format!("f{}", rng.next() % 1000));
                let data = pattern(rng.next(), rng.below(300_000) as usize);
                fs::write(&p, &data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
                files.insert(p, data);
            }
            3 => {
                if let Some(p) = pick(&mut rng) {
                    let data = files.get_mut(&p).unwrap();
                    let off = rng.below(data.len() as u64 + 10_000) as usize;
                    let chunk = pattern(rng.next(), 1 + rng.below(50_000) as usize);
                    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
                    f.write_all_at(&chunk, off as u64).unwrap();
                    if rng.below(3) == 0 {
                        f.sync_all().unwrap();
                    }
                    if data.len() < off + chunk.len() {
                        data.resize(off + chunk.len(), 0);
                    }
                    data[off..off + chunk.len()].copy_from_slice(&chunk);
                }
            }
            4 | 5 => {
                if let Some(p) = pick(&mut rng) {
                    let got = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                    assert!(got == files[&p], "{}: read back differs", p.display());
                }
            }
            6 => {
                if let Some(p) = pick(&mut rng) {
                    let len = rng.below(files[&p].len() as u64 + 20_000) as usize;
                    fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len as u64).unwrap();
                    files.get_mut(&p).unwrap().resize(len, 0);
                }
            }
            7 => {
                if let Some(p) = pick(&mut rng) {
                    let to = dirs[rng.below(dirs.len() as u64) as usize].join(format!("r{}", rng.next() % 1000));
                    fs::rename(&p, &to).unwrap();
                    let data = files.remove(&p).unwrap();
                    files.insert(to, data);
                }
            }
            8 => {
                if let Some(p) = pick(&mut rng) {
                    fs::remove_file(&p).unwrap();
                    files.remove(&p);
                }
            }
            9 => {
                if dirs.len() < 20 {
                    let d = dir.join(format!("d{}", rng.next() % 1000));
                    if fs::create_dir(&d).is_ok() {
                        dirs.push(d);
                    }
                }
            }
            10 => {
                let listed = fs::read_dir(&dir).unwrap().count();
                let mine = files.keys().filter(|p| p.parent() == Some(&dir)).count()
                    + dirs.iter().filter(|d| d.parent() == Some(&dir)).count();
                assert_eq!(listed, mine, "{}: listing", dir.display());
            }
            _ => {
                if let Some(p) = pick(&mut rng) {
                    let link = p.with_extension("lnk");
                    if std::os::unix::fs::symlink(&p, &link).is_ok() {
                        assert_eq!(fs::read_link(&link).unwrap(), p);
                        fs::remove_file(&link).unwrap();
                    }
                }
            }
        }
    }
    for (p, data) in &files {
        assert!(fs::read(p).unwrap() == *data, "{}: final contents", p.display());
    }
    (ops, files)
}

/// `seed`, `len`, then `len` bytes of the seed's pattern: a reader can tell whole contents
/// from anything else.
fn stamped(seed: u64, len: usize) -> Vec<u8> {
    [seed.to_le_bytes().to_vec(), (len as u64).to_le_bytes().to_vec(), pattern(seed, len)].concat()
}

/// `data` is exactly some [`stamped`] contents.
fn stamp_holds(data: &[u8]) -> bool {
    data.len() >= 16 && {
        let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        data.len() as u64 - 16 == word(8) && data[16..] == pattern(word(0), data.len() - 16)
    }
}

/// Racing in one shared directory: only the errors a race explains are allowed.
fn shared(dir: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> (u64, HashMap<PathBuf, Vec<u8>>) {
    let mut rng = Rng(seed);
    let tmp = dir.join(format!("t{seed}"));
    let mut ops = 0;
    let allowed = |e: &std::io::Error| {
        matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty)
            || e.raw_os_error() == Some(20) // ENOTDIR: a name became a file meanwhile
            || e.raw_os_error() == Some(21) // EISDIR
    };
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        let a = dir.join(format!("s{}", rng.below(16)));
        let b = dir.join(format!("s{}", rng.below(16)));
        let op = rng.below(6);
        let r = match op {
            // Whole files only (written aside, then renamed over the name): every read must
            // see exactly one of them. In-place writes are the owned trees' part.
            0 => fs::write(&tmp, stamped(rng.next(), rng.below(20_000) as usize)).and_then(|_| fs::rename(&tmp, &a)),
            1 => fs::read(&a)
                .map(|data| assert!(stamp_holds(&data), "{}: wrong contents read ({} bytes)", a.display(), data.len())),
            2 => fs::rename(&a, &b),
            3 => fs::remove_file(&a),
            4 => fs::create_dir(&a),
            _ => fs::remove_dir(&a),
        };
        if let Err(e) = r {
            assert!(allowed(&e), "shared dir, op {op} on {} / {}: {e} ({e:?})", a.display(), b.display());
        }
    }
    (ops, HashMap::new())
}

#[test]
fn parallel_metadata_and_data_load_with_bounded_daemon_memory() {
    let secs: f64 = std::env::var("ENVELOPEFS_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(180.0);
    let mut m = MountFixture::new(&[]);
    let pid = daemon_pid(&m);
    let stop = Arc::new(AtomicBool::new(false));
    let shared_dir = m.p("shared");
    fs::create_dir(&shared_dir).unwrap();
    let mut threads = Vec::new();
    let n = |var: &str, default: u64| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    for t in 0..n("LOAD_OWN", 6) {
        let (root, stop) = (m.p(&format!("own{t}")), stop.clone());
        threads.push(std::thread::spawn(move || own_tree(root, 1000 + t, stop)));
    }
    for t in 0..n("LOAD_SHARED", 4) {
        let (dir, stop) = (shared_dir.clone(), stop.clone());
        threads.push(std::thread::spawn(move || shared(dir, 2000 + t, stop)));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(rss_kib(pid));
        assert!(threads.iter().all(|t| !t.is_finished()) || stop.load(Ordering::Relaxed), "a worker died");
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ops: u64 = results.iter().map(|r| r.0).sum();
    peak = peak.max(rss_kib(pid));
    eprintln!("{ops} operations in {secs} s; daemon peak RSS {} MiB", peak / 1024);
    assert!(ops > 500, "the load ran ({ops} operations)");
    assert!(peak > 0 && peak < RSS_LIMIT_KIB, "daemon peak RSS {peak} KiB");

    m.unmount();
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    m.mount();
    // Everything closed before the unmount was committed by it: the same contents again.
    for (p, data) in results.iter().flat_map(|r| r.1.iter()) {
        assert!(fs::read(p).unwrap_or_default() == *data, "{} after remount", p.display());
    }
    assert!(shared_dir.is_dir());
}
