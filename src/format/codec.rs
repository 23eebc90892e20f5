//! A strict little-endian reader and writer shared by every on-disk encoding.

use super::DecodeError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
                DecodeError::Corrupt(format!("{} truncated at {field} (offset {})", self.what, self.pos))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N, field)?;
        Ok(b.try_into().expect("bytes(N) returns N bytes"))
    }

    pub fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// A `u16`-length-prefixed byte string whose length must lie in `min..=max`.
    pub fn var_bytes(&mut self, field: &str, min: usize, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len < min || len > max {
            return Err(self.corrupt(format!("{field} length {len} outside {min}..={max}")));
        }
        self.bytes(len, field)
    }

    /// Ends decoding: trailing bytes make the encoding non-canonical, so they are an error.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(DecodeError::Corrupt(format!(
                "{} has {} trailing bytes",
                self.what,
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }

    pub fn corrupt(&self, reason: String) -> DecodeError {
        DecodeError::Corrupt(format!("{}: {reason}", self.what))
    }
}

/// Appends a `u16`-length-prefixed byte string. Callers keep lengths within the decoder's
/// bounds, which are far below `u16::MAX`.
pub(crate) fn put_var_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).expect("variable-length fields are bounded below 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}
