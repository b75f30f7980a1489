//! AES-XTS throughput for legacy LUKS2 images: `encfs::legacy::xts` (batched) against the `xts-mode` crate (one
//! AES block at a time), decrypting 4096-byte sectors with a 512-bit key on one core, and the whole read path
//! (`DecryptedDevice` over memory) in 32 KiB reads, as ext4-view issues them.
//!
//! Run: `cargo bench -p encfs --no-default-features --bench legacy_xts`. Prints GB/s of wall time and of this
//! thread's CPU time (from `/proc/thread-self/stat`, so a loaded machine does not skew it); medians of 7 runs.
//! With `CINFER_LEGACY_BENCH=IMAGE:KEYFILE:/path/in/ext4` it also reads that file of a real legacy image
//! sequentially in 1 MiB reads, continuing (one open file) and seeking before every read (a fresh position, as
//! when FUSE threads take turns).

use std::time::Instant;

use aes::Aes256;
use aes::cipher::KeyInit;
use encfs::legacy::xts::{AesXts, IvMode};
use encfs::legacy::{DecryptedDevice, ReadAt, SegmentParams};
use xts_mode::{Xts128, get_tweak_default};

const TOTAL: usize = 256 << 20;
const SECTOR: usize = 4096;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// This thread's user + system CPU time in seconds (clock ticks of 10 ms).
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// (wall GB/s, CPU GB/s), medians of 7 runs.
fn gbps(bytes: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let (t, c) = (Instant::now(), thread_cpu_secs());
        f();
        wall.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        cpu.push(bytes as f64 / (thread_cpu_secs() - c).max(0.01) / 1e9);
    }
    (median(wall), median(cpu))
}

fn main() {
    let key: Vec<u8> = (0..64u8).collect();
    let mut buf = vec![0x5au8; TOTAL];

    let ours = AesXts::new(&key).expect("64-byte key");
    let batched = gbps(TOTAL, || ours.decrypt_sectors(&mut buf, SECTOR, 0, 8));

    let reference = Xts128::<Aes256>::new(
        Aes256::new_from_slice(&key[..32]).expect("key"),
        Aes256::new_from_slice(&key[32..]).expect("key"),
    );
    let crate_gbps = gbps(TOTAL, || reference.decrypt_area(&mut buf, SECTOR, 0, get_tweak_default));

    let image = vec![0xa5u8; 64 << 20];
    let params = SegmentParams {
        offset: 0,
        size: image.len() as u64,
        sector_size: SECTOR as u32,
        iv_mode: IvMode::Sectors512,
        iv_offset: 0,
    };
    let dev = DecryptedDevice::new(image, &key, params).expect("device");
    const READ: usize = 32 << 10;
    let mut read = vec![0u8; READ];
    let device_gbps = gbps(64 << 20, || {
        for i in 0..(64 << 20) / READ {
            dev.read_exact_at(&mut read, (i * READ) as u64).expect("read");
        }
    });

    println!("aes-256-xts decrypt, 4096-byte sectors, one thread (GB/s of wall time / of CPU time):");
    println!("  encfs::legacy::xts (batched)  {:6.2} / {:6.2}", batched.0, batched.1);
    println!(
        "  xts-mode 0.6 (block by block) {:6.2} / {:6.2}",
        crate_gbps.0, crate_gbps.1
    );
    println!(
        "  DecryptedDevice, 32 KiB reads {:6.2} / {:6.2} (memory source)",
        device_gbps.0, device_gbps.1
    );

    if let Ok(spec) = std::env::var("CINFER_LEGACY_BENCH") {
        file_bench(&spec);
    }
}

fn file_bench(spec: &str) {
    let mut parts = spec.splitn(3, ':');
    let (Some(image), Some(key), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("CINFER_LEGACY_BENCH=IMAGE:KEYFILE:/path");
    };
    let key = std::fs::read(key).expect("key file");
    let img = encfs::legacy::LegacyImage::open(std::fs::File::open(image).expect("image"), &key).expect("open");
    let fs = img.ext4().expect("ext4");
    let mut buf = vec![0u8; 1 << 20];
    let size = fs.open(path.as_bytes()).expect("open file").size();
    let mut f = fs.open(path.as_bytes()).expect("open file");
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        off += f.read_at(off, &mut buf).expect("read") as u64;
    }
    let seq = size as f64 / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        let mut g = fs.open(path.as_bytes()).expect("open file");
        off += g.read_at(off, &mut buf).expect("read") as u64;
    }
    let seeking = size as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!("{path} ({size} bytes) through LUKS2 + ext4, 1 MiB reads:");
    println!("  one open file, sequential     {seq:6.2} GB/s");
    println!("  reopen + seek before each read {seeking:6.2} GB/s");
}
