//! Block crypto over a run of consecutive blocks, in parallel (rayon) when the run is
//! large enough to pay for it. One allocation per request, none per block.

use rayon::prelude::*;

use crate::crypto::{BlockAad, DataCipher, BLOCK_SIZE, GCM_SIV_NONCE};

/// Runs shorter than this are done on the calling thread (requests of a mount are already
/// served in parallel; splitting small ones costs more than it gains).
const PARALLEL_MIN_BLOCKS: usize = 64;
/// Blocks per parallel task.
const TASK_BLOCKS: usize = 8;

/// One block of a run: its cipher, or `None` for a block never written (a hole: zeros).
pub(super) type BlockKey<'a> = Option<&'a DataCipher>;

/// Decrypts `slots` (one slot per block, blocks `first..`) into `plain`; holes become zeros.
/// On failure returns the index of the first block that did not authenticate.
pub(super) fn open_run(
    keys: &[BlockKey<'_>],
    aad: BlockAad,
    first: u64,
    slot_size: usize,
    slots: &[u8],
    plain: &mut [u8],
) -> Result<(), u64> {
    let work = |(i, out): (usize, &mut [u8])| -> Result<(), u64> {
        let block = first + i as u64;
        match keys[i] {
            None => {
                out.fill(0);
                Ok(())
            }
            Some(c) => c
                .open(&BlockAad { block_index: block, ..aad }, &slots[i * slot_size..(i + 1) * slot_size], out)
                .map_err(|_| block),
        }
    };
    if keys.len() >= PARALLEL_MIN_BLOCKS {
        plain.par_chunks_mut(BLOCK_SIZE * TASK_BLOCKS).enumerate().try_for_each(|(t, task)| {
            task.chunks_mut(BLOCK_SIZE).enumerate().try_for_each(|(j, out)| work((t * TASK_BLOCKS + j, out)))
        })
    } else {
        plain.chunks_mut(BLOCK_SIZE).enumerate().try_for_each(work)
    }
}

/// Encrypts `plain` (blocks `first..`) into `slots`; every block has a key.
pub(super) fn seal_run(
    keys: &[&DataCipher],
    aad: BlockAad,
    first: u64,
    nonces: &[u8],
    plain: &[u8],
    slots: &mut [u8],
    slot_size: usize,
) {
    let work = |(i, out): (usize, &mut [u8])| {
        let nonce: &[u8; GCM_SIV_NONCE] =
            nonces[i * GCM_SIV_NONCE..(i + 1) * GCM_SIV_NONCE].try_into().expect("12-byte nonce chunk");
        keys[i].seal(
            &BlockAad { block_index: first + i as u64, ..aad },
            nonce,
            &plain[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
            out,
        );
    };
    if keys.len() >= PARALLEL_MIN_BLOCKS {
        slots.par_chunks_mut(slot_size * TASK_BLOCKS).enumerate().for_each(|(t, task)| {
            task.chunks_mut(slot_size).enumerate().for_each(|(j, out)| work((t * TASK_BLOCKS + j, out)))
        });
    } else {
        slots.chunks_mut(slot_size).enumerate().for_each(work);
    }
}
