//! Serves parsed FUSE requests from a [`ReadOnlyTree`], whatever transport carried them: each request becomes one
//! tree call, each result one reply handed to the transport's [`Responder`] (`/dev/fuse` or a ring entry).

use std::time::{Duration, SystemTime};

use zerocopy::IntoBytes;

use super::abi;
use super::proto::{self, Request};
use crate::fs::MAX_READ;
use crate::tree::{self, Attr, FileKind, ReadOnlyTree, ReadReply};

/// Entry and attribute lifetime (the image never changes under a mount).
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Where one request's reply goes, exactly once. A responder dropped without replying answers `EIO`, so a request
/// whose handler panicked is still answered and the transport's buffer comes back.
pub(crate) trait Responder: Send + 'static {
    /// Sends the reply: `error` 0 with `args`, or a negative errno with none.
    fn send(self, error: i32, args: &[&[u8]]);
    /// Ends a request that takes no reply (`FORGET`, `INTERRUPT`).
    fn silent(self);
    /// The transport's reply buffer for data, if it has one (see [`ReadReply::buffer`]).
    fn buffer(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// Sends the first `len` bytes of [`Self::buffer`] as the reply.
    fn send_filled(self, len: usize)
    where
        Self: Sized,
    {
        let _ = len;
        self.send(-libc::EIO, &[]);
    }
}

fn ok<R: Responder>(r: R, args: &[&[u8]]) {
    r.send(0, args);
}

fn fail<R: Responder>(r: R, e: tree::Errno) {
    r.send(-e.0, &[]);
}

struct ReadAnswer<R>(R);

impl<R: Responder> ReadReply for ReadAnswer<R> {
    fn data(self, data: &[u8]) {
        self.0.send(0, &[data]);
    }

    fn error(self, errno: tree::Errno) {
        fail(self.0, errno);
    }

    fn buffer(&mut self) -> Option<&mut [u8]> {
        self.0.buffer()
    }

    fn filled(self, len: usize) {
        self.0.send_filled(len);
    }
}

