//! A null filesystem: the FUSE ceiling for the read benchmark (`benches/encfs-read.sh`).
//!
//! It mounts one read-only file, `zero.bin`, whose READs are answered from a static zero buffer: no I/O, no
//! crypto. It uses the same FUSE settings as `cinfer-encfs mount` (threads with cloned `/dev/fuse` fds,
//! `max_background` 64, 1 MiB `max_read`, `FOPEN_KEEP_CACHE`), so a cold read through it is what FUSE alone
//! reaches on the machine, and the encfs figure can be stated as a fraction of it.
//!
//! With a `BACKING` file, READs are answered with `pread`s of that file instead (a copy filesystem: FUSE plus
//! reading the image, no crypto), which is the most any daemon reaches that has to read its image from where it
//! lives, as encfs and gocryptfs both do.
//!
//! Usage: `nullfs MOUNTPOINT SIZE_BYTES [THREADS [BACKING]]`; runs in the foreground until unmounted
//! (`fusermount3 -u MOUNTPOINT`). The benchmark raises the readahead in sysfs as it does for encfs.

use std::ffi::OsStr;
use std::io;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

const FILE_INO: u64 = 2;
const NAME: &str = "zero.bin";
const MAX_READ: u32 = 1 << 20;
const TTL: Duration = Duration::from_secs(3600);
static ZEROS: [u8; MAX_READ as usize] = [0; MAX_READ as usize];

struct NullFs {
    size: u64,
    /// Read replies from this file instead of the zero buffer.
    backing: Option<std::fs::File>,
}

thread_local! {
    /// One reply buffer per request thread for the copy filesystem.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl NullFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let dir = ino == 1;
        FileAttr {
            ino: INodeNo(ino),
            size: if dir { 0 } else { self.size },
            blocks: self.size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl fuser::Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_background(64);
        let _ = config.set_max_readahead(MAX_READ);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == NAME {
            reply.entry(&TTL, &self.attr(FILE_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 | FILE_INO => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            FILE_INO => reply.opened(FileHandle(1), FopenFlags::FOPEN_KEEP_CACHE),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let n = self.size.saturating_sub(offset).min(u64::from(size.min(MAX_READ)));
        let Some(file) = &self.backing else {
            // INVARIANT: n <= MAX_READ, the buffer's length.
            reply.data(&ZEROS[..n as usize]);
            return;
        };
        BUF.with_borrow_mut(|buf| {
            buf.resize(n as usize, 0);
            match std::os::unix::fs::FileExt::read_exact_at(file, buf, offset) {
                Ok(()) => reply.data(buf),
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: nullfs MOUNTPOINT SIZE_BYTES [THREADS [BACKING]]",
        )
    };
    let mountpoint = args.next().ok_or_else(usage)?;
    let size: u64 = args.next().and_then(|s| s.parse().ok()).ok_or_else(usage)?;
    let threads: usize = args.next().map_or(Some(8), |s| s.parse().ok()).ok_or_else(usage)?;
    let backing = args.next().map(std::fs::File::open).transpose()?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("nullfs".into()),
        MountOption::CUSTOM(format!(
            "max_read={}",
            std::env::var("NULLFS_MAX_READ").unwrap_or_else(|_| (1u32 << 20).to_string())
        )),
    ];
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    fuser::mount(NullFs { size, backing }, mountpoint, &config)
}
