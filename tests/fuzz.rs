//! Fuzzing every decoder, as property tests: for a bounded time each (default 2 s,
//! `ENVELOPEFS_FUZZ_SECS` for a longer run), inputs mutated from valid encodings (bit flips,
//! interesting bytes, truncation, extension, insertion, deletion, splices) and random bytes
//! are fed to the decoder. It must never panic; what it accepts must round-trip (decode →
//! encode → the same bytes), and what is authenticated must be refused unless unchanged.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Rng;
use envelopefs::crypto::{BlockAad, DataCipher, Key256, Key512, KeyWrapper, NameCipher, NamePurpose};
use envelopefs::format::{CipherKind, KeystoreFile, ObjectHeader, VolumeHeader, WrittenBits};
use envelopefs::keys::ScratchRecord;

fn budget() -> Duration {
    let secs = std::env::var("ENVELOPEFS_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 16, 32];

/// One mutation of `seed` (or, sometimes, random bytes).
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() as u64 + 1) as usize;
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                v[i] = INTERESTING[rng.below(8) as usize];
            }
            2 => {
                let n = at(rng, &v);
                v.truncate(n);
            }
            3 => {
                let extra = rng.below(64) as usize;
                v.extend((0..extra).map(|_| rng.next() as u8));
            }
            4 => {
                let i = at(rng, &v);
                v.insert(i, rng.next() as u8);
            }
            5 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                let n = (rng.below(8) as usize).min(v.len() - i);
                v.drain(i..i + n);
            }
            6 if v.len() > 4 => {
                // Splice: copy a chunk of the input over another place.
                let (a, b) = (rng.below(v.len() as u64) as usize, rng.below(v.len() as u64) as usize);
                let n = (rng.below(16) as usize).min(v.len() - a.max(b));
                let chunk = v[a..a + n].to_vec();
                v[b..b + n].copy_from_slice(&chunk);
            }
            7 => {
                let len = rng.below(300) as usize;
                v = (0..len).map(|_| rng.next() as u8).collect();
            }
            _ => {
                // A length-prefix-shaped edit: a u16 at a random place set to a large value.
                if v.len() >= 2 {
                    let i = rng.below(v.len() as u64 - 1) as usize;
                    v[i..i + 2].copy_from_slice(&(rng.below(70_000) as u16).to_le_bytes());
                }
            }
        }
    }
    v
}

/// Runs `check` on mutations of `seeds` until the budget is spent; returns how many inputs
/// were tried and how many `check` accepted.
fn fuzz(name: &str, seed: u64, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8]) -> bool) {
    let mut rng = Rng(seed);
    let deadline = Instant::now() + budget();
    let (mut tried, mut accepted) = (0u64, 0u64);
    for s in seeds {
        assert!(check(s), "{name}: a valid seed must be accepted");
    }
    while Instant::now() < deadline || tried < 2_000 {
        let s = &seeds[rng.below(seeds.len() as u64) as usize];
        let input = mutate(&mut rng, s);
        tried += 1;
        accepted += check(&input) as u64;
    }
    eprintln!("{name}: {tried} inputs, {accepted} accepted");
    assert!(tried >= 2_000);
}

fn sample_volume() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir, vol) = common::new_volume(CipherKind::Aes256GcmSiv, 16);
    drop(vol);
    (tmp, dir)
}

#[test]
fn volume_header_decoder() {
    let (_tmp, dir) = sample_volume();
    let real = std::fs::read(dir.join("envelopefs.conf")).unwrap();
    let mut other = VolumeHeader::decode(&real).unwrap();
    other.kms_uri = "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=t;object=k".into();
    other.cipher = CipherKind::Aes256Xts;
    other.wrapped_kek = vec![7; 60];
    fuzz("volume header", 1, &[real, other.encode()], |b| match VolumeHeader::decode(b) {
        Ok(h) => {
            assert_eq!(h.encode(), b, "accepted bytes re-encode identically");
            true
        }
        Err(_) => false,
    });
}

#[test]
fn keystore_decoder() {
    let (_tmp, dir) = sample_volume();
    let real = std::fs::read(dir.join("keystore")).unwrap();
    fuzz("keystore", 2, &[real], |b| match KeystoreFile::decode(b) {
        Ok(k) => {
            assert_eq!(k.encode(), b);
            true
        }
        Err(_) => false,
    });
}

#[test]
fn object_header_decoder() {
    let seeds = [
        ObjectHeader::new(envelopefs::format::ObjectKind::File, [3; 16]).encode().to_vec(),
        ObjectHeader::new(envelopefs::format::ObjectKind::Directory, [9; 16]).encode().to_vec(),
    ];
    fuzz("object header", 3, &seeds, |b| match ObjectHeader::decode(b) {
        Ok(h) => {
            assert_eq!(ObjectHeader::decode(&h.encode()), Ok(h));
            assert_eq!(&h.encode()[..], &b[..32.min(b.len())], "the fields decoded are the bytes given");
            true
        }
        Err(_) => false,
    });
}