/// The kernel's `fuse_attr` for `a`.
fn attr(a: &Attr) -> abi::Attr {
    let typ = match a.kind {
        FileKind::Dir => libc::S_IFDIR,
        FileKind::File => libc::S_IFREG,
        FileKind::Symlink => libc::S_IFLNK,
    };
    let t = a.mtime.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: t.as_secs(),
        mtime: t.as_secs(),
        ctime: t.as_secs(),
        atimensec: t.subsec_nanos(),
        mtimensec: t.subsec_nanos(),
        ctimensec: t.subsec_nanos(),
        mode: typ | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn dirent_type(kind: FileKind) -> u32 {
    u32::from(match kind {
        FileKind::Dir => libc::DT_DIR,
        FileKind::File => libc::DT_REG,
        FileKind::Symlink => libc::DT_LNK,
    })
}

/// Answers `req` (about node `nodeid`) from `tree` through `r`. `INIT` and `DESTROY` are the transport's; here
/// they get an empty reply.
fn dispatch<T: ReadOnlyTree, R: Responder>(tree: &T, nodeid: u64, req: Request<'_>, r: R) {
    match req {
        Request::Lookup { name } => match tree.lookup(nodeid, name) {
            Ok(a) => {
                let e = abi::EntryOut {
                    nodeid: a.ino,
                    generation: 0,
                    entry_valid: TTL.as_secs(),
                    attr_valid: TTL.as_secs(),
                    entry_valid_nsec: 0,
                    attr_valid_nsec: 0,
                    attr: attr(&a),
                };
                ok(r, &[e.as_bytes()]);
            }
            Err(e) => fail(r, e),
        },
        Request::Getattr => match tree.getattr(nodeid) {
            Ok(a) => {
                let out = abi::AttrOut {
                    attr_valid: TTL.as_secs(),
                    attr_valid_nsec: 0,
                    dummy: 0,
                    attr: attr(&a),
                };
                ok(r, &[out.as_bytes()]);
            }
            Err(e) => fail(r, e),
        },
        Request::Readlink => match tree.readlink(nodeid) {
            Ok(t) => ok(r, &[t]),
            Err(e) => fail(r, e),
        },
        Request::Open { flags } => {
            if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
                fail(r, tree::Errno(libc::EROFS));
                return;
            }
            // The image never changes under a mount: the page cache may outlive an open.
            match tree.open_file(nodeid) {
                Ok(fh) => {
                    let out = abi::OpenOut {
                        fh,
                        open_flags: abi::FOPEN_KEEP_CACHE,
                        backing_id: 0,
                    };
                    ok(r, &[out.as_bytes()]);
                }
                Err(e) => fail(r, e),
            }
        }
        Request::Read { fh, offset, size } => tree.read(nodeid, fh, offset, size.min(MAX_READ), ReadAnswer(r)),
        Request::Release { fh } => {
            tree.release(fh);
            ok(r, &[]);
        }
        Request::Flush | Request::Releasedir | Request::Init(_) | Request::Destroy => ok(r, &[]),
        Request::Opendir => match tree.open_dir(nodeid) {
            Ok(()) => {
                let out = abi::OpenOut {
                    fh: 0,
                    open_flags: abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR,
                    backing_id: 0,
                };
                ok(r, &[out.as_bytes()]);
            }
            Err(e) => fail(r, e),
        },
        Request::Readdir { offset, size } => {
            let limit = size as usize;
            let mut buf = Vec::with_capacity(limit.min(64 << 10));
            let listed = tree.readdir(nodeid, offset, &mut |e| {
                !proto::push_dirent(&mut buf, limit, e.ino, e.next_offset, dirent_type(e.kind), e.name)
            });
            match listed {
                Ok(()) => ok(r, &[&buf]),
                Err(e) => fail(r, e),
            }
        }
        Request::Statfs => {
            let s = tree.statfs();
            let bsize = 4096u32;
            let out = abi::StatfsOut {
                blocks: s.bytes.div_ceil(u64::from(bsize)),
                files: s.files,
                bsize,
                namelen: crate::format::MAX_NAME_LEN as u32,
                frsize: bsize,
                ..Default::default()
            };
            ok(r, &[out.as_bytes()]);
        }
        Request::Getxattr { .. } => fail(r, tree::Errno(libc::ENODATA)),
        Request::Listxattr { size } => {
            if size == 0 {
                ok(r, &[abi::GetxattrOut::default().as_bytes()]);
            } else {
                ok(r, &[]);
            }
        }
        // No ioctls: ENOTTY, as a regular file on a disk filesystem answers (Python's `open` asks TCGETS).
        Request::Ioctl => fail(r, tree::Errno(libc::ENOTTY)),
        // Permission bits are enforced by the kernel (`default_permissions`); this only checks existence.
        Request::Access => match tree.getattr(nodeid) {
            Ok(_) => ok(r, &[]),
            Err(e) => fail(r, e),
        },
        Request::Forget | Request::Interrupt => r.silent(),
        Request::Unsupported(_) => fail(r, tree::Errno(libc::ENOSYS)),
    }
}

/// [`dispatch`] under `catch_unwind`: a panic while serving one request is counted and logged, and the request is
/// answered `EIO` (the responder, dropped while unwinding, sends it); the serving thread goes on.
pub(crate) fn dispatch_guarded<T: ReadOnlyTree, R: Responder>(tree: &T, nodeid: u64, req: Request<'_>, r: R) {
    let op = request_name(&req);
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(tree, nodeid, req, r))) {
        super::note_panic(op, panic.as_ref());
    }
}

