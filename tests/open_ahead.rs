//! Open-ahead (`fs::open_ahead`): the first cold read of a file of a directory asks for the
//! first pages of the directory's other files too, all at once, so that reading a cold tree
//! file by file (`md5sum`, `grep -r`, `git add`) does not wait on one random read per file.

mod common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use common::mount::MountFixture;
use common::*;

const FILES: u64 = 20;

#[test]
fn the_first_cold_read_in_a_directory_reads_its_other_files_ahead() {
    // On a disk: a tmpfs (where the tests' volumes usually are) has no page cache to miss.
    let Some(mut m) = MountFixture::on_disk("evfs-open-ahead-") else { return };
    fs::create_dir(m.p("d")).unwrap();
    fs::create_dir(m.p("other")).unwrap();
    for i in 0..FILES {
        fs::write(m.p(&format!("d/f{i:02}")), pattern(i, 10_000)).unwrap();
    }
    fs::write(m.p("other/g"), pattern(99, 10_000)).unwrap();
    m.unmount();
    let data_files = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && !p.ends_with(".dirid"))
            .collect()
    };
    // d's backing directory: the one holding the twenty data files.
    let all = all_files(&m.cipher.join("data"));
    let dir =
        all.iter().filter_map(|p| p.parent()).find(|d| data_files(d).len() == FILES as usize).unwrap().to_path_buf();
    let files = data_files(&dir);
    let g = all.iter().find(|p| p.parent() != Some(dir.as_path()) && !p.ends_with(".dirid")).unwrap().clone();
    m.mount();
    // The files' ids come first (ls -l), as before md5sum or git add: their headers are
    // read. Then the cache is dropped again.
    let sizes = fs::read_dir(m.p("d")).unwrap().map(|e| e.unwrap().metadata().unwrap().len());
    assert_eq!(sizes.sum::<u64>(), FILES * 10_000);
    // Planted beside them by a writer of CIPHERDIR: a FIFO (opening it would block) and a
    // symlink to a file outside (never followed). A writer waits for a reader of the FIFO:
    // if the daemon opened it, the wait would end.
    let fifo = dir.join("planted-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || drop(fs::OpenOptions::new().write(true).open(fifo))
    });
    let outside = m.cipher.with_file_name("outside"); // on the same disk
    fs::write(&outside, vec![1u8; 10_000]).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("planted-link")).unwrap();
    nix::unistd::sync();
    all.iter().chain([&outside]).filter(|p| p.is_file()).for_each(|p| evict(p));
    assert!(files.iter().chain([&g, &outside]).all(|f| resident(f) == 0), "the files left the page cache");
    // One file of d read: the others' first pages are asked for (the reads do not wait).
    assert_eq!(fs::read(m.p("d/f07")).unwrap(), pattern(7, 10_000));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cached = || files.iter().filter(|f| resident(f) > 0).count();
    while cached() < files.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(cached(), files.len(), "every file of d read ahead");
    assert_eq!(resident(&g), 0, "another directory's files are not read ahead");
    assert_eq!(resident(&outside), 0, "the planted symlink was not followed");
    assert!(!writer.is_finished(), "the planted FIFO was opened");
    drop(fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap());
    writer.join().unwrap();
    for i in 0..FILES {
        assert_eq!(fs::read(m.p(&format!("d/f{i:02}"))).unwrap(), pattern(i, 10_000), "f{i:02}");
    }
}

#[test]
fn the_store_is_read_back_for_a_listing_only_when_a_size_is_not_cached() {
    // A listing's sizes are rows of the store; one not cached would be a random read of it,
    // so the whole database is asked for at once then. A listing whose sizes are all cached
    // (a tree just unpacked, listed again) asks for none of it: 34 MB for the Linux tree.
    let Some(mut m) = MountFixture::on_disk("evfs-store-warm-") else { return };
    fs::create_dir(m.p("d")).unwrap();
    for i in 0..FILES {
        fs::write(m.p(&format!("d/f{i:02}")), pattern(i, 1_000)).unwrap();
    }
    let store = m.cipher.join("meta.db");
    let list = |m: &MountFixture| {
        let n = fs::read_dir(m.p("d")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>();
        assert_eq!(n, FILES * 1_000);
    };
    std::thread::sleep(std::time::Duration::from_millis(1100)); // past the once-a-second bound
    evict(&store);
    list(&m);
    assert_eq!(resident(&store), 0, "sizes cached: nothing of the store read");
    m.unmount();
    m.mount();
    evict(&store);
    list(&m);
    // WILLNEED only starts the reads: wait for them (nearly all of the file, where the rows
    // this listing reads are a page or two).
    let len = fs::metadata(&store).unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while resident(&store) + 8192 < len && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(resident(&store) + 8192 >= len, "sizes not cached: the store read back ({} of {len})", resident(&store));
}
