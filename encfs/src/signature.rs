//! Model signatures in the OpenSSF Model Signing (OMS) v1.0 format, interoperable with `model_signing` 1.1.x
//! (sigstore `model-transparency`), key method.
//!
//! A signature is a Sigstore bundle v0.3 whose DSSE envelope carries an in-toto Statement v1 with the predicate
//! `https://model_signing/signature/v1.0`: the list of the model's files with their SHA-256 (serialization
//! method `files`), and as subject the model's name with the SHA-256 over those digests. The ECDSA signature
//! (P-256/SHA-256, P-384/SHA-384 or P-521/SHA-512, ASN.1 DER) covers the DSSE pre-authentication encoding of the
//! statement bytes, so any JSON formatting verifies and no canonical form is needed.
//!
//! ```text
//! bundle {mediaType v0.3, verificationMaterial.publicKey.hint = hex SHA-256(PEM SPKI), dsseEnvelope}
//!   └─ DSSE {payloadType in-toto, payload = statement bytes, signatures[0].sig = ECDSA(PAE(type, payload))}
//!        └─ statement {subject [{name, sha256 = SHA-256(d1 ‖ d2 ‖ …)}], predicate {serialization, resources}}
//! ```
//!
//! This module is pure: it hashes nothing from disk and does no I/O. Callers hand it (path, SHA-256) lists: `mkimage`
//! hashes a model directory (or reuses the digests its build pass computed), and the daemon takes them from the
//! image index, where `build` recorded every file's SHA-256 and where `build --sign-key` embeds the bundle as index
//! extension [`EXTENSION_MODEL_SIGNATURE`] (docs/FORMAT.md §6).
//!
//! Where the spec and the reference implementation differ (single-file resource name `.` vs the file name,
//! resource order), signing emits the reference forms, since `model_signing` is the deployed verifier, and
//! verifying accepts both.

mod bundle;
mod keys;
mod manifest;
mod seed;

pub use bundle::{BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae};
pub use keys::{Curve, SigningKey, VerifyingKey};
pub use manifest::{
    FileDigest, ManifestDiff, ManifestOptions, SINGLE_FILE, SignedManifest, index_files, is_ignored, root_digest,
    sort_files,
};
pub use seed::{SEED_SIGNATURE_FILE, SeedDigest, is_seed_signed};

use crate::format::{Extension, Index};

/// Index extension type of an embedded model signature: the exact bundle JSON bytes. Non-critical: a reader that
/// does not check signatures may ignore it.
pub(crate) const EXTENSION_MODEL_SIGNATURE: u16 = 1;

/// Paths `model_signing` ignores (and records as ignored) by default, relative to the model root.
pub const DEFAULT_IGNORE_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// Why signing or verifying failed. Messages name the check and, where there is one, the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A key could not be parsed.
    #[error("reading the {what}: {reason}")]
    KeyParse {
        /// "private key" or "public key".
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The key is of a kind model signing does not support (curve, algorithm, PEM form).
    #[error("unsupported key: {reason}")]
    UnsupportedKey {
        /// What is unsupported.
        reason: String,
    },
    /// The private key is encrypted and no password was given.
    #[error("the private key is encrypted: a password is needed")]
    PasswordRequired,
    /// Decrypting an encrypted private key failed (usually a wrong password).
    #[error("decrypting the private key failed (wrong password?): {reason}")]
    KeyDecrypt {
        /// The decryption error.
        reason: String,
    },
    /// The bundle or statement is not well-formed.
    #[error("signature syntax: {what}: {reason}")]
    Syntax {
        /// Which part.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A field has a value this verifier (like the reference one) refuses.
    #[error("signature check failed: {field} is {actual:?}, expected {expected:?}")]
    Field {
        /// The field.
        field: &'static str,
        /// The required value.
        expected: String,
        /// The value found.
        actual: String,
    },
    /// The bundle names another key (its hint is not the given public key's).
    #[error(
        "signature check failed: key mismatch: the signature was made for key hint {found}, the given public key is {expected}"
    )]
    KeyMismatch {
        /// The given key's hint.
        expected: String,
        /// The bundle's hint.
        found: String,
    },
    /// The ECDSA signature does not verify with the given key.
    #[error("signature check failed: the ECDSA signature does not verify with the given public key")]
    BadSignature,
    /// The manifest uses a serialization this implementation cannot check.
    #[error("unsupported serialization: method {method:?}, hash {hash_type:?} (only method \"files\" with sha256)")]
    UnsupportedSerialization {
        /// `serialization.method`.
        method: String,
        /// `serialization.hash_type` (and the shard size, if any).
        hash_type: String,
    },
    /// The subject digest is not the digest over the listed resources.
    #[error("signature check failed: manifest is inconsistent: subject digest {subject}, resources hash to {computed}")]
    ManifestInconsistent {
        /// The subject's digest.
        subject: String,
        /// SHA-256 over the resources' digests.
        computed: String,
    },
    /// The files present differ from the signed ones.
    #[error("signature check failed: files do not match the signed manifest: {0}")]
    Mismatch(ManifestDiff),
    /// A symlink cannot be covered by the signature.
    #[error("signature check failed: symlink {path}: {reason}")]
    Symlink {
        /// The symlink's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file name is not UTF-8, which a manifest cannot name.
    #[error("{path}: file name is not UTF-8; OMS manifests need UTF-8 names")]
    NonUtf8Name {
        /// The path, lossily decoded.
        path: String,
    },
    /// The image carries no embedded signature.
    #[error(
        "the image has no embedded model signature (index extension {EXTENSION_MODEL_SIGNATURE}); build it with `cinfer-mkimage build --sign-key`"
    )]
    NotSigned,
}

