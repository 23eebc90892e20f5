//! Write-behind: a file written from start to end has its data file written back to the
//! disk in 8 MiB steps while it grows; small files and rewrites inside a file are left to the
//! kernel's flusher. Seen through the storage seam, which records every `start_writeback`.

mod common;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{pattern, CIPHERS};
use envelopefs::fs::{DataFile, Storage, SyncPoint, Volume};

const MIB: usize = 1 << 20;
const STEP: u64 = 8 << 20;

type Calls = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// Real files; every write-behind is recorded with the data file's name.
struct Recording(Calls);

impl Storage for Recording {
    fn data_file(&self, file: File, path: &Path) -> Box<dyn DataFile> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        Box::new(RecordingFile { file, name, calls: self.0.clone() })
    }

    fn sync_point(&self, _point: SyncPoint) -> io::Result<()> {
        Ok(())
    }
}

struct RecordingFile {
    file: File,
    name: String,
    calls: Calls,
}

impl DataFile for RecordingFile {
    fn size(&self) -> io::Result<u64> {
        DataFile::size(&self.file)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        DataFile::read_at(&self.file, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        DataFile::write_all_at(&self.file, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        DataFile::set_len(&self.file, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        DataFile::sync_data(&self.file)
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.calls.lock().unwrap().push((self.name.clone(), offset, len));
        // The real call too: it must accept what the engine asks of it.
        DataFile::start_writeback(&self.file, offset, len)
    }
}

/// The recorded write-behinds of the one data file that had any.
fn ranges(calls: &Calls) -> Vec<(u64, u64)> {
    let calls = calls.lock().unwrap();
    let mut names: Vec<&String> = calls.iter().map(|(n, _, _)| n).collect();
    names.dedup();
    assert!(names.len() <= 1, "write-behind on more than one data file: {names:?}");
    calls.iter().map(|&(_, o, l)| (o, l)).collect()
}

#[test]
fn a_growing_file_is_written_back_in_steps_and_a_small_one_or_a_rewrite_is_not() {
    for cipher in CIPHERS {
        let tmp = common::scratch();
        let dir = tmp.path().join("vol");
        Volume::init(&dir, &common::opts(cipher, 16), &common::pass()).unwrap();
        let header = Volume::read_live_header(&dir).unwrap();
        let kms = envelopefs::kms::open(&header.kms_uri, &dir, &common::pass()).unwrap();
        let calls = Calls::default();
        let vol = Volume::open_with_storage(&dir, header, &kms, Arc::new(Recording(calls.clone()))).unwrap();
        vol.begin_mount().unwrap();

        // A small file: nothing.
        let small = vol.create(Path::new("small"), 0o644).unwrap();
        small.write_at(0, &pattern(1, 3 * MIB)).unwrap();
        small.close().unwrap();
        assert!(calls.lock().unwrap().is_empty(), "{}: write-behind for a 3 MiB file", cipher.name());

        // 20 MiB written from start to end, 1 MiB at a time: two steps, back to back from
        // the start of the data file, each at least 8 MiB, none past what was written.
        let big = vol.create(Path::new("big"), 0o644).unwrap();
        let data = pattern(2, 20 * MIB);
        for (i, piece) in data.chunks(MIB).enumerate() {
            big.write_at((i * MIB) as u64, piece).unwrap();
        }
        let steps = ranges(&calls);
        assert_eq!(steps.len(), 2, "{}: {steps:?}", cipher.name());
        assert_eq!(steps[0].0, 0, "{}: {steps:?}", cipher.name());
        assert_eq!(steps[1].0, steps[0].1, "{}: {steps:?}", cipher.name());
        assert!(steps.iter().all(|&(_, l)| l >= STEP), "{}: {steps:?}", cipher.name());
        let physical = DataFile::size(&File::open(largest_data_file(&dir)).unwrap()).unwrap();
        assert!(steps[1].0 + steps[1].1 <= physical, "{}: {steps:?} past {physical}", cipher.name());

        // Rewriting the first 12 MiB changes nothing on the list.
        for (i, piece) in data[..12 * MIB].chunks(MIB).enumerate() {
            big.write_at((i * MIB) as u64, piece).unwrap();
        }
        assert_eq!(ranges(&calls), steps, "{}: a rewrite started write-behind", cipher.name());

        // Cut to 4 MiB and grown again by 12 MiB: the next step starts where the file was cut.
        big.set_len(4 * MIB as u64).unwrap();
        for i in 4..16 {
            big.write_at((i * MIB) as u64, &data[i * MIB..(i + 1) * MIB]).unwrap();
        }
        let after = ranges(&calls);
        assert_eq!(after.len(), 3, "{}: {after:?}", cipher.name());
        assert!(after[2].0 < steps[1].0 && after[2].1 >= STEP, "{}: {after:?}", cipher.name());

        // And the contents are what was written.
        let mut back = vec![0u8; 16 * MIB];
        assert_eq!(big.read_at(0, &mut back).unwrap(), 16 * MIB);
        assert!(back == data[..16 * MIB], "{}: contents differ", cipher.name());
        big.close().unwrap();

        // Opened again and grown by 4 MiB: what it held counts as written, so no step yet.
        let big = vol.open_file(Path::new("big"), true).unwrap();
        big.write_at(16 * MIB as u64, &data[16 * MIB..]).unwrap();
        assert_eq!(ranges(&calls).len(), 3, "{}: {:?}", cipher.name(), ranges(&calls));
        big.close().unwrap();
    }
}

/// The volume's largest data file (the test writes one file past 8 MiB).
fn largest_data_file(dir: &Path) -> std::path::PathBuf {
    common::all_files(&dir.join("data"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap()
}