fn request_name(req: &Request<'_>) -> &'static str {
    match req {
        Request::Init(_) => "init",
        Request::Lookup { .. } => "lookup",
        Request::Forget => "forget",
        Request::Getattr => "getattr",
        Request::Readlink => "readlink",
        Request::Open { .. } => "open",
        Request::Read { .. } => "read",
        Request::Release { .. } => "release",
        Request::Flush => "flush",
        Request::Opendir => "opendir",
        Request::Readdir { .. } => "readdir",
        Request::Releasedir => "releasedir",
        Request::Statfs => "statfs",
        Request::Getxattr { .. } => "getxattr",
        Request::Listxattr { .. } => "listxattr",
        Request::Ioctl => "ioctl",
        Request::Access => "access",
        Request::Interrupt => "interrupt",
        Request::Destroy => "destroy",
        Request::Unsupported(_) => "unsupported",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use zerocopy::FromBytes;

    use super::*;
    use crate::tree::{DirEntry, Errno, StatFs};

    /// One directory (1) holding one file (2) of 10 bytes; reading offset 666 panics.
    struct Tiny;

    impl ReadOnlyTree for Tiny {
        fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
            let kind = if ino == 1 { FileKind::Dir } else { FileKind::File };
            Ok(Attr {
                ino,
                kind,
                size: 10,
                blocks: 1,
                perm: 0o444,
                nlink: 1,
                uid: 0,
                gid: 0,
                mtime: SystemTime::UNIX_EPOCH + Duration::new(5, 7),
                blksize: 4096,
            })
        }
        fn lookup(&self, _parent: u64, name: &[u8]) -> Result<Attr, Errno> {
            match name {
                b"f" => self.getattr(2),
                _ => Err(Errno(libc::ENOENT)),
            }
        }
        fn readlink(&self, _ino: u64) -> Result<&[u8], Errno> {
            Err(Errno(libc::EINVAL))
        }
        fn open_file(&self, _ino: u64) -> Result<u64, Errno> {
            Ok(42)
        }
        fn open_dir(&self, _ino: u64) -> Result<(), Errno> {
            Ok(())
        }
        fn readdir(&self, _ino: u64, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno> {
            let names: [&[u8]; 3] = [b".", b"..", b"a-rather-long-file-name"];
            for (i, name) in names.iter().enumerate().skip(offset as usize) {
                let e = DirEntry {
                    ino: 1 + i as u64,
                    next_offset: i as u64 + 1,
                    kind: FileKind::File,
                    name,
                };
                if add(e) {
                    break;
                }
            }
            Ok(())
        }
        fn statfs(&self) -> StatFs {
            StatFs { bytes: 10, files: 1 }
        }
        fn read(&self, _ino: u64, _fh: u64, offset: u64, size: u32, mut reply: impl ReadReply) {
            assert_ne!(offset, 666, "a handler bug");
            let data = b"0123456789";
            let n = (size as usize).min(10 - offset.min(10) as usize);
            if let Some(dst) = reply.buffer() {
                dst[..n].copy_from_slice(&data[offset as usize..offset as usize + n]);
                reply.filled(n);
            } else {
                reply.data(&data[offset as usize..offset as usize + n]);
            }
        }
    }

    /// What a responder was given: (error, bytes); `None` for a silent end.
    type Got = Arc<Mutex<Vec<Option<(i32, Vec<u8>)>>>>;

    struct Capture {
        got: Got,
        done: bool,
        /// Offer a reply buffer (as the io_uring transport does).
        buffer: Option<Vec<u8>>,
    }

    impl Responder for Capture {
        fn send(mut self, error: i32, args: &[&[u8]]) {
            self.done = true;
            self.got.lock().unwrap().push(Some((error, args.concat())));
        }
        fn silent(mut self) {
            self.done = true;
            self.got.lock().unwrap().push(None);
        }
        fn buffer(&mut self) -> Option<&mut [u8]> {
            self.buffer.as_deref_mut()
        }
        fn send_filled(mut self, len: usize) {
            self.done = true;
            let data = self.buffer.as_ref().unwrap()[..len].to_vec();
            self.got.lock().unwrap().push(Some((0, data)));
        }
    }

    impl Drop for Capture {
        fn drop(&mut self) {
            if !self.done {
                self.got.lock().unwrap().push(Some((-libc::EIO, Vec::new())));
            }
        }
    }

    fn ask(req: Request<'_>, buffer: Option<Vec<u8>>) -> Option<(i32, Vec<u8>)> {
        let got = Got::default();
        let r = Capture {
            got: got.clone(),
            done: false,
            buffer,
        };
        dispatch_guarded(&Tiny, 2, req, r);
        let mut got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "exactly one answer");
        got.pop().unwrap()
    }

    #[test]
    fn each_request_gets_the_answer_the_kernel_expects() {
        let (e, out) = ask(Request::Lookup { name: b"f" }, None).unwrap();
        let entry = abi::EntryOut::read_from_bytes(&out).unwrap();
        assert_eq!(
            (e, entry.nodeid, entry.attr.size, entry.attr.mtime, entry.attr.mtimensec),
            (0, 2, 10, 5, 7)
        );
        assert_eq!(entry.attr.mode, libc::S_IFREG | 0o444);
        assert_eq!(ask(Request::Lookup { name: b"g" }, None).unwrap().0, -libc::ENOENT);
        // Writes are refused; reads keep the page cache.
        assert_eq!(
            ask(
                Request::Open {
                    flags: libc::O_RDWR as u32
                },
                None
            )
            .unwrap()
            .0,
            -libc::EROFS
        );
        let (e, out) = ask(Request::Open { flags: 0 }, None).unwrap();
        let open = abi::OpenOut::read_from_bytes(&out).unwrap();
        assert_eq!((e, open.fh, open.open_flags), (0, 42, abi::FOPEN_KEEP_CACHE));
        assert_eq!(ask(Request::Unsupported(16), None).unwrap().0, -libc::ENOSYS);
        assert_eq!(ask(Request::Getxattr { size: 64 }, None).unwrap().0, -libc::ENODATA);
        assert_eq!(ask(Request::Listxattr { size: 0 }, None).unwrap().1.len(), 8);
        assert_eq!(ask(Request::Ioctl, None).unwrap().0, -libc::ENOTTY);
        assert_eq!(ask(Request::Forget, None), None);
        let (_, out) = ask(Request::Statfs, None).unwrap();
        assert_eq!(
            abi::StatfsOut::read_from_bytes(&out).unwrap().namelen,
            crate::format::MAX_NAME_LEN as u32
        );
    }

    #[test]
    fn readdir_stops_at_the_size_asked_and_resumes_from_the_offset() {
        let (_, out) = ask(Request::Readdir { offset: 0, size: 64 }, None).unwrap();
        assert_eq!(out.len(), 64, "`.` and `..` fit, the long name does not");
        let (_, out) = ask(Request::Readdir { offset: 2, size: 4096 }, None).unwrap();
        let (d, rest) = abi::Dirent::read_from_prefix(&out).unwrap();
        assert_eq!((d.off, d.namelen, d.typ), (3, 23, u32::from(libc::DT_REG)));
        assert_eq!(&rest[..23], b"a-rather-long-file-name");
        assert_eq!(out.len(), 48);
    }

    #[test]
    fn reads_use_the_reply_buffer_when_there_is_one_and_a_panic_answers_eio() {
        let read = |offset| Request::Read {
            fh: 42,
            offset,
            size: 4,
        };
        assert_eq!(ask(read(3), None).unwrap(), (0, b"3456".to_vec()));
        assert_eq!(ask(read(3), Some(vec![0; 16])).unwrap(), (0, b"3456".to_vec()));
        assert_eq!(ask(read(8), None).unwrap(), (0, b"89".to_vec()));
        let before = super::super::handler_panics();
        assert_eq!(ask(read(666), None).unwrap().0, -libc::EIO);
        assert_eq!(super::super::handler_panics(), before + 1);
    }
}
