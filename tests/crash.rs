//! Crashes and `fsck`: the mount daemon SIGKILLed in the middle of a write workload (every
//! fsync'ed byte survives, remount recovers, fsck is clean), and fsck's findings and repairs
//! on a damaged volume.

mod common;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::mount::{ok, MountFixture};
use common::{pattern, Rng};

fn fsck(m: &MountFixture, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    m.run(&args)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// What the writer knows survives a crash: files whose last operation was a completed
/// fsync (or a rename of such a file), with their contents.
type Durable = HashMap<PathBuf, Vec<u8>>;

/// The write (or truncation) the crash cut short: its file and the byte range whose blocks it
/// was rewriting (named in a failure message; format 2 allows no block to fail, not even
/// those).
#[derive(Debug, Clone)]
struct InFlight {
    path: PathBuf,
    range: std::ops::Range<u64>,
}

/// Writes, fsyncs, renames and unlinks files under `dir` until an operation fails (the
/// daemon is gone). Returns what must survive, and the write that was cut short.
fn workload(dir: PathBuf, seed: u64) -> (Durable, Option<InFlight>) {
    let mut rng = Rng(seed);
    let mut durable = Durable::new();
    let mut in_flight = None;
    let mut contents: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let name = |rng: &mut Rng| dir.join(format!("f{}", rng.below(12)));
    loop {
        let p = name(&mut rng);
        let step = rng.below(10);
        let result: std::io::Result<()> = (|| {
            match step {
                0..=5 => {
                    // Write at an offset (often unaligned) in a new or existing file.
                    let mut data = contents.get(&p).cloned().unwrap_or_default();
                    let off = rng.below(data.len() as u64 + 1) as usize;
                    let len = 1 + rng.below(200_000) as usize;
                    let chunk = pattern(rng.next(), len);
                    // Not durable from the moment the write starts: a write cut short by the
                    // crash may have changed some blocks.
                    durable.remove(&p);
                    // Growing past the end also rewrites the old last block (its tail zeroed).
                    let start = off.min(data.len()) as u64;
                    in_flight = Some(InFlight { path: p.clone(), range: start..(off + len) as u64 });
                    let f = OpenOptions::new().create(true).write(true).truncate(false).open(&p)?;
                    f.write_all_at(&chunk, off as u64)?;
                    if data.len() < off + len {
                        data.resize(off + len, 0);
                    }
                    data[off..off + len].copy_from_slice(&chunk);
                    contents.insert(p.clone(), data.clone());
                    if rng.below(2) == 0 {
                        f.sync_all()?;
                        durable.insert(p.clone(), data);
                    }
                }
                6 => {
                    let to = name(&mut rng);
                    if p != to && contents.contains_key(&p) {
                        let was = durable.remove(&p);
                        durable.remove(&to);
                        fs::rename(&p, &to)?;
                        let c = contents.remove(&p).unwrap();
                        contents.insert(to.clone(), c);
                        if let Some(d) = was {
                            durable.insert(to, d);
                        }
                    }
                }
                7 => {
                    if contents.remove(&p).is_some() {
                        durable.remove(&p);
                        fs::remove_file(&p)?;
                    }
                }
                _ => {
                    // Truncate (shorter or longer) and fsync.
                    if let Some(mut data) = contents.get(&p).cloned() {
                        let len = rng.below(data.len() as u64 + 50_000) as usize;
                        let f = OpenOptions::new().write(true).open(&p)?;
                        durable.remove(&p);
                        let edge = len.min(data.len()) as u64;
                        in_flight = Some(InFlight { path: p.clone(), range: edge..edge + 1 });
                        f.set_len(len as u64)?;
                        data.resize(len, 0);
                        contents.insert(p.clone(), data.clone());
                        f.sync_all()?;
                        durable.insert(p.clone(), data);
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => in_flight = None,
            Err(_) => return (durable, in_flight),
        }
    }
}

#[test]
fn sigkill_during_writes_loses_nothing_fsynced_and_fsck_stays_clean() {
    let trials: u64 = std::env::var("ENVELOPEFS_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let mut m = MountFixture::new(&[]);
    let mut rng = Rng(20261201);
    for trial in 0..trials {
        // A fresh directory per trial: the writer's model starts from nothing.
        let dir = m.p(&format!("t{trial}"));
        let _ = fs::create_dir(&dir);
        let seed = rng.next();
        let writer = std::thread::spawn(move || workload(dir, seed));
        std::thread::sleep(std::time::Duration::from_millis(30 + rng.below(400)));
        m.crash();
        let (durable, in_flight) = writer.join().unwrap();

        m.mount(); // recovers what the crash left
        for (path, want) in &durable {
            let got = fs::read(path).unwrap_or_else(|e| panic!("trial {trial}: {}: {e}", path.display()));
            assert!(
                got == *want,
                "trial {trial}: {} lost fsync'ed data ({} vs {} bytes)",
                path.display(),
                got.len(),
                want.len()
            );
        }
        // Files not fsync'ed may hold old or new data, but every one reads without error:
        // format 2 writes a new version of a block away from the page the store names, so
        // even the block the kill cut short reads whole, old or new.
        for d in 0..=trial {
            if let Ok(entries) = fs::read_dir(m.p(&format!("t{d}"))) {
                for e in entries {
                    let p = e.unwrap().path();
                    if let Err(e) = fs::read(&p) {
                        let torn = torn_blocks(&p);
                        let cut = in_flight.as_ref().map(|f| (f.path.display().to_string(), f.range.clone()));
                        panic!(
                            "trial {trial}: {} unreadable ({e}): blocks {torn:?}, write in flight: {cut:?}",
                            p.display()
                        );
                    }
                }
            }
        }
        m.unmount();
        let o = fsck(&m, &[]);
        assert!(o.status.success(), "trial {trial}: fsck not clean: {}", text(&o));
        assert!(text(&o).contains("0 problem(s)"), "{}", text(&o));
        m.mount();
    }
    eprintln!("{trials} trials, no block torn by the crash, nothing fsync'ed lost");
}

/// The blocks of `path` that fail to read.
fn torn_blocks(path: &Path) -> Vec<u64> {
    let f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut buf = vec![0u8; 4096];
    (0..len.div_ceil(4096)).filter(|b| f.read_at(&mut buf, b * 4096).is_err()).collect()
}

#[test]
fn a_crash_leftover_is_reported_then_cleared_by_the_next_mount() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("kept"), b"committed").unwrap();
    common::write_synced(&m.p("synced"), &pattern(1, 50_000));
    let mut f = fs::File::create(m.p("open")).unwrap();
    f.write_all(&pattern(2, 300_000)).unwrap();
    f.flush().unwrap();
    m.crash();
    drop(f);

    // Offline, before any remount: fsck sees the uncommitted blocks and says what they are.
    let o = fsck(&m, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("was not unmounted cleanly"), "{t}");
    assert!(t.contains("/open: data without keys (crash leftover)"), "{t}");

    m.mount();
    assert_eq!(fs::read(m.p("synced")).unwrap(), pattern(1, 50_000));
    assert_eq!(fs::read(m.p("open")).unwrap(), b"", "never committed: empty after recovery");
    m.unmount();
    let o = fsck(&m, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("not unmounted cleanly"), "{}", text(&o));
}

/// The backing file of `rel` in an unmounted volume.
fn backing(m: &MountFixture, rel: &str) -> PathBuf {
    let vol =
        envelopefs::fs::Volume::open(&m.cipher, &envelopefs::secret::Passphrase::new("mount test passphrase").unwrap())
            .unwrap();
    vol.backing_path(Path::new(rel)).unwrap()
}

#[test]
fn fsck_finds_damage_and_repair_keeps_what_it_removes() {
    let mut m = MountFixture::new(&["--extent-size", "64K"]);
    for (i, name) in ["nokeys", "nodata", "short", "flipped", "fine"].iter().enumerate() {
        common::write_synced(&m.p(name), &pattern(i as u64, 200_000));
    }
    m.unmount();
    let o = fsck(&m, &[]);
    assert!(o.status.success(), "{}", text(&o));

    let (nokeys, nodata, short, flipped) =
        (backing(&m, "nokeys"), backing(&m, "nodata"), backing(&m, "short"), backing(&m, "flipped"));
    let id_of = |p: &Path| fs::read(p).unwrap()[8..24].to_vec();
    let nokeys_id = id_of(&nokeys);
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    c.execute("DELETE FROM extents WHERE file_id = ?1", [&nokeys_id]).unwrap();
    c.execute("DELETE FROM files WHERE id = ?1", [&nokeys_id]).unwrap();
    drop(c);
    let nodata_bytes = fs::read(&nodata).unwrap();
    fs::remove_file(&nodata).unwrap();
    let f = OpenOptions::new().write(true).open(&short).unwrap();
    f.set_len(fs::metadata(&short).unwrap().len() - 10_000).unwrap();
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[9_000] ^= 0x01; // block 1 (format 2: page 2; the pages between extents are holes)
    fs::write(&flipped, &bytes).unwrap();

    let o = fsck(&m, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let t = text(&o);
    for want in
        ["/nokeys: data without keys", "keys without data", "/short: size mismatch", "/flipped: unreadable block"]
    {
        assert!(t.contains(want), "missing {want:?} in {t}");
    }
    assert!(!t.contains("/fine:"), "{t}");
    assert!(!t.contains("crash leftover"), "{t}");

    let o = fsck(&m, &["--repair"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(4), "short and flipped cannot be repaired: {t}");
    assert!(t.contains("moved to /lost+found/nokeys."), "{t}");
    assert!(t.contains("kept the keys"), "{t}");

    // Nothing was deleted: the ciphertext is in lost+found, the keys are still in the store
    // (a restored data file reads again), and a second run reports only what needs a backup.
    let nodata_restored = nodata.clone();
    fs::write(&nodata_restored, &nodata_bytes).unwrap();
    let o = fsck(&m, &[]);
    let t = text(&o);
    assert!(!t.contains("nokeys: data without keys") && !t.contains("keys without data"), "{t}");
    assert!(t.contains("1 in lost+found"), "{t}");
    m.mount();
    assert_eq!(fs::read(m.p("nodata")).unwrap(), pattern(1, 200_000));
    assert_eq!(fs::read(m.p("fine")).unwrap(), pattern(4, 200_000));
    let lf: Vec<_> = fs::read_dir(m.p("lost+found")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(lf.len(), 1, "{lf:?}");
    assert_eq!(fs::read(m.p("flipped")).unwrap_err().raw_os_error(), Some(5));
    ok(&m.run(&["status".as_ref(), m.mnt.as_os_str()]));
}
