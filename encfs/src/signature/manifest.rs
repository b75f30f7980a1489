//! Manifests: the list of (file path, SHA-256) a signature covers, its order and root digest, its comparison with
//! the files actually present, and the list of files an image index holds.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::SignatureError;
use super::bundle::{Predicate, ResourceJson, SerializationJson, Statement, Subject, SubjectDigest};
use crate::format::{EntryKind, Index};

/// Resource name of the only file of a single-file model, as `model_signing` writes it (the spec says the file
/// name; both are accepted when verifying).
pub const SINGLE_FILE: &str = ".";

/// Most symlinks followed while resolving one path (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

/// One file of a model: its path relative to the model root (`/`-separated, UTF-8; [`SINGLE_FILE`] for a
/// single-file model) and the SHA-256 of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Path relative to the model root.
    pub path: String,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

/// What a new signature records besides the files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestOptions {
    /// Paths (relative to the model root) the signer left out; recorded in `serialization.ignore_paths`.
    pub ignore_paths: Vec<String>,
    /// Whether symlinks were followed (`serialization.allow_symlinks`).
    pub allow_symlinks: bool,
}

/// A manifest whose signature verified and whose root digest matched its resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The statement's subject name (the model directory's or file's name).
    pub model_name: String,
    /// The signed files, in the order the signature lists them, with the names as signed.
    pub files: Vec<FileDigest>,
    /// Paths the signer declared as ignored: files there are not covered by the signature.
    pub ignore_paths: Vec<String>,
    /// Whether the signer followed symlinks.
    pub allow_symlinks: bool,
    /// The subject digest: SHA-256 over the listed files' digests.
    pub root: [u8; 32],
}

/// How the files present differ from a signed manifest. Every list is sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestDiff {
    /// Signed files that are not present.
    pub missing: Vec<String>,
    /// Files present that the signature does not list.
    pub extra: Vec<String>,
    /// Files whose content digest differs from the signed one.
    pub changed: Vec<String>,
}

impl ManifestDiff {
    /// True when the files present are exactly the signed ones, with the signed digests.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for ManifestDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (what, list) in [
            ("content differs from the signed digest", &self.changed),
            ("missing (signed but not present)", &self.missing),
            ("extra (present but not signed)", &self.extra),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// Sort key of `model_signing` (Python `PurePosixPath` ordering): component by component.
fn path_key(p: &str) -> Vec<&str> {
    p.split('/').collect()
}

/// Sorts files in the order `model_signing` lists resources.
pub fn sort_files(files: &mut [FileDigest]) {
    files.sort_by(|a, b| path_key(&a.path).cmp(&path_key(&b.path)));
}

/// The subject digest: SHA-256 over the raw digests in the given order.
pub fn root_digest<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().into()
}

/// Builds the statement for `files` (sorted here), method `files`, hash `sha256`.
pub(crate) fn statement(model_name: &str, files: &[FileDigest], opts: &ManifestOptions) -> Statement {
    let mut files = files.to_vec();
    sort_files(&mut files);
    let root = root_digest(files.iter().map(|f| &f.sha256));
    Statement {
        type_: super::bundle::STATEMENT_TYPE.into(),
        subject: vec![Subject {
            name: model_name.into(),
            digest: SubjectDigest {
                sha256: hex::encode(root),
            },
        }],
        predicate_type: super::bundle::PREDICATE_TYPE.into(),
        predicate: Predicate {
            serialization: SerializationJson {
                method: "files".into(),
                hash_type: "sha256".into(),
                allow_symlinks: opts.allow_symlinks,
                ignore_paths: opts.ignore_paths.clone(),
                shard_size: None,
            },
            resources: files
                .iter()
                .map(|f| ResourceJson {
                    name: f.path.clone(),
                    algorithm: "sha256".into(),
                    digest: hex::encode(f.sha256),
                })
                .collect(),
        },
    }
}

/// Checks a verified statement's serialization and root digest and turns it into a [`SignedManifest`].
pub(crate) fn signed_manifest(st: Statement) -> Result<SignedManifest, SignatureError> {
    let ser = &st.predicate.serialization;
    if ser.method != "files" || ser.hash_type != "sha256" {
        let shard = ser
            .shard_size
            .as_ref()
            .map(|n| format!(", shard_size {n}"))
            .unwrap_or_default();
        return Err(SignatureError::UnsupportedSerialization {
            method: ser.method.clone(),
            hash_type: format!("{}{shard}", ser.hash_type),
        });
    }
    let mut files = Vec::with_capacity(st.predicate.resources.len());
    let mut seen = HashMap::new();
    for r in &st.predicate.resources {
        if r.algorithm != ser.hash_type {
            return Err(SignatureError::Field {
                field: "resources[].algorithm",
                expected: ser.hash_type.clone(),
                actual: format!("{} (resource {})", r.algorithm, r.name),
            });
        }
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&r.digest, &mut sha256).map_err(|e| SignatureError::Syntax {
            what: format!("digest of resource {}", r.name),
            reason: e.to_string(),
        })?;
        if seen.insert(r.name.clone(), ()).is_some() {
            return Err(SignatureError::Syntax {
                what: "resources".into(),
                reason: format!("{} is listed twice", r.name),
            });
        }
        files.push(FileDigest {
            path: r.name.clone(),
            sha256,
        });
    }
    // INVARIANT: `open` checked there is exactly one subject.
    let Some(subject) = st.subject.into_iter().next() else {
        return Err(SignatureError::Syntax {
            what: "statement".into(),
            reason: "no subject".into(),
        });
    };
    let root = root_digest(files.iter().map(|f| &f.sha256));
    if !subject.digest.sha256.eq_ignore_ascii_case(&hex::encode(root)) {
        return Err(SignatureError::ManifestInconsistent {
            subject: subject.digest.sha256,
            computed: hex::encode(root),
        });
    }
    Ok(SignedManifest {
        model_name: subject.name,
        files,
        ignore_paths: st.predicate.serialization.ignore_paths,
        allow_symlinks: st.predicate.serialization.allow_symlinks,
        root,
    })
}

