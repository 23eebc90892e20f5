//! The file-system core without the kernel: read and write throughput of an open file and
//! create/stat/unlink rates, on a volume in a temp dir (tmpfs when available). Regressions in
//! the data and metadata paths show here without mounting. Run with `cargo bench --bench fs`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use envelopefs::format::{CipherKind, KdfParams};
use envelopefs::fs::{InitOptions, Volume};
use envelopefs::secret::Passphrase;

const MIB: usize = 1 << 20;

fn volume(cipher: CipherKind) -> (tempfile::TempDir, Volume) {
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let tmp = tempfile::Builder::new().prefix("evfs-bench-").tempdir_in(base).unwrap();
    let dir = tmp.path().join("vol");
    let pass = Passphrase::new("bench").unwrap();
    let opts = InitOptions {
        cipher,
        extent_shift: 20,
        kms_uri: None,
        kdf: KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 },
        create_key: false,
        format: None,
    };
    Volume::init(&dir, &opts, &pass).unwrap();
    let vol = Volume::open(&dir, &pass).unwrap();
    (tmp, vol)
}

fn data_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("data");
    g.measurement_time(Duration::from_secs(4));
    for (name, cipher) in [("gcm-siv", CipherKind::Aes256GcmSiv), ("xts", CipherKind::Aes256Xts)] {
        let (_tmp, vol) = volume(cipher);
        let f = vol.create(Path::new("f"), 0o600).unwrap();
        let buf = vec![0x5Au8; MIB];
        for i in 0..16 {
            f.write_at((i * MIB) as u64, &buf).unwrap();
        }
        f.sync().unwrap();
        let mut out = vec![0u8; 128 << 10];
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_function(format!("read-128k/{name}"), |b| {
            let mut off = 0u64;
            b.iter(|| {
                f.read_at(off, black_box(&mut out)).unwrap();
                off = (off + out.len() as u64) % (16 * MIB) as u64;
            })
        });
        g.throughput(Throughput::Bytes(MIB as u64));
        g.bench_function(format!("write-1m/{name}"), |b| {
            let mut off = 0u64;
            b.iter(|| {
                f.write_at(off, black_box(&buf)).unwrap();
                off = (off + MIB as u64) % (16 * MIB) as u64;
            })
        });
        let mut small = vec![0u8; 4096];
        g.throughput(Throughput::Bytes(4096));
        g.bench_function(format!("read-4k-random/{name}"), |b| {
            let mut x = 1u64;
            b.iter(|| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                f.read_at((x >> 40) % (4096 * 4095), black_box(&mut small)).unwrap();
            })
        });
        f.close().unwrap();
    }
    g.finish();
}

fn metadata_path(c: &mut Criterion) {
    let (_tmp, vol) = volume(CipherKind::Aes256GcmSiv);
    vol.mkdir(Path::new("d"), 0o700).unwrap();
    vol.mkdir(Path::new("d/e"), 0o700).unwrap();
    let mut g = c.benchmark_group("metadata");
    g.measurement_time(Duration::from_secs(4));
    let mut n = 0u64;
    g.bench_function("create+write+close+unlink", |b| {
        b.iter(|| {
            n += 1;
            let p = format!("d/e/f{n}");
            let f = vol.create(Path::new(&p), 0o600).unwrap();
            f.write_at(0, b"small file").unwrap();
            f.close_deferred().unwrap();
            vol.unlink(Path::new(&p)).unwrap();
        })
    });
    for i in 0..1000 {
        let f = vol.create(Path::new(&format!("d/e/s{i}")), 0o600).unwrap();
        f.write_at(0, b"x").unwrap();
        f.close().unwrap();
    }
    g.bench_function("stat", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(vol.getattr(Path::new(&format!("d/e/s{i}"))).unwrap());
        })
    });
    g.bench_function("readdir-plus-1000", |b| {
        b.iter_batched(|| (), |_| black_box(vol.readdir_plus(Path::new("d/e")).unwrap()), BatchSize::SmallInput)
    });
    g.finish();
}

criterion_group!(benches, data_path, metadata_path);
criterion_main!(benches);
