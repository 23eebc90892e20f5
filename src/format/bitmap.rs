//! Which blocks of an extent were ever written: one bit per block, LSB first.
//!
//! A written block must decrypt; an unwritten block reads as zeros without touching the
//! data file. This is what turns "an attacker zeroed a block" into an integrity error
//! instead of a silent hole.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenBits(Vec<u8>);

impl WrittenBits {
    pub fn new(blocks: u64) -> Self {
        WrittenBits(vec![0; blocks.div_ceil(8) as usize])
    }

    /// Decodes the store's bytes; the length must match the extent's block count.
    pub fn from_bytes(bytes: Vec<u8>, blocks: u64) -> Option<Self> {
        (bytes.len() as u64 == blocks.div_ceil(8)).then_some(WrittenBits(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn get(&self, i: usize) -> bool {
        self.0[i / 8] & (1 << (i % 8)) != 0
    }

    pub fn set(&mut self, i: usize) {
        self.0[i / 8] |= 1 << (i % 8);
    }

    pub fn set_to(&mut self, i: usize, on: bool) {
        if on {
            self.set(i);
        } else {
            self.0[i / 8] &= !(1 << (i % 8));
        }
    }

    /// Clears bit `from` and every bit after it.
    pub fn clear_from(&mut self, from: usize) {
        for i in from..self.0.len() * 8 {
            self.0[i / 8] &= !(1 << (i % 8));
        }
    }

    pub fn count(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut w = WrittenBits::new(256);
        assert_eq!(w.as_bytes().len(), 32);
        w.set(0);
        w.set(9);
        w.set(255);
        assert!(w.get(9) && !w.get(8));
        assert_eq!(w.count(), 3);
        w.clear_from(9);
        assert_eq!(w.count(), 1);
        assert!(WrittenBits::from_bytes(vec![0; 31], 256).is_none());
    }
}
