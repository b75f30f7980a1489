//! FUSE requests as the kernel sends them, parsed into [`Request`]s, and the encoding of replies: the one place
//! that reads kernel bytes, for both transports (a `/dev/fuse` message, or an io_uring entry's header, operation
//! struct and payload). Every length is checked; a malformed request is an error, never a panic (fuzzed:
//! `encfs/fuzz`, target `fuse_request`).

use zerocopy::{FromBytes, IntoBytes};

use super::abi::{self, InHeader, op};

/// Why a request could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the request header.
    #[error("request shorter than its header ({0} bytes)")]
    ShortHeader(usize),
    /// The header's length disagrees with the bytes received.
    #[error("request length {declared} but {received} bytes received")]
    Length {
        /// `fuse_in_header.len`.
        declared: u32,
        /// What arrived.
        received: usize,
    },
    /// The operation's fixed part is missing or short.
    #[error("opcode {opcode}: argument of {need} bytes, {have} present")]
    ShortArgument {
        /// The opcode.
        opcode: u32,
        /// Bytes its struct needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A name without its terminating NUL.
    #[error("opcode {0}: name without a terminating NUL")]
    Name(u32),
}

/// One parsed request: what the filesystem is asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Session start (transport level).
    Init(abi::InitIn),
    /// Look `name` up in directory `nodeid`.
    Lookup {
        /// The name, without its NUL.
        name: &'a [u8],
    },
    /// The kernel dropped lookups (no reply).
    Forget,
    /// Attributes of `nodeid`.
    Getattr,
    /// Target of symlink `nodeid`.
    Readlink,
    /// Open file `nodeid` with `flags` (`O_*`).
    Open {
        /// `open(2)` flags.
        flags: u32,
    },
    /// Read `size` bytes at `offset` of file `nodeid` open as `fh`.
    Read {
        /// File handle.
        fh: u64,
        /// Offset.
        offset: u64,
        /// Bytes asked.
        size: u32,
    },
    /// Close of handle `fh`.
    Release {
        /// File handle.
        fh: u64,
    },
    /// `close(2)` of a descriptor (nothing to write back).
    Flush,
    /// Open directory `nodeid`.
    Opendir,
    /// List directory `nodeid` from `offset`, at most `size` bytes of entries.
    Readdir {
        /// Offset to continue from.
        offset: u64,
        /// Reply size limit.
        size: u32,
    },
    /// Close of a directory handle.
    Releasedir,
    /// Filesystem totals.
    Statfs,
    /// An extended attribute (`size` 0 asks for its length).
    Getxattr {
        /// Reply size limit.
        size: u32,
    },
    /// The list of extended attributes (`size` 0 asks for its length).
    Listxattr {
        /// Reply size limit.
        size: u32,
    },
    /// An ioctl on an open file.
    Ioctl,
    /// Permission check of `nodeid`.
    Access,
    /// Interrupt of an earlier request (no reply).
    Interrupt,
    /// Session end.
    Destroy,
    /// Any other opcode (answered `ENOSYS`; writes never reach a read-only mount).
    Unsupported(u32),
}

/// Size of the fixed struct that starts an operation's arguments (0 for those that start with a name or have
/// none): on io_uring this struct travels in the entry's `op_in`, the rest in its payload.
pub fn fixed_size(opcode: u32) -> usize {
    match opcode {
        op::INIT => 16,
        op::FORGET => 8,
        op::BATCH_FORGET => 8,
        op::GETATTR => 16,
        op::OPEN | op::OPENDIR => 8,
        op::READ | op::READDIR => size_of::<abi::ReadIn>(),
        op::RELEASE | op::RELEASEDIR => size_of::<abi::ReleaseIn>(),
        op::FLUSH => 24,
        op::GETXATTR | op::LISTXATTR => size_of::<abi::GetxattrIn>(),
        op::ACCESS => 8,
        op::INTERRUPT => 8,
        op::IOCTL => 32,
        _ => 0,
    }
}

/// Parses a whole `/dev/fuse` message: header, then the operation's arguments.
pub fn parse_message(bytes: &[u8]) -> Result<(InHeader, Request<'_>), ParseError> {
    let (header, body) = InHeader::read_from_prefix(bytes).map_err(|_| ParseError::ShortHeader(bytes.len()))?;
    if header.len as usize != bytes.len() {
        return Err(ParseError::Length {
            declared: header.len,
            received: bytes.len(),
        });
    }
    let n = fixed_size(header.opcode).min(body.len());
    let (fixed, rest) = body.split_at(n);
    Ok((header, parse_args(header.opcode, fixed, rest)?))
}

