//! Single-core crypto and key-path throughput: block seal/open for both ciphers (and the
//! RustCrypto GCM-SIV as a reference), DEK wrap/unwrap. Run with `cargo bench --bench crypto`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use envelopefs::crypto::{BlockAad, DataCipher, Key256, Key512, KeyWrapper, BLOCK_SIZE};

fn blocks(c: &mut Criterion) {
    let aad = BlockAad { volume_id: [1; 16], file_id: [2; 16], block_index: 3 };
    let plain = vec![0x5Au8; BLOCK_SIZE];
    let mut g = c.benchmark_group("block");
    g.throughput(Throughput::Bytes(BLOCK_SIZE as u64));
    for (name, cipher) in
        [("gcm-siv", DataCipher::gcm_siv(&Key256::generate())), ("xts", DataCipher::xts(&Key512::generate()))]
    {
        let mut slot = vec![0u8; cipher.slot_size()];
        let mut out = vec![0u8; BLOCK_SIZE];
        g.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| cipher.seal(black_box(&aad), &[7; 12], black_box(&plain), &mut slot))
        });
        cipher.seal(&aad, &[7; 12], &plain, &mut slot);
        g.bench_function(format!("open/{name}"), |b| {
            b.iter(|| cipher.open(black_box(&aad), black_box(&slot), &mut out).unwrap())
        });
    }
    // The RustCrypto GCM-SIV that data blocks used before AWS-LC's: the reference row.
    {
        use aes_gcm_siv::aead::{AeadInOut, KeyInit};
        let rc = aes_gcm_siv::Aes256GcmSiv::new(&[7u8; 32].into());
        let mut body = plain.clone();
        g.bench_function("seal/gcm-siv-rustcrypto", |b| {
            b.iter(|| rc.encrypt_inout_detached(&[7; 12].into(), &aad.encode(), body.as_mut_slice().into()).unwrap())
        });
        let tag = rc.encrypt_inout_detached(&[7; 12].into(), &aad.encode(), body.as_mut_slice().into()).unwrap();
        let mut out = body.clone();
        g.bench_function("open/gcm-siv-rustcrypto", |b| {
            b.iter(|| {
                out.copy_from_slice(&body);
                rc.decrypt_inout_detached(&[7; 12].into(), &aad.encode(), out.as_mut_slice().into(), &tag).unwrap()
            })
        });
    }
    g.finish();
}

fn wrapping(c: &mut Criterion) {
    let kek = KeyWrapper::new(&Key256::generate());
    let dek = Key256::generate();
    let aad = [9u8; 64];
    let wrapped = kek.wrap(&dek, &aad);
    let mut g = c.benchmark_group("dek");
    g.bench_function("wrap", |b| b.iter(|| kek.wrap(black_box(&dek), &aad)));
    g.bench_function("unwrap", |b| b.iter(|| kek.unwrap::<32>(black_box(&wrapped), &aad).unwrap()));
    g.bench_function("unwrap+key-schedule", |b| {
        b.iter(|| DataCipher::gcm_siv(&kek.unwrap::<32>(black_box(&wrapped), &aad).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = blocks, wrapping
}
criterion_main!(benches);