impl SignedManifest {
    /// Compares the files present (`local`, any order) with the signed ones. A single-file model is given as one
    /// file named [`SINGLE_FILE`]; the signed name may then be `.` (reference) or the file name (spec).
    pub fn diff(&self, local: &[FileDigest]) -> ManifestDiff {
        let single = local.len() == 1 && local[0].path == SINGLE_FILE;
        let mut signed: BTreeMap<&str, &[u8; 32]> = BTreeMap::new();
        for f in &self.files {
            let name = if single && self.files.len() == 1 && f.path == self.model_name {
                SINGLE_FILE
            } else {
                f.path.as_str()
            };
            signed.insert(name, &f.sha256);
        }
        let mut diff = ManifestDiff::default();
        for f in local {
            match signed.remove(f.path.as_str()) {
                None => diff.extra.push(f.path.clone()),
                Some(d) if d != &f.sha256 => diff.changed.push(f.path.clone()),
                Some(_) => {}
            }
        }
        diff.missing = signed.into_keys().map(str::to_owned).collect();
        diff.extra.sort();
        diff.changed.sort();
        diff
    }

    /// Like [`Self::diff`], but an error naming every differing file unless the files match exactly.
    pub fn check(&self, local: &[FileDigest]) -> Result<(), SignatureError> {
        let diff = self.diff(local);
        if diff.is_empty() {
            Ok(())
        } else {
            Err(SignatureError::Mismatch(diff))
        }
    }
}

/// True when `path` is `ignore` or lies below it.
pub fn is_ignored(path: &str, ignore_paths: &[String]) -> bool {
    ignore_paths.iter().any(|i| {
        let i = i.trim_end_matches('/');
        path == i || (path.starts_with(i) && path.as_bytes().get(i.len()) == Some(&b'/'))
    })
}