#[test]
fn scratch_record_and_written_bitmap_decoders() {
    let rec = ScratchRecord { boot_id: [1; 16], key_id: [2; 16], recorded: Some(false), wrapped: vec![5; 60] };
    fuzz("scratch record", 4, &[rec.encode()], |b| match ScratchRecord::decode(b) {
        Some(r) => {
            assert_eq!(r.encode(), b);
            true
        }
        None => false,
    });
    let mut bits = WrittenBits::new(256);
    bits.set(3);
    bits.set(255);
    fuzz("written bitmap", 5, &[bits.as_bytes().to_vec()], |b| match WrittenBits::from_bytes(b.to_vec(), 256) {
        Some(w) => {
            assert_eq!(w.as_bytes(), b);
            assert!(w.count() <= 256);
            true
        }
        None => false,
    });
}

#[test]
fn wrapped_keys_names_and_blocks_refuse_every_change() {
    let kek = KeyWrapper::new(&Key256::generate());
    let dek = Key256::generate();
    let aad = b"EVFSDEK1 some context".to_vec();
    let wrapped = kek.wrap(&dek, &aad);
    fuzz("wrapped DEK", 6, std::slice::from_ref(&wrapped), |b| match kek.unwrap::<32>(b, &aad) {
        Ok(k) => {
            assert_eq!(b, &wrapped[..], "only the unchanged wrapped key opens");
            assert_eq!(k.expose(), dek.expose());
            true
        }
        Err(_) => false,
    });

    let names = NameCipher::new(&Key256::generate());
    let sealed = names.encrypt(NamePurpose::Entry, &[4; 16], b"a file name.txt");
    fuzz("encrypted name", 7, std::slice::from_ref(&sealed), |b| {
        match names.decrypt(NamePurpose::Entry, &[4; 16], b) {
            Ok(n) => {
                assert_eq!((b, &n[..]), (&sealed[..], &b"a file name.txt"[..]));
                true
            }
            Err(_) => false,
        }
    });
    let link = names.seal_random(NamePurpose::SymlinkTarget, &[0; 16], b"../target");
    fuzz("symlink target", 8, std::slice::from_ref(&link), |b| {
        names.open_random(NamePurpose::SymlinkTarget, &[0; 16], b).is_ok()
    });

    for cipher in [DataCipher::gcm_siv(&Key256::generate()), DataCipher::xts(&Key512::generate())] {
        let aad = BlockAad { volume_id: [1; 16], file_id: [2; 16], block_index: 7 };
        let mut slot = vec![0u8; cipher.slot_size()];
        let plain: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        cipher.seal(&aad, &[9; 12], &plain, &mut slot);
        let authenticated = cipher.slot_size() > 4096;
        let mut out = vec![0u8; 4096];
        fuzz("data block", 9, std::slice::from_ref(&slot), |b| {
            // A slot of the wrong size is never passed by the engine; check the right size.
            if b.len() != slot.len() {
                return false;
            }
            let ok = cipher.open(&aad, b, &mut out).is_ok();
            if ok && authenticated {
                assert_eq!((b, &out[..]), (&slot[..], &plain[..]), "GCM-SIV opens only the unchanged slot");
            }
            ok
        });
    }
}

/// Names in the backing tree are input too (anyone with write access to CIPHERDIR can plant
/// them): random and mutated backing names, and a mutated directory id file, never panic a
/// directory listing or a lookup — they are skipped or reported.
#[test]
fn backing_names_and_directory_ids_from_an_attacker() {
    let (_tmp, dir, vol) = common::new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.mkdir(Path::new("/d"), 0o755).unwrap();
    vol.create(Path::new("/d/a-real-file"), 0o644).unwrap().close().unwrap();
    let d = vol.backing_path(Path::new("/d")).unwrap();
    let real_name = vol.backing_path(Path::new("/d/a-real-file")).unwrap().file_name().unwrap().as_bytes().to_vec();
    let real_dirid = std::fs::read(d.join(".dirid")).unwrap_or_default();
    let mut rng = Rng(10);
    let deadline = Instant::now() + budget();
    let mut tried = 0;
    while Instant::now() < deadline || tried < 300 {
        let mut name = mutate(&mut rng, &real_name);
        name.retain(|&c| c != b'/' && c != 0);
        name.truncate(255);
        if name.is_empty() || name == b"." || name == b".." || name == real_name {
            continue;
        }
        let p = d.join(OsStr::from_bytes(&name));
        if std::fs::write(&p, b"planted").is_err() {
            continue;
        }
        let _ = vol.readdir(Path::new("/d"));
        let _ = vol.readdir_plus(Path::new("/d"));
        let _ = std::fs::remove_file(&p);
        tried += 1;
    }
    assert_eq!(vol.readdir(Path::new("/d")).unwrap().len(), 1);
    drop(vol);
    if !real_dirid.is_empty() {
        for i in 0..200 {
            let planted = mutate(&mut rng, &real_dirid);
            std::fs::write(d.join(".dirid"), &planted).unwrap();
            let vol = common::reopen(&dir);
            let listed = vol.readdir(Path::new("/d"));
            if planted != real_dirid {
                assert!(listed.map(|e| e.is_empty()).unwrap_or(true), "mutation {i}: a changed id lists no old names");
            }
        }
    }
}