/// Parses one io_uring entry: the request header from `in_out`, the fixed struct from `op_in` and the rest from
/// the first `payload_len` bytes of `payload`.
pub fn parse_uring<'a>(
    in_out: &[u8],
    op_in: &'a [u8],
    payload: &'a [u8],
    payload_len: usize,
) -> Result<(InHeader, Request<'a>), ParseError> {
    let (header, _) = InHeader::read_from_prefix(in_out).map_err(|_| ParseError::ShortHeader(in_out.len()))?;
    let rest = payload.get(..payload_len).ok_or(ParseError::Length {
        declared: payload_len as u32,
        received: payload.len(),
    })?;
    let fixed = &op_in[..fixed_size(header.opcode).min(op_in.len())];
    Ok((header, parse_args(header.opcode, fixed, rest)?))
}

fn read<T: FromBytes>(opcode: u32, fixed: &[u8]) -> Result<T, ParseError> {
    T::read_from_prefix(fixed)
        .map(|(t, _)| t)
        .map_err(|_| ParseError::ShortArgument {
            opcode,
            need: size_of::<T>(),
            have: fixed.len(),
        })
}

fn name(opcode: u32, rest: &[u8]) -> Result<&[u8], ParseError> {
    let end = rest.iter().position(|&b| b == 0).ok_or(ParseError::Name(opcode))?;
    Ok(&rest[..end])
}

/// Parses the arguments of `opcode`: `fixed` starts with its struct, `rest` holds what follows it.
pub fn parse_args<'a>(opcode: u32, fixed: &'a [u8], rest: &'a [u8]) -> Result<Request<'a>, ParseError> {
    Ok(match opcode {
        op::INIT => {
            // A pre-7.36 kernel sends 16 bytes; the rest reads as zeros.
            if fixed.len() < 16 {
                return Err(ParseError::ShortArgument {
                    opcode,
                    need: 16,
                    have: fixed.len(),
                });
            }
            let mut init = abi::InitIn::default();
            let bytes = init.as_mut_bytes();
            bytes[..16].copy_from_slice(&fixed[..16]);
            let more = rest.len().min(bytes.len() - 16);
            bytes[16..16 + more].copy_from_slice(&rest[..more]);
            Request::Init(init)
        }
        op::LOOKUP => Request::Lookup {
            name: name(opcode, rest)?,
        },
        op::FORGET | op::BATCH_FORGET => {
            read::<u64>(opcode, fixed)?;
            Request::Forget
        }
        op::GETATTR => {
            read::<[u8; 16]>(opcode, fixed)?;
            Request::Getattr
        }
        op::READLINK => Request::Readlink,
        op::OPEN => Request::Open {
            flags: read::<abi::OpenIn>(opcode, fixed)?.flags,
        },
        op::OPENDIR => {
            read::<abi::OpenIn>(opcode, fixed)?;
            Request::Opendir
        }
        op::READ => {
            let r = read::<abi::ReadIn>(opcode, fixed)?;
            Request::Read {
                fh: r.fh,
                offset: r.offset,
                size: r.size,
            }
        }
        op::READDIR => {
            let r = read::<abi::ReadIn>(opcode, fixed)?;
            Request::Readdir {
                offset: r.offset,
                size: r.size,
            }
        }
        op::RELEASE => Request::Release {
            fh: read::<abi::ReleaseIn>(opcode, fixed)?.fh,
        },
        op::RELEASEDIR => {
            read::<abi::ReleaseIn>(opcode, fixed)?;
            Request::Releasedir
        }
        op::FLUSH => {
            read::<[u8; 24]>(opcode, fixed)?;
            Request::Flush
        }
        op::STATFS => Request::Statfs,
        op::GETXATTR => {
            let g = read::<abi::GetxattrIn>(opcode, fixed)?;
            name(opcode, rest)?;
            Request::Getxattr { size: g.size }
        }
        op::LISTXATTR => Request::Listxattr {
            size: read::<abi::GetxattrIn>(opcode, fixed)?.size,
        },
        op::IOCTL => {
            read::<[u8; 32]>(opcode, fixed)?;
            Request::Ioctl
        }
        op::ACCESS => {
            read::<u64>(opcode, fixed)?;
            Request::Access
        }
        op::INTERRUPT => {
            read::<u64>(opcode, fixed)?;
            Request::Interrupt
        }
        op::DESTROY => Request::Destroy,
        other => Request::Unsupported(other),
    })
}

