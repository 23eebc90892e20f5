//! Rollback evidence (format 2, docs/SECURITY.md "Integrity decisions"): a block, an extent or
//! a data file put back from an earlier copy of CIPHERDIR reads as EIO; a file's store rows
//! put back (alone or with its data file) make the mount refuse the volume; the whole
//! CIPHERDIR put back is refused at mount, naming this host's anchor, until
//! `--accept-rollback`.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::{ok, MountFixture};
use common::pattern;

const PASS: &str = "mount test passphrase";
/// Blocks per extent (`--extent-size 64K`): extent `e` has pages `1 + 32e ..= 32 + 32e`.
const B: u64 = 16;

fn backing(m: &MountFixture, rel: &str) -> PathBuf {
    let vol = envelopefs::fs::Volume::open(&m.cipher, &envelopefs::secret::Passphrase::new(PASS).unwrap()).unwrap();
    vol.backing_path(Path::new(rel)).unwrap()
}

/// A copy of CIPHERDIR as it is now (unmounted).
fn snapshot(m: &MountFixture, name: &str) -> PathBuf {
    let to = m.tmp.path().join(name);
    let st = Command::new("cp").arg("-a").arg(&m.cipher).arg(&to).status().unwrap();
    assert!(st.success());
    to
}

fn rewrite(m: &MountFixture, rel: &str, block: u64, seed: u64) {
    let f = fs::OpenOptions::new().write(true).open(m.p(rel)).unwrap();
    f.write_all_at(&pattern(seed, 4096), block * 4096).unwrap();
    f.sync_all().unwrap();
}

fn read_block(m: &MountFixture, rel: &str, block: u64) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(m.p(rel))?;
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, block * 4096)?;
    Ok(buf)
}

fn assert_eio(r: std::io::Result<Vec<u8>>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(5) => {}
        other => panic!("{what}: expected EIO, got {:?}", other.map(|b| b.len())),
    }
}

/// Copies pages `pages` of `from` over the same pages of `to` (a page past the end of `from`
/// was a hole there: zeros).
fn put_back(from: &Path, to: &Path, pages: impl IntoIterator<Item = u64>) {
    let (src, dst) = (fs::File::open(from).unwrap(), fs::OpenOptions::new().write(true).open(to).unwrap());
    let len = src.metadata().unwrap().len();
    for p in pages {
        let mut page = vec![0u8; 4096];
        let n = src.read_at(&mut page, p * 4096).unwrap();
        assert!(n == 4096 || (n == 0 && p * 4096 >= len), "page {p} of the earlier copy");
        dst.write_all_at(&page, p * 4096).unwrap();
    }
}

/// Both pages of block `b` (a code-4 file, FORMAT.md §5a).
fn pages_of(b: u64) -> [u64; 2] {
    let (e, i, g) = (b / B, b % B, envelopefs::format::Placement::Groups);
    let base = 1 + g.offset(e, B) + i;
    [base, base + g.stride(e, B)]
}

/// A volume with `f` (40 blocks) and `other`; an earlier copy of it; then blocks 1 and 20 of
/// `f` rewritten twice, each fsync'ed. Returns the fixture (unmounted) and the copy.
fn rewritten() -> (MountFixture, PathBuf) {
    let mut m = MountFixture::new(&["--extent-size", "64K"]);
    common::write_synced(&m.p("f"), &pattern(1, 40 * 4096));
    common::write_synced(&m.p("other"), &pattern(2, 8192));
    m.unmount();
    let old = snapshot(&m, "old");
    m.mount();
    for seed in [10, 11] {
        rewrite(&m, "f", 1, seed);
        rewrite(&m, "f", 20, seed + 10);
    }
    m.unmount();
    (m, old)
}

#[test]
fn an_older_block_extent_or_data_file_reads_as_eio() {
    let (mut m, old) = rewritten();
    let data = backing(&m, "f");
    let old_data = old.join(data.strip_prefix(&m.cipher).unwrap());
    let now = fs::read(&data).unwrap();
    let cases: [(&str, Option<Vec<u64>>); 3] = [
        ("block 1", Some(pages_of(1).to_vec())),
        ("extent 1 (blocks 16..32)", Some((16..32).flat_map(pages_of).collect())),
        ("the whole data file", None),
    ];
    for (what, pages) in cases {
        match pages {
            Some(pages) => put_back(&old_data, &data, pages),
            None => {
                fs::copy(&old_data, &data).unwrap();
            }
        }
        m.mount();
        if what != "extent 1 (blocks 16..32)" {
            assert_eio(read_block(&m, "f", 1), what);
        }
        if what != "block 1" {
            assert_eio(read_block(&m, "f", 20), what);
        }
        // What was never rewritten reads as it is; so does every other file.
        assert_eq!(read_block(&m, "f", 30).unwrap(), pattern(1, 40 * 4096)[30 * 4096..31 * 4096], "{what}");
        assert_eq!(fs::read(m.p("other")).unwrap(), pattern(2, 8192), "{what}");
        m.unmount();
        fs::write(&data, &now).unwrap();
    }
    m.mount();
    assert_eq!(read_block(&m, "f", 1).unwrap(), pattern(11, 4096), "the current data reads again");
}

/// `sqlite3`-free: puts file `id`'s rows of `old`'s store back into `m`'s.
fn put_back_rows(m: &MountFixture, old: &Path, id: &[u8]) {
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    c.execute("ATTACH DATABASE ?1 AS old", [old.join("meta.db").to_str().unwrap()]).unwrap();
    for (table, key) in [("extents", "file_id"), ("files", "id")] {
        c.execute(&format!("DELETE FROM main.{table} WHERE {key} = ?1"), [id]).unwrap();
        c.execute(&format!("INSERT INTO main.{table} SELECT * FROM old.{table} WHERE {key} = ?1"), [id]).unwrap();
    }
}