/// The files of an image index as a manifest would list them: every regular file with the digest `build`
/// recorded, and — only when `allow_symlinks` — every symlink that resolves (inside the tree) to a regular file,
/// with that file's digest, as `model_signing` follows symlinks. Entries under `ignore_paths` are left out.
///
/// Fails on a name that is not UTF-8, and on a symlink when `allow_symlinks` is false or when it does not resolve
/// to a regular file of the tree.
pub fn index_files(
    index: &Index,
    allow_symlinks: bool,
    ignore_paths: &[String],
) -> Result<Vec<FileDigest>, SignatureError> {
    let mut paths: Vec<String> = Vec::with_capacity(index.entries.len());
    let mut by_path: HashMap<String, usize> = HashMap::with_capacity(index.entries.len());
    for (i, e) in index.entries.iter().enumerate() {
        let path = if i == 0 {
            String::new()
        } else {
            let name =
                std::str::from_utf8(&e.name).map_err(|_| SignatureError::NonUtf8Name { path: index.path_of(i) })?;
            let parent = paths.get(e.parent as usize).map(String::as_str).unwrap_or_default();
            if parent.is_empty() {
                name.to_owned()
            } else {
                format!("{parent}/{name}")
            }
        };
        by_path.insert(path.clone(), i);
        paths.push(path);
    }
    let mut out = Vec::new();
    for (i, e) in index.entries.iter().enumerate() {
        let path = &paths[i];
        if i == 0 || is_ignored(path, ignore_paths) {
            continue;
        }
        match &e.kind {
            EntryKind::Dir => {}
            EntryKind::File { sha256, .. } => out.push(FileDigest {
                path: path.clone(),
                sha256: *sha256,
            }),
            EntryKind::Symlink { .. } => {
                if !allow_symlinks {
                    return Err(SignatureError::Symlink {
                        path: path.clone(),
                        reason: "symlinks are not signed unless the signature allows them (allow_symlinks)".into(),
                    });
                }
                let target = resolve(index, &paths, &by_path, i)?;
                if is_ignored(&paths[target], ignore_paths) {
                    return Err(SignatureError::Symlink {
                        path: path.clone(),
                        reason: format!("points into the ignored path {}", paths[target]),
                    });
                }
                if let EntryKind::File { sha256, .. } = index.entries[target].kind {
                    out.push(FileDigest {
                        path: path.clone(),
                        sha256,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Follows symlink entry `link` inside the tree to a regular file entry.
fn resolve(
    index: &Index,
    paths: &[String],
    by_path: &HashMap<String, usize>,
    link: usize,
) -> Result<usize, SignatureError> {
    let fail = |reason: String| SignatureError::Symlink {
        path: paths[link].clone(),
        reason,
    };
    let mut at = link;
    for _ in 0..MAX_SYMLINK_HOPS {
        let EntryKind::Symlink { target } = &index.entries[at].kind else {
            break;
        };
        let target = std::str::from_utf8(target).map_err(|_| fail("target is not UTF-8".into()))?;
        if target.starts_with('/') {
            return Err(fail(format!("absolute target {target}")));
        }
        let mut parts: Vec<&str> = paths[at].split('/').collect();
        parts.pop();
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(fail(format!("target {target} leaves the model")));
                    }
                }
                c => parts.push(c),
            }
        }
        let joined = parts.join("/");
        at = *by_path
            .get(&joined)
            .ok_or_else(|| fail(format!("target {joined} does not exist")))?;
    }
    match index.entries[at].kind {
        EntryKind::File { .. } => Ok(at),
        EntryKind::Dir => Err(fail(format!(
            "points to the directory {}; only symlinks to files can be signed",
            paths[at]
        ))),
        EntryKind::Symlink { .. } => Err(fail("too many levels of symlinks".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Entry;

    fn fd(path: &str, b: u8) -> FileDigest {
        FileDigest {
            path: path.into(),
            sha256: [b; 32],
        }
    }

    #[test]
    fn order_is_by_path_components_like_python() {
        let mut v = vec![fd("a.b", 1), fd("a/b", 2), fd("a-c", 3), fd("a/a/z", 4)];
        sort_files(&mut v);
        let names: Vec<_> = v.iter().map(|f| f.path.as_str()).collect();
        // Byte order would put "a-c" and "a.b" before "a/…"; component order puts "a" first.
        assert_eq!(names, vec!["a/a/z", "a/b", "a-c", "a.b"]);
    }

    #[test]
    fn diff_names_missing_extra_and_changed_files() {
        let m = SignedManifest {
            model_name: "m".into(),
            files: vec![fd("a", 1), fd("b", 2), fd("c", 3)],
            ignore_paths: vec![],
            allow_symlinks: false,
            root: [0; 32],
        };
        let d = m.diff(&[fd("a", 1), fd("b", 9), fd("d", 4)]);
        assert_eq!(d.changed, vec!["b"]);
        assert_eq!(d.missing, vec!["c"]);
        assert_eq!(d.extra, vec!["d"]);
        assert!(m.check(&[fd("c", 3), fd("b", 2), fd("a", 1)]).is_ok());
    }

    #[test]
    fn single_file_accepts_dot_and_the_file_name() {
        for name in [".", "model.onnx"] {
            let m = SignedManifest {
                model_name: "model.onnx".into(),
                files: vec![fd(name, 1)],
                ignore_paths: vec![],
                allow_symlinks: false,
                root: [0; 32],
            };
            assert!(m.check(&[fd(".", 1)]).is_ok(), "{name}");
            assert!(m.check(&[fd(".", 2)]).is_err(), "{name}");
        }
    }

    #[test]
    fn ignore_matches_whole_components_only() {
        let ig = vec![".git".to_owned(), "sub/".to_owned()];
        assert!(is_ignored(".git", &ig));
        assert!(is_ignored(".git/config", &ig));
        assert!(!is_ignored(".gitignore", &ig));
        assert!(is_ignored("sub/x", &ig));
        assert!(!is_ignored("subway", &ig));
    }

    fn entry(parent: u64, name: &str, kind: EntryKind) -> Entry {
        Entry {
            parent,
            name: name.as_bytes().to_vec(),
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            kind,
        }
    }

    #[test]
    fn index_files_resolves_symlinks_only_when_allowed() {
        let file = |b| EntryKind::File {
            size: 1,
            sha256: [b; 32],
        };
        let link = |t: &str| EntryKind::Symlink {
            target: t.as_bytes().to_vec(),
        };
        let index = Index {
            entries: vec![
                entry(0, "", EntryKind::Dir),
                entry(0, "1", EntryKind::Dir),
                entry(1, "model.onnx", file(7)),
                entry(0, "current", link("1/model.onnx")),
                entry(0, "x", file(8)),
            ],
            extensions: vec![],
        };
        assert!(matches!(
            index_files(&index, false, &[]),
            Err(SignatureError::Symlink { path, .. }) if path == "current"
        ));
        let files = index_files(&index, true, &[]).unwrap();
        assert_eq!(files, vec![fd("1/model.onnx", 7), fd("current", 7), fd("x", 8)]);
        let files = index_files(&index, true, &["x".into()]).unwrap();
        assert_eq!(files.len(), 2);
    }
}
