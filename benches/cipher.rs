//! Page cipher throughput: sqlite-tde's AES-256-XTS against the `aes` crate's raw
//! multi-block throughput (the ceiling: XTS adds only tweak work on top of it) and the
//! `xts-mode` crate, for page sizes 512 B .. 64 KiB.
//!
//! `cargo bench --bench cipher` (CARGO_TARGET_DIR as usual); `-- --quick` for a short run.

use std::hint::black_box;
use std::time::Duration;

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sqlite_tde::crypto::{DataKey, Domain, XtsCipher};

const PAGE_SIZES: [usize; 8] = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

fn key() -> DataKey {
    let bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    DataKey::from_slice(&bytes).expect("distinct halves")
}

fn page_cipher(c: &mut Criterion) {
    let key = key();
    let ours = XtsCipher::new(&key);
    let raw = aes::Aes256::new_from_slice(&key.expose()[..32]).unwrap();
    for (dir, encrypt) in [("encrypt", true), ("decrypt", false)] {
        let mut g = c.benchmark_group(format!("page_cipher/{dir}"));
        for &size in &PAGE_SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let mut buf = vec![0x5au8; size];
            // Offset of page 3 of a database: a realistic tweak sequence.
            let offset = 3 * size as u64;
            g.bench_with_input(BenchmarkId::new("sqlite-tde", size), &size, |b, _| {
                b.iter(|| {
                    if encrypt {
                        ours.encrypt(Domain::Database, offset, black_box(&mut buf));
                    } else {
                        ours.decrypt(Domain::Database, offset, black_box(&mut buf));
                    }
                })
            });
            g.bench_with_input(BenchmarkId::new("aes-raw", size), &size, |b, _| {
                b.iter(|| {
                    let (blocks, _) = Array::slice_as_chunks_mut(black_box(&mut buf[..]));
                    if encrypt {
                        raw.encrypt_blocks(blocks);
                    } else {
                        raw.decrypt_blocks(blocks);
                    }
                })
            });
            if size == 4096 {
                let xts = xts_mode::Xts128::new(
                    aes::Aes256::new_from_slice(&key.expose()[..32]).unwrap(),
                    aes::Aes256::new_from_slice(&key.expose()[32..]).unwrap(),
                );
                g.bench_with_input(BenchmarkId::new("xts-mode", size), &size, |b, _| {
                    b.iter(|| {
                        let t = Array::from(Domain::Database.tweak(3).to_le_bytes());
                        if encrypt {
                            xts.encrypt_sector(black_box(&mut buf), t);
                        } else {
                            xts.decrypt_sector(black_box(&mut buf), t);
                        }
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = page_cipher
}
criterion_main!(benches);