/// Signs the manifest of `files` (any order; sorted as `model_signing` sorts them) for the model `model_name`
/// (the directory's or single file's name). Returns the bundle JSON, as `model_signing sign key` writes it.
pub fn sign(key: &SigningKey, model_name: &str, files: &[FileDigest], opts: &ManifestOptions) -> Vec<u8> {
    let statement = manifest::statement(model_name, files, opts);
    bundle::seal(&statement, |pae| key.sign(pae), key.verifying_key().hint())
}

/// Verifies a bundle with `key`: media type, key hint, ECDSA signature over the DSSE envelope, statement and
/// predicate types, serialization, and that the subject digest matches the listed files. The files themselves
/// are compared by [`SignedManifest::check`].
pub fn verify(bundle_json: &[u8], key: &VerifyingKey) -> Result<SignedManifest, SignatureError> {
    let statement = bundle::open(bundle_json, &key.hint(), |msg, sig| key.verify(msg, sig))?;
    manifest::signed_manifest(statement)
}

/// The index extension record that embeds a bundle.
pub fn signature_extension(bundle_json: Vec<u8>) -> Extension {
    Extension {
        kind: EXTENSION_MODEL_SIGNATURE,
        critical: false,
        data: bundle_json,
    }
}

/// The bundle embedded in an index, if any (the first extension of type [`EXTENSION_MODEL_SIGNATURE`]).
pub(crate) fn embedded_signature(index: &Index) -> Option<&[u8]> {
    index
        .extensions
        .iter()
        .find(|x| x.kind == EXTENSION_MODEL_SIGNATURE)
        .map(|x| x.data.as_slice())
}

/// The mount-time manifest check: the image's embedded signature verifies with `key`, and its manifest lists
/// exactly the image's files (no ignored paths: every file of the image must be signed) with the SHA-256 values
/// that `build` recorded in the index. Content is not read here; checking it against those digests is the
/// caller's (full) verification pass.
pub fn check_index(index: &Index, key: &VerifyingKey) -> Result<SignedManifest, SignatureError> {
    let bundle = embedded_signature(index).ok_or(SignatureError::NotSigned)?;
    let signed = verify(bundle, key)?;
    let files = index_files(index, signed.allow_symlinks, &[])?;
    signed.check(&files)?;
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, EntryKind};

    const P256_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCwTchiUstGAz7JBD
Cb9r5SsZPh1qXSY/RCmxHsAOT7WhRANCAATpbDiztBVNUAS+cnwGOH5Oah1DruSK
PAeESPwAtjofdQCSbTuIcGCYpltkl+Gud5xFFiLT6tLeBReptkoGVpVM
-----END PRIVATE KEY-----
";
    const OTHER_P256_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4VoS5+/nZa6yERMc
