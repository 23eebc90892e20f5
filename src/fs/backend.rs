//! The storage seam: the five operations the engine needs from a data file.
//!
//! Production uses `std::fs::File`; tests can substitute a backend that cuts power at a
//! sync point or injects I/O errors (redb's `StorageBackend` is the model).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub trait DataFile: Send + Sync {
    fn size(&self) -> io::Result<u64>;
    /// Reads into `buf` from `offset` until `buf` is full or end of file; returns the bytes
    /// read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
}

impl DataFile for File {
    fn size(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}
