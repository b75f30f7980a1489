//! SHA-256 throughput of the digest `sign`, `build` and the mount-time gate compute (sha2, SHA-NI when the CPU has
//! it): hashes 1 GiB from memory in 4 MiB updates, 3 times, and prints GB/s by wall time and by this thread's CPU
//! time (the latter is what an idle core reaches when the machine is shared).
//!
//! Run: `cargo run --release -p mkimage --example hash_throughput`.

use std::time::Instant;

use sha2::{Digest, Sha256};

fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    const TOTAL: usize = 1 << 30;
    let buf: Vec<u8> = (0..4usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    for run in 1..=3 {
        let (wall, cpu) = (Instant::now(), thread_cpu_secs());
        let mut h = Sha256::new();
        for _ in 0..TOTAL / buf.len() {
            h.update(&buf);
        }
        let d = h.finalize();
        let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu_secs() - cpu);
        println!(
            "run {run}: 1 GiB in {wall:.3} s wall ({:.2} GB/s), {cpu:.3} s CPU ({:.2} GB/s)  [{:02x}{:02x}..]",
            TOTAL as f64 / wall / 1e9,
            TOTAL as f64 / cpu / 1e9,
            d[0],
            d[1]
        );
    }
}
