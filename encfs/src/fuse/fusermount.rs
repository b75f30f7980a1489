//! Mounting as a non-root process, for the project's own FUSE session ([`super::own`]): `fusermount3` (setuid
//! root, from the fuse3 package) opens `/dev/fuse`, mounts it and hands the descriptor back over a Unix socket
//! whose number it finds in `_FUSE_COMMFD` (libfuse's protocol).
//! The mount is unmounted with `fusermount3 -u` ([`super::detach`] falls back to it).

use std::io::{self, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

use super::FUSERMOUNT;

/// Mounts a FUSE filesystem at `mountpoint` through `fusermount3` with mount options `options` (`fsname`,
/// `subtype`, `ro`, ...: fusermount3 adds `fd`, `rootmode`, `user_id` and `group_id`) and returns the
/// `/dev/fuse` descriptor of the new connection.
pub(crate) fn mount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    #[allow(unsafe_code)]
    // SAFETY: runs in the child between fork and exec; fcntl is async-signal-safe and only clears close-on-exec
    // on the child's copy of the socket, so fusermount3 inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(theirs_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running {FUSERMOUNT}: {e} (install the fuse3 package)"),
        )
    })?;
    drop(theirs);
    // fusermount3 sends the descriptor and exits; if it fails it exits without sending, closing the socket.
    let received = receive_fd(&ours);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    match received {
        Ok(Some(fd)) if status.success() => Ok(fd),
        Ok(_) => Err(io::Error::other(format!(
            "{FUSERMOUNT} failed ({status}): {}",
            stderr.trim()
        ))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "receiving the /dev/fuse descriptor from {FUSERMOUNT}: {e}; {}",
                stderr.trim()
            ),
        )),
    }
}

/// Unmounts `mountpoint` with `fusermount3 -u` (`-z`: lazily, even while files are open), as a non-root process
/// must.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running {FUSERMOUNT}: {e} (install the fuse3 package)"),
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{FUSERMOUNT} -u: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// One descriptor sent over `sock` with `SCM_RIGHTS` (close-on-exec), or `None` if the peer closed without one.
fn receive_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    loop {
        match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            // Any descriptor beyond the first is closed as the iterator drops it.
            for received in fds {
                fd.get_or_insert(received);
            }
        }
    }
    Ok(fd)
}

/// `value` as one mount option value: fusermount3 splits options at commas and takes a backslash as escape.
pub(crate) fn escape_option(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_and_backslashes_are_escaped() {
        assert_eq!(escape_option("cinfer-encfs:/a,b\\c"), "cinfer-encfs:/a\\,b\\\\c");
        assert_eq!(escape_option("plain"), "plain");
    }

    /// A descriptor sent with SCM_RIGHTS arrives as a new descriptor of the same file; a peer that closes without
    /// one gives `None`.
    #[test]
    fn a_descriptor_passes_over_the_socket() {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
        use std::io::IoSlice;
        use std::os::fd::AsFd;

        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();
        let got = receive_fd(&b).unwrap().expect("a descriptor");
        let meta = |fd: &dyn AsRawFd| std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta(&got).ino(), meta(&file).ino());
        drop(a);
        assert!(receive_fd(&b).unwrap().is_none());
    }
}
