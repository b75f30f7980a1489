//! A null filesystem: the FUSE ceiling for the read benchmark (`benches/encfs-read.sh`).
//!
//! It mounts one read-only file, `zero.bin`, whose READs are answered from a static zero buffer: no I/O, no
//! crypto. It is a [`ReadOnlyTree`] served by the same FUSE code as `cinfer-encfs mount`
//! ([`encfs::fuse::mount_tree`]: the same transports, threads with cloned `/dev/fuse` fds or io_uring queues,
//! `max_background` 64, 1 MiB `max_read`, `FOPEN_KEEP_CACHE`), so a cold read through it is what FUSE alone
//! reaches on the machine with that transport, and the encfs figure can be stated as a fraction of it.
//!
//! With a `BACKING` file, READs are answered with `pread`s of that file instead (a copy filesystem: FUSE plus
//! reading the image, no crypto), which is the most any daemon reaches that has to read its image from where it
//! lives, as encfs and gocryptfs both do.
//!
//! Usage: `nullfs MOUNTPOINT SIZE_BYTES [THREADS [BACKING]]`, transport from `NULLFS_TRANSPORT`
//! (`auto`, `uring`, `classic`; default `auto`); runs in the foreground until unmounted (`umount MOUNTPOINT`).
//! The benchmark raises the readahead in sysfs as it does for encfs.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use encfs::fuse::{MountConfig, Transport};
use encfs::tree::{Attr, DirEntry, Errno, FileKind, ReadOnlyTree, ReadReply, StatFs};

const FILE_INO: u64 = 2;
const NAME: &[u8] = b"zero.bin";
const MAX_READ: u32 = 1 << 20;
static ZEROS: [u8; MAX_READ as usize] = [0; MAX_READ as usize];

struct NullFs {
    size: u64,
    /// Read replies from this file instead of the zero buffer.
    backing: Option<std::fs::File>,
}

thread_local! {
    /// One reply buffer per serving thread for the copy filesystem.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl NullFs {
    fn attr(&self, ino: u64) -> Attr {
        let dir = ino == 1;
        Attr {
            ino,
            kind: if dir { FileKind::Dir } else { FileKind::File },
            size: if dir { 0 } else { self.size },
            blocks: self.size.div_ceil(512),
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
            blksize: 4096,
        }
    }
}

impl ReadOnlyTree for NullFs {
    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        match ino {
            1 | FILE_INO => Ok(self.attr(ino)),
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        match (parent, name) {
            (1, NAME) => Ok(self.attr(FILE_INO)),
            (1, b"." | b"..") => Ok(self.attr(1)),
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    fn readlink(&self, _ino: u64) -> Result<&[u8], Errno> {
        Err(Errno(libc::EINVAL))
    }

    fn open_file(&self, ino: u64) -> Result<u64, Errno> {
        match ino {
            FILE_INO => Ok(1),
            _ => Err(Errno(libc::EISDIR)),
        }
    }

    fn open_dir(&self, ino: u64) -> Result<(), Errno> {
        match ino {
            1 => Ok(()),
            _ => Err(Errno(libc::ENOTDIR)),
        }
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno> {
        if ino != 1 {
            return Err(Errno(libc::ENOTDIR));
        }
        let entries: [(u64, FileKind, &[u8]); 3] = [
            (1, FileKind::Dir, b"."),
            (1, FileKind::Dir, b".."),
            (FILE_INO, FileKind::File, NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            let full = add(DirEntry {
                ino,
                next_offset: (i + 1) as u64,
                kind,
                name,
            });
            if full {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self) -> StatFs {
        StatFs {
            bytes: self.size,
            files: 1,
        }
    }

    fn read(&self, _ino: u64, _fh: u64, offset: u64, size: u32, mut reply: impl ReadReply) {
        let n = self.size.saturating_sub(offset).min(u64::from(size.min(MAX_READ)));
        let Some(file) = &self.backing else {
            // INVARIANT: n <= MAX_READ, the buffer's length.
            reply.data(&ZEROS[..n as usize]);
            return;
        };
        // Read straight into the transport's reply buffer (a ring entry, or a classic request thread's page-aligned
        // buffer), as encfs decrypts into it.
        if let Some(dst) = reply.buffer() {
            let n = (n as usize).min(dst.len());
            match std::os::unix::fs::FileExt::read_exact_at(file, &mut dst[..n], offset) {
                Ok(()) => reply.filled(n),
                Err(_) => reply.error(Errno(libc::EIO)),
            }
            return;
        }
        BUF.with_borrow_mut(|buf| {
            buf.resize(n as usize, 0);
            match std::os::unix::fs::FileExt::read_exact_at(file, buf, offset) {
                Ok(()) => reply.data(buf),
                Err(_) => reply.error(Errno(libc::EIO)),
            }
        });
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
    let transport: Transport = std::env::var("NULLFS_TRANSPORT")
        .unwrap_or_else(|_| "auto".into())
        .parse()
        .map_err(io::Error::other)?;
    let cfg = MountConfig {
        threads: threads.max(1),
        fs_name: "nullfs".into(),
        transport,
        ..MountConfig::default()
    };
    let session = encfs::fuse::mount_tree(NullFs { size, backing }, Path::new(&mountpoint), &cfg)?;
    eprintln!("nullfs: mounted, transport={}", session.transport());
    while !session.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = session.finish_ended();
    Ok(())
}