KiHdQu/5XqxhwfrD5znk3y3x8JihRANCAASIKWV+ZSUkUvpE2cl/vkguuaBfq/Wo
5GNY5MubR7+BYEYMI/OJNfo2jJIcKqjqNstaqjJ0QE9sJc45jFEA2Tei
-----END PRIVATE KEY-----
";

    fn files() -> Vec<FileDigest> {
        vec![
            FileDigest {
                path: "config.pbtxt".into(),
                sha256: [1; 32],
            },
            FileDigest {
                path: "1/model.onnx".into(),
                sha256: [2; 32],
            },
        ]
    }

    #[test]
    fn sign_then_verify_and_every_tamper_is_refused() {
        let key = SigningKey::from_pem(P256_PKCS8, None).unwrap();
        let vk = key.verifying_key();
        let b = sign(&key, "m", &files(), &ManifestOptions::default());
        let m = verify(&b, &vk).unwrap();
        assert_eq!(m.model_name, "m");
        assert_eq!(m.files[0].path, "1/model.onnx");
        m.check(&files()).unwrap();

        let s = String::from_utf8(b.clone()).unwrap();
        let tampered = s.replace("\"keyid\":\"\"", "\"keyid\":\"x\"");
        assert!(
            verify(tampered.as_bytes(), &vk).is_ok(),
            "keyid is not covered, as in the reference"
        );
        let tampered = s.replace("v0.3+json", "v0.2+json");
        assert!(matches!(
            verify(tampered.as_bytes(), &vk),
            Err(SignatureError::Field { .. })
        ));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let payload = v["dsseEnvelope"]["payload"].as_str().unwrap();
        let mut p = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, payload).unwrap();
        let at = p.len() - 10;
        p[at] ^= 1;
        let other = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &p);
        let tampered = s.replace(payload, &other);
        assert!(matches!(
            verify(tampered.as_bytes(), &vk),
            Err(SignatureError::BadSignature)
        ));

        let other = SigningKey::from_pem(OTHER_P256_PKCS8, None).unwrap();
        assert!(matches!(
            verify(&b, &other.verifying_key()),
            Err(SignatureError::KeyMismatch { .. })
        ));
    }

    /// The spec's forms where they differ from the reference: the file name (not ".") for a single file,
    /// resources in another order, no `tlogEntries`, no `keyid`, pretty-printed JSON, integer-free extra fields.
    #[test]
    fn verify_accepts_the_spec_forms() {
        let key = SigningKey::from_pem(P256_PKCS8, None).unwrap();
        let mut st = manifest::statement(
            "model.onnx",
            &[FileDigest {
                path: ".".into(),
                sha256: [9; 32],
            }],
            &ManifestOptions::default(),
        );
        st.predicate.resources[0].name = "model.onnx".into();
        let payload = serde_json::to_vec_pretty(&st).unwrap();
        let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
        let bundle = serde_json::json!({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": key.verifying_key().hint()}},
            "dsseEnvelope": {"payload": b64(&payload), "payloadType": PAYLOAD_TYPE, "signatures": [{"sig": b64(&sig)}]},
        });
        let m = verify(bundle.to_string().as_bytes(), &key.verifying_key()).unwrap();
        m.check(&[FileDigest {
            path: SINGLE_FILE.into(),
            sha256: [9; 32],
        }])
        .unwrap();

        // Resources in byte order rather than path-component order: the root digest follows the listed order.
        let files = [("a.b", 1u8), ("a/b", 2u8)];
        let mut st = manifest::statement("m", &[], &ManifestOptions::default());
        for (name, d) in files {
            st.predicate.resources.push(bundle::ResourceJson {
                name: name.into(),
                algorithm: "sha256".into(),
                digest: hex::encode([d; 32]),
            });
        }
        st.subject[0].digest.sha256 = hex::encode(root_digest([&[1u8; 32], &[2u8; 32]]));
        let b = bundle::seal(&st, |m| key.sign(m), key.verifying_key().hint());
        let m = verify(&b, &key.verifying_key()).unwrap();
        assert_eq!(m.files[0].path, "a.b");
        // A subject digest that does not match the listed resources is refused.
        st.subject[0].digest.sha256 = hex::encode(root_digest([&[2u8; 32], &[1u8; 32]]));
        let b = bundle::seal(&st, |m| key.sign(m), key.verifying_key().hint());
        assert!(matches!(
            verify(&b, &key.verifying_key()),
            Err(SignatureError::ManifestInconsistent { .. })
        ));
    }

    #[test]
    fn check_index_requires_exactly_the_signed_files() {
        let key = SigningKey::from_pem(P256_PKCS8, None).unwrap();
        let e = |parent, name: &str, kind| Entry {
            parent,
            name: name.as_bytes().to_vec(),
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            kind,
        };
        let mut index = Index {
            entries: vec![
                e(0, "", EntryKind::Dir),
                e(0, "1", EntryKind::Dir),
                e(
                    1,
                    "model.onnx",
                    EntryKind::File {
                        size: 1,
                        sha256: [2; 32],
                    },
                ),
                e(
                    0,
                    "config.pbtxt",
                    EntryKind::File {
                        size: 1,
                        sha256: [1; 32],
                    },
                ),
            ],
            extensions: vec![],
        };
        assert!(matches!(
            check_index(&index, &key.verifying_key()),
            Err(SignatureError::NotSigned)
        ));
        let b = sign(&key, "m", &files(), &ManifestOptions::default());
        index.extensions.push(signature_extension(b));
        check_index(&index, &key.verifying_key()).unwrap();
        index.entries.push(e(
            0,
            "extra.bin",
            EntryKind::File {
                size: 1,
                sha256: [3; 32],
            },
        ));
        let err = check_index(&index, &key.verifying_key()).unwrap_err();
        assert!(err.to_string().contains("extra.bin"), "{err}");
    }
}
