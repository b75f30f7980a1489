//! The mount table as `/proc/self/mountinfo` lists it: which mount sits on a path, and whether it is one of ours.
//!
//! Reading it never touches a mounted filesystem, so it also answers for a mount nobody serves (a `stat` of such
//! a mount point hangs or fails with `ENOTCONN`).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The source name of every cinfer-encfs mount starts with this (`cinfer-encfs:<image>`, see
/// [`super::MountConfig::fs_name`]).
pub(crate) const SOURCE_PREFIX: &str = "cinfer-encfs";

/// One line of `mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount ID (unique while the mount exists).
    pub id: u64,
    /// Major and minor device number of the mounted filesystem.
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type, e.g. `fuse` (root's own mounts), `fuse.cinfer-encfs` (through `fusermount3`, which
    /// adds the subtype) or `tmpfs`.
    pub fs_type: String,
    /// The mount source (for ours `cinfer-encfs:<image>`).
    pub source: String,
}

impl MountEntry {
    /// True for a cinfer-encfs mount (live or dead): a FUSE mount whose source is ours.
    pub fn is_cinfer(&self) -> bool {
        (self.fs_type == "fuse" || self.fs_type == "fuse.cinfer-encfs") && self.source.starts_with(SOURCE_PREFIX)
    }
}

/// This process's mount table.
pub fn read() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// The mount on top at `path` (the last one listed there), if `path` is a mount point. `path` should be
/// absolute and free of symlinks, as the table lists it.
pub fn top_at(path: &Path) -> io::Result<Option<MountEntry>> {
    Ok(read()?.into_iter().rev().find(|e| e.mount_point == path))
}

/// The entry with mount ID `id`, if that mount still exists.
pub fn by_id(id: u64) -> io::Result<Option<MountEntry>> {
    Ok(read()?.into_iter().find(|e| e.id == id))
}

/// Parses `mountinfo` text; malformed lines are skipped.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let id = text(fields.first()?)?.parse().ok()?;
    let (major, minor) = text(fields.get(2)?)?
        .split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.get(4)?)));
    // Optional fields end at the "-" separator; the filesystem type follows it.
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let fs_type = text(fields.get(sep + 1)?)?;
    let source = String::from_utf8_lossy(&unescape(fields.get(sep + 2)?)).into_owned();
    Some(MountEntry {
        id,
        dev: (major.parse().ok()?, minor.parse().ok()?),
        mount_point,
        fs_type,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, and so on).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && oct.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(
                oct.iter()
                    .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_optional_fields_and_escapes() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
                     97 22 0:63 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:9 master:2 - fuse.cinfer-encfs \
                     cinfer-encfs:/x ro,user_id=0\n\
                     98 22 0:64 / /tmp/c rw - fuse cinfer-encfs:/srv/m.img ro\n\
                     99 22 0:65 / /tmp/d rw - fuse sshfs#x ro\n\
                     garbage\n";
        let e = parse(text);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].fs_type, "proc");
        assert!(!e[0].is_cinfer());
        assert_eq!(e[1].id, 97);
        assert_eq!(e[1].dev, (0, 63));
        assert_eq!(e[1].mount_point, Path::new("/tmp/a b"));
        assert!(e[1].is_cinfer());
        assert!(e[2].is_cinfer() && e[2].source == "cinfer-encfs:/srv/m.img");
        assert!(!e[3].is_cinfer());
    }
}