/// The reply header for `unique`: `error` is 0 or a negative errno; `args_len` bytes of arguments follow.
pub fn out_header(unique: u64, error: i32, args_len: usize) -> abi::OutHeader {
    abi::OutHeader {
        len: (size_of::<abi::OutHeader>() + args_len) as u32,
        error,
        unique,
    }
}

/// Appends one directory entry to `buf` if it fits within `limit` bytes; false when the reply is full.
pub fn push_dirent(buf: &mut Vec<u8>, limit: usize, ino: u64, next_offset: u64, typ: u32, name: &[u8]) -> bool {
    let head = size_of::<abi::Dirent>();
    let len = (head + name.len()).div_ceil(8) * 8;
    if buf.len() + len > limit {
        return false;
    }
    let d = abi::Dirent {
        ino,
        off: next_offset,
        namelen: name.len() as u32,
        typ,
    };
    buf.extend_from_slice(d.as_bytes());
    buf.extend_from_slice(name);
    buf.resize(buf.len() + (len - head - name.len()), 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(opcode: u32, args: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + args.len()) as u32,
            opcode,
            unique: 7,
            nodeid: 1,
            ..Default::default()
        };
        let mut m = h.as_bytes().to_vec();
        m.extend_from_slice(args);
        m
    }

    #[test]
    fn lookup_read_and_init_parse_and_short_ones_are_errors() {
        let m = message(op::LOOKUP, b"model.bin\0");
        let (h, r) = parse_message(&m).unwrap();
        assert_eq!((h.unique, r), (7, Request::Lookup { name: b"model.bin" }));
        assert_eq!(
            parse_message(&message(op::LOOKUP, b"model.bin")).unwrap_err(),
            ParseError::Name(op::LOOKUP)
        );
        let read = abi::ReadIn {
            fh: 3,
            offset: 4096,
            size: 1 << 20,
            ..Default::default()
        };
        let m = message(op::READ, read.as_bytes());
        let (_, r) = parse_message(&m).unwrap();
        assert_eq!(
            r,
            Request::Read {
                fh: 3,
                offset: 4096,
                size: 1 << 20
            }
        );
        assert!(matches!(
            parse_message(&message(op::READ, &read.as_bytes()[..20])),
            Err(ParseError::ShortArgument { need: 40, have: 20, .. })
        ));
        let mut m = message(op::READ, read.as_bytes());
        m.push(0);
        assert!(matches!(parse_message(&m), Err(ParseError::Length { .. })));
        let init = abi::InitIn {
            major: 7,
            minor: 45,
            flags: 1,
            flags2: 2,
            ..Default::default()
        };
        let m = message(op::INIT, init.as_bytes());
        let (_, r) = parse_message(&m).unwrap();
        assert_eq!(r, Request::Init(init));
        // An old kernel's 16-byte INIT.
        let m = message(op::INIT, &init.as_bytes()[..16]);
        let (_, r) = parse_message(&m).unwrap();
        let Request::Init(old) = r else { panic!() };
        assert_eq!((old.minor, old.flags, old.flags2), (45, 1, 0));
        assert_eq!(parse_message(&[0; 10]).unwrap_err(), ParseError::ShortHeader(10));
    }

    #[test]
    fn uring_entries_take_the_struct_from_op_in_and_the_name_from_the_payload() {
        let h = InHeader {
            len: 50,
            opcode: op::LOOKUP,
            unique: 9,
            ..Default::default()
        };
        let mut in_out = [0u8; 128];
        in_out[..40].copy_from_slice(h.as_bytes());
        let mut payload = vec![0u8; 64];
        payload[..6].copy_from_slice(b"a.txt\0");
        let (_, r) = parse_uring(&in_out, &[0; 128], &payload, 6).unwrap();
        assert_eq!(r, Request::Lookup { name: b"a.txt" });
        assert!(parse_uring(&in_out, &[0; 128], &payload, 65).is_err());
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes_and_stop_at_the_limit() {
        let mut buf = Vec::new();
        assert!(push_dirent(&mut buf, 64, 1, 1, 4, b"."));
        assert_eq!(buf.len(), 32);
        assert!(push_dirent(&mut buf, 64, 1, 2, 4, b".."));
        assert_eq!(buf.len(), 64);
        assert!(!push_dirent(&mut buf, 64, 2, 3, 8, b"x"));
        assert_eq!(buf.len(), 64);
    }
}
