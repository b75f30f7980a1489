//! How a mount's transport hands requests to its serving threads, whichever transport this run uses
//! (`common::expected_transport`): a READ never waits behind another one while a serving thread is free.
//! Root required (mounts).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use encfs::fuse::{MountConfig, Transport};
use encfs::tree::{Attr, DirEntry, Errno, FileKind, ReadOnlyTree, ReadReply, StatFs};

/// How long a READ waits for the other one to arrive before it gives up and answers alone.
const RENDEZVOUS: Duration = Duration::from_secs(5);
const FILE_LEN: u64 = 1 << 20;

/// Reads in progress now, and the most seen at once.
#[derive(Default)]
struct InFlight {
    now: usize,
    most: usize,
}

/// Two files, `a` and `b` (inodes 2 and 3), of zeros; each READ waits (up to [`RENDEZVOUS`]) until another READ
/// is in progress, so two READs served at once both return at once, and two served one after the other take
/// [`RENDEZVOUS`] each.
#[derive(Clone, Default)]
struct Rendezvous {
    state: Arc<(Mutex<InFlight>, Condvar)>,
}

impl Rendezvous {
    fn attr(ino: u64) -> Attr {
        let dir = ino == 1;
        Attr {
            ino,
            kind: if dir { FileKind::Dir } else { FileKind::File },
            size: if dir { 0 } else { FILE_LEN },
            blocks: FILE_LEN / 512,
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
            blksize: 4096,
        }
    }

    fn most(&self) -> usize {
        self.state.0.lock().unwrap().most
    }
}

impl ReadOnlyTree for Rendezvous {
    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        match ino {
            1..=3 => Ok(Self::attr(ino)),
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        match (parent, name) {
            (1, b"a") => Ok(Self::attr(2)),
            (1, b"b") => Ok(Self::attr(3)),
            (1, b"." | b"..") => Ok(Self::attr(1)),
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    fn readlink(&self, _ino: u64) -> Result<&[u8], Errno> {
        Err(Errno(libc::EINVAL))
    }

    fn open_file(&self, ino: u64) -> Result<u64, Errno> {
        match ino {
            2 | 3 => Ok(ino),
            _ => Err(Errno(libc::EISDIR)),
        }
    }

    fn open_dir(&self, ino: u64) -> Result<(), Errno> {
        match ino {
            1 => Ok(()),
            _ => Err(Errno(libc::ENOTDIR)),
        }
    }

    fn readdir(&self, _ino: u64, _offset: u64, _add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno> {
        Ok(())
    }

    fn statfs(&self) -> StatFs {
        StatFs {
            bytes: 2 * FILE_LEN,
            files: 2,
        }
    }

    fn read(&self, _ino: u64, _fh: u64, offset: u64, size: u32, reply: impl ReadReply) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.now += 1;
        s.most = s.most.max(s.now);
        cv.notify_all();
        let deadline = Instant::now() + RENDEZVOUS;
        while s.most < 2 && Instant::now() < deadline {
            s = cv.wait_timeout(s, deadline - Instant::now()).unwrap().0;
        }
        s.now -= 1;
        drop(s);
        let n = FILE_LEN.saturating_sub(offset).min(u64::from(size)) as usize;
        reply.data(&vec![0u8; n]);
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    #[allow(unsafe_code)]
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; the syscall only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

/// Two readers on one CPU (so over io_uring both READs land on that CPU's queue) of a mount with two serving
/// threads: both READs are served at once. A transport that let one thread take the second READ while busy with
/// the first (a ring with several entries: the kernel gives a request to the first free entry of its queue)
/// would serve them one after the other, each after [`RENDEZVOUS`].
#[test]
fn two_reads_from_one_cpu_are_served_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let want: Transport = common::expected_transport().parse().unwrap();
    let cfg = MountConfig {
        threads: 2,
        fs_name: "rendezvous".into(),
        transport: want,
        ..MountConfig::default()
    };
    let tree = Rendezvous::default();
    // Dropping the session (if an assertion fails) detaches the mount.
    let session = encfs::fuse::mount_tree(tree.clone(), &mnt, &cfg).unwrap();
    assert_eq!(session.transport(), want);

    // The CPU this test runs on (one the process may use, whatever its affinity mask).
    #[allow(unsafe_code)]
    // SAFETY: no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for name in ["a", "b"] {
            let path = mnt.join(name);
            s.spawn(move || {
                pin_to(cpu);
                let mut buf = [0u8; 4096];
                std::fs::File::open(&path).unwrap().read_exact_at(&mut buf, 0).unwrap();
            });
        }
    });
    let took = start.elapsed();
    assert_eq!(tree.most(), 2, "READs in progress at once (took {took:?})");
    assert!(
        took < RENDEZVOUS,
        "the two reads took {took:?}: one waited for the other"
    );
    session.unmount().unwrap();
    assert!(!common::is_mounted(&mnt));
}
