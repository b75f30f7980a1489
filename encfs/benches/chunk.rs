//! Crypto microbenchmark behind the default chunk size (`docs/FORMAT.md`): seal and open throughput of one chunk
//! at sizes from 4 KiB to 4 MiB on one core, and SHA-256 (the per-file digest) for comparison.
//!
//! Run: `cargo bench -p encfs --no-default-features --bench chunk`. Prints GB/s per size; the median of 7 runs.

use std::time::Instant;

use encfs::format::{ImageKeys, ModelKey, OpenedChunk, open_chunk_into, seal_chunk};
use sha2::{Digest, Sha256};

const TOTAL: usize = 256 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gbps(bytes: usize, f: impl Fn()) -> f64 {
    median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                f();
                bytes as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .collect(),
    )
}

fn main() {
    let keys = ImageKeys::derive(&ModelKey::new([7; 32]), &[1; 32]);
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "chunk", "seal GB/s", "open GB/s", "open+copy"
    );
    for cs in [4usize << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20] {
        let n = TOTAL / cs;
        let plain = vec![0x5au8; cs];
        let mut sealed = plain.clone();
        seal_chunk(&keys, 3, &mut sealed);
        let seal = gbps(TOTAL, || {
            let mut buf = Vec::with_capacity(cs + 16);
            for i in 0..n {
                buf.clear();
                buf.extend_from_slice(&plain);
                seal_chunk(&keys, i as u64, &mut buf);
            }
            std::hint::black_box(&buf);
        });
        let open = gbps(TOTAL, || {
            let mut out = vec![0u8; cs];
            for _ in 0..n {
                open_chunk_into(&keys, 3, &sealed, &mut out).expect("authentic");
            }
            std::hint::black_box(&out);
        });
        let open_alloc = gbps(TOTAL, || {
            for _ in 0..n {
                std::hint::black_box(OpenedChunk::open(&keys, 3, &sealed).expect("authentic"));
            }
        });
        println!("{:>7}K {seal:>10.2} {open:>10.2} {open_alloc:>10.2}", cs >> 10);
    }
    let data = vec![0x33u8; TOTAL];
    let sha = gbps(TOTAL, || {
        std::hint::black_box(Sha256::digest(&data));
    });
    println!("sha256: {sha:.2} GB/s");
}