#[test]
fn a_files_older_rows_alone_or_with_its_data_make_the_mount_refuse_the_volume() {
    let (m, old) = rewritten();
    let data = backing(&m, "f");
    let id = fs::read(&data).unwrap()[8..24].to_vec();
    let (now_db, now_data) = (fs::read(m.cipher.join("meta.db")).unwrap(), fs::read(&data).unwrap());
    for with_data in [false, true] {
        put_back_rows(&m, &old, &id);
        if with_data {
            fs::copy(old.join(data.strip_prefix(&m.cipher).unwrap()), &data).unwrap();
        }
        let o = m.try_mount(&[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "with_data {with_data}: mounted a volume with a file's older record");
        assert!(err.contains("put back from an older copy"), "with_data {with_data}: {err}");
        let _ = fs::remove_file(m.cipher.join("meta.db-wal"));
        let _ = fs::remove_file(m.cipher.join("meta.db-shm"));
        fs::write(m.cipher.join("meta.db"), &now_db).unwrap();
        fs::write(&data, &now_data).unwrap();
    }
    ok(&m.try_mount(&[]));
    ok(&m.run(&["umount".as_ref(), m.mnt.as_os_str()]));
}

#[test]
fn the_whole_cipherdir_put_back_is_refused_naming_the_anchor_until_accepted() {
    let (mut m, old) = rewritten();
    fs::rename(&m.cipher, m.tmp.path().join("newer")).unwrap();
    let st = Command::new("cp").arg("-a").arg(&old).arg(&m.cipher).status().unwrap();
    assert!(st.success());
    let o = m.try_mount(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mounted a copy older than this host's anchor");
    assert!(err.contains("anchor") && err.contains("--accept-rollback"), "{err}");
    assert!(err.contains("meta.db"), "names the store: {err}");

    m.mount_with(&["--accept-rollback"]);
    assert_eq!(read_block(&m, "f", 1).unwrap(), pattern(1, 40 * 4096)[4096..8192], "the restored copy's data");
    m.unmount();
    m.mount(); // the anchor moved back to the copy it accepted
    assert_eq!(fs::read(m.p("other")).unwrap(), pattern(2, 8192));
}

/// A copy from before `envelopefs upgrade` carries a format-1 header, which has no count of
/// changes to compare: the anchor, which counts them once the volume is format 2, refuses it
/// as older, naming the header; `--accept-rollback` takes it.
#[test]
fn a_copy_from_before_the_upgrade_is_refused_naming_the_anchor_until_accepted() {
    let mut m = MountFixture::new(&["--format", "1"]);
    fs::write(m.p("f"), b"written at format 1").unwrap();
    m.unmount();
    let old = snapshot(&m, "before-upgrade");
    ok(&m.run(&["upgrade".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()]));
    m.mount();
    fs::write(m.p("g"), b"written at format 2").unwrap();
    m.unmount();
    fs::rename(&m.cipher, m.tmp.path().join("newer")).unwrap();
    assert!(Command::new("cp").arg("-a").arg(&old).arg(&m.cipher).status().unwrap().success());
    let o = m.try_mount(&[]);
    if o.status.success() {
        m.adopt(); // so that Drop unmounts it
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mounted a copy from before the upgrade");
    assert!(err.contains("format 1") && err.contains("upgrade") && err.contains("anchor"), "{err}");
    assert!(err.contains("envelopefs.conf") && err.contains("--accept-rollback"), "{err}");

    m.mount_with(&["--accept-rollback"]);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"written at format 1");
    assert!(!m.p("g").exists());
    m.unmount();
    m.mount(); // accepted: the anchor no longer counts changes of this volume
    assert_eq!(fs::read(m.p("f")).unwrap(), b"written at format 1");
}

/// A closed file's state stays loaded for a reopen (`fs::linger`), holding the data file it
/// was loaded from. An older copy of that data file renamed over it in the backing tree is
/// another file: the reopen loads it afresh, and the block rewritten since reads as an
/// integrity error, not as what the kept state's own descriptor would still read.
#[test]
fn an_older_data_file_renamed_over_a_closed_file_kept_loaded_is_not_read_through_the_kept_state() {
    let (_tmp, _dir, vol) = common::new_volume(envelopefs::format::CipherKind::Aes256GcmSiv, 16);
    let name = Path::new("f");
    let f = vol.create(name, 0o644).unwrap();
    f.write_at(0, &pattern(1, 40 * 4096)).unwrap();
    f.close().unwrap();
    let data = vol.backing_path(name).unwrap();
    let old = fs::read(&data).unwrap();
    let f = vol.open_file(name, true).unwrap();
    f.write_at(4096, &pattern(2, 4096)).unwrap(); // block 1, to its other page
    f.close().unwrap();
    assert!(vol.live_stats().unwrap().closed_kept >= 1, "the closed file's state is kept");

    let aside = data.with_file_name("older-copy");
    fs::write(&aside, &old).unwrap();
    fs::rename(&aside, &data).unwrap();

    let f = vol.open_file(name, false).unwrap();
    let mut block = vec![0u8; 4096];
    match f.read_at(4096, &mut block) {
        Err(e) => assert!(e.to_string().contains("authenticat"), "{e}"),
        Ok(_) => panic!("block 1 read through the state kept from before the older copy came"),
    }
}
