//! ECDSA keys on P-256, P-384 and P-521 (the curves `model_signing` accepts), loaded from PEM.
//!
//! Private keys: PKCS#8 (`PRIVATE KEY`), encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`, PBES2 as written by
//! `openssl pkcs8 -topk8` and Python's `cryptography`) and SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey`
//! writes it, with or without the `EC PARAMETERS` block in front). Public keys: SPKI (`PUBLIC KEY`).
//!
//! The hash follows the curve, as in `model_signing` (`get_ec_key_hash`): SHA-256 for P-256, SHA-384 for P-384,
//! SHA-512 for P-521. Signatures are ASN.1 DER, deterministic (RFC 6979).

use std::fmt;

use elliptic_curve::pkcs8::der::pem::LineEnding;
use elliptic_curve::pkcs8::{AssociatedOid, DecodePrivateKey, DecodePublicKey, EncodePublicKey, ObjectIdentifier};
use pkcs8::der::SecretDocument;
use sha2::{Digest, Sha256};

use super::SignatureError;

/// An elliptic curve that model signing keys may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Curve {
    /// NIST P-256 (secp256r1), with SHA-256.
    P256,
    /// NIST P-384 (secp384r1), with SHA-384.
    P384,
    /// NIST P-521 (secp521r1), with SHA-512.
    P521,
}

impl Curve {
    fn from_oid(oid: ObjectIdentifier) -> Result<Self, SignatureError> {
        if oid == p256::NistP256::OID {
            Ok(Self::P256)
        } else if oid == p384::NistP384::OID {
            Ok(Self::P384)
        } else if oid == p521::NistP521::OID {
            Ok(Self::P521)
        } else {
            Err(SignatureError::UnsupportedKey {
                reason: format!("curve {oid} (only P-256, P-384 and P-521 are supported)"),
            })
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        })
    }
}

enum SigningInner {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum VerifyingInner {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
}

/// Runs `$body` with `$k` bound to the curve-specific key of `$inner` (one arm per curve).
macro_rules! per_curve {
    ($ty:ident, $inner:expr, $k:ident => $body:expr) => {
        match $inner {
            $ty::P256($k) => $body,
            $ty::P384($k) => $body,
            $ty::P521($k) => $body,
        }
    };
}

/// A private ECDSA signing key. Its `Debug` output names the curve only; key material is never printed.
pub struct SigningKey {
    inner: SigningInner,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, ..)", self.curve())
    }
}

fn key_err(what: &'static str) -> impl Fn(String) -> SignatureError {
    move |reason| SignatureError::KeyParse { what, reason }
}

impl SigningKey {
    /// Loads a private key from PEM: PKCS#8, encrypted PKCS#8 (needs `password`) or SEC1.
    pub fn from_pem(pem: &str, password: Option<&[u8]>) -> Result<Self, SignatureError> {
        let bad = key_err("private key");
        if pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(SignatureError::UnsupportedKey {
                reason: "legacy OpenSSL-encrypted PEM (Proc-Type header); convert it to encrypted PKCS#8 with \
                         `openssl pkcs8 -topk8 -v2 aes-256-cbc`"
                    .into(),
            });
        }
        // `openssl ecparam -genkey` writes an `EC PARAMETERS` block before the key: skip to the key itself.
        let pem = pem.find("-----BEGIN EC PRIVATE KEY-----").map_or(pem, |at| &pem[at..]);
        let (label, doc) = SecretDocument::from_pem(pem).map_err(|e| bad(format!("not a PEM document: {e}")))?;
        match label {
            "PRIVATE KEY" => Self::from_pkcs8_der(doc.as_bytes()),
            "ENCRYPTED PRIVATE KEY" => {
                let Some(password) = password else {
                    return Err(SignatureError::PasswordRequired);
                };
                let enc = pkcs8::EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes())
                    .map_err(|e| bad(format!("encrypted PKCS#8: {e}")))?;
                let plain = enc
                    .decrypt(password)
                    .map_err(|e| SignatureError::KeyDecrypt { reason: e.to_string() })?;
                Self::from_pkcs8_der(plain.as_bytes())
            }
            "EC PRIVATE KEY" => Self::from_sec1_der(doc.as_bytes()),
            other => Err(SignatureError::UnsupportedKey {
                reason: format!("PEM label {other:?} (expected PRIVATE KEY, ENCRYPTED PRIVATE KEY or EC PRIVATE KEY)"),
            }),
        }
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self, SignatureError> {
        let bad = key_err("private key");
        let info = pkcs8::PrivateKeyInfoRef::try_from(der).map_err(|e| bad(format!("PKCS#8: {e}")))?;
        if info.algorithm.oid != elliptic_curve::ALGORITHM_OID {
            return Err(SignatureError::UnsupportedKey {
                reason: format!(
                    "key algorithm {} (only elliptic curve keys are supported)",
                    info.algorithm.oid
                ),
            });
        }
        let oid = info
            .algorithm
            .parameters_oid()
            .map_err(|e| bad(format!("PKCS#8 curve: {e}")))?;
        let pk = |e: pkcs8::Error| bad(format!("PKCS#8: {e}"));
        let inner = match Curve::from_oid(oid)? {
            Curve::P256 => SigningInner::P256(p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(pk)?),
            Curve::P384 => SigningInner::P384(p384::ecdsa::SigningKey::from_pkcs8_der(der).map_err(pk)?),
            Curve::P521 => SigningInner::P521(p521::ecdsa::SigningKey::from_pkcs8_der(der).map_err(pk)?),
        };
        Ok(Self { inner })
    }

    fn from_sec1_der(der: &[u8]) -> Result<Self, SignatureError> {
        let bad = key_err("private key");
        let ec = sec1::EcPrivateKey::try_from(der).map_err(|e| bad(format!("SEC1: {e}")))?;
        let oid = ec
            .parameters
            .and_then(|p| p.named_curve())
            .ok_or_else(|| bad("SEC1 key without a named curve".into()))?;
        let sk = |e: sec1::der::Error| bad(format!("SEC1: {e}"));
        let inner = match Curve::from_oid(oid)? {
            Curve::P256 => SigningInner::P256(p256::SecretKey::try_from(ec).map_err(sk)?.into()),
            Curve::P384 => SigningInner::P384(p384::SecretKey::try_from(ec).map_err(sk)?.into()),
            Curve::P521 => SigningInner::P521(p521::SecretKey::try_from(ec).map_err(sk)?.into()),
        };
        Ok(Self { inner })
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        match self.inner {
            SigningInner::P256(_) => Curve::P256,
            SigningInner::P384(_) => Curve::P384,
            SigningInner::P521(_) => Curve::P521,
        }
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        let inner = match &self.inner {
            SigningInner::P256(k) => VerifyingInner::P256(*k.verifying_key()),
            SigningInner::P384(k) => VerifyingInner::P384(*k.verifying_key()),
            SigningInner::P521(k) => VerifyingInner::P521(*k.verifying_key()),
        };
        VerifyingKey { inner }
    }

    /// Signs `msg` with the curve's hash; returns the ASN.1 DER signature.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        per_curve!(SigningInner, &self.inner, k => {
            let sig: ecdsa::der::Signature<_> = ecdsa::signature::Signer::sign(k, msg);
            sig.as_bytes().to_vec()
        })
    }
}

/// A public ECDSA verification key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: VerifyingInner,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({}, hint {})", self.curve(), self.hint())
    }
}

impl VerifyingKey {
    /// Loads a public key from a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let bad = key_err("public key");
        let (label, der) =
            pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|e| bad(format!("not a PEM document: {e}")))?;
        if label != "PUBLIC KEY" {
            return Err(SignatureError::UnsupportedKey {
                reason: format!("PEM label {label:?} (expected PUBLIC KEY)"),
            });
        }
        let spki = pkcs8::SubjectPublicKeyInfoRef::try_from(der.as_slice()).map_err(|e| bad(format!("SPKI: {e}")))?;
        if spki.algorithm.oid != elliptic_curve::ALGORITHM_OID {
            return Err(SignatureError::UnsupportedKey {
                reason: format!(
                    "key algorithm {} (only elliptic curve keys are supported)",
                    spki.algorithm.oid
                ),
            });
        }
        let oid = spki
            .algorithm
            .parameters_oid()
            .map_err(|e| bad(format!("SPKI curve: {e}")))?;
        let pk = |e: pkcs8::spki::Error| bad(format!("SPKI: {e}"));
        let inner = match Curve::from_oid(oid)? {
            Curve::P256 => VerifyingInner::P256(p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(pk)?),
            Curve::P384 => VerifyingInner::P384(p384::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(pk)?),
            Curve::P521 => VerifyingInner::P521(p521::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(pk)?),
        };
        Ok(Self { inner })
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        match self.inner {
            VerifyingInner::P256(_) => Curve::P256,
            VerifyingInner::P384(_) => Curve::P384,
            VerifyingInner::P521(_) => Curve::P521,
        }
    }

    /// The key as PEM SPKI with LF line endings and 64-column lines: the bytes `openssl ec -pubout` writes.
    pub fn to_pem(&self) -> String {
        per_curve!(VerifyingInner, &self.inner, k => k
            .to_public_key_pem(LineEnding::LF)
            // INVARIANT: encoding a valid curve point as SPKI PEM cannot fail.
            .unwrap_or_default())
    }

    /// The bundle's `verificationMaterial.publicKey.hint`: lowercase hex SHA-256 of [`Self::to_pem`], as
    /// `model_signing` computes it.
    pub fn hint(&self) -> String {
        hex::encode(Sha256::digest(self.to_pem().as_bytes()))
    }

    /// Verifies an ASN.1 DER ECDSA signature over `msg`, hashed with the curve's hash.
    pub fn verify(&self, msg: &[u8], der_sig: &[u8]) -> Result<(), SignatureError> {
        let ok = per_curve!(VerifyingInner, &self.inner, k => {
            ecdsa::der::Signature::from_bytes(der_sig)
                .is_ok_and(|sig| ecdsa::signature::Verifier::verify(k, msg, &sig).is_ok())
        });
        if ok { Ok(()) } else { Err(SignatureError::BadSignature) }
    }

    /// Verifies an ASN.1 DER ECDSA signature over a precomputed digest of any length (zero-extended or truncated to
    /// the curve order as SEC 1 prescribes). Used only for the seed's SHA-1 signatures.
    pub(crate) fn verify_prehash_any(&self, digest: &[u8], der_sig: &[u8]) -> Result<(), SignatureError> {
        macro_rules! prehash_ok {
            ($m:ident, $k:expr) => {
                $m::ecdsa::DerSignature::from_bytes(der_sig)
                    .ok()
                    .and_then(|s| $m::ecdsa::Signature::try_from(s).ok())
                    .is_some_and(|sig| {
                        let q = $m::ProjectivePoint::from(*$k.as_affine());
                        ecdsa::hazmat::verify_prehashed(&q, digest, &sig).is_ok()
                    })
            };
        }
        let ok = match &self.inner {
            VerifyingInner::P256(k) => prehash_ok!(p256, k),
            VerifyingInner::P384(k) => prehash_ok!(p384, k),
            VerifyingInner::P521(k) => prehash_ok!(p521, k),
        };
        if ok { Ok(()) } else { Err(SignatureError::BadSignature) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(curve: Curve) -> SigningKey {
        let inner = match curve {
            Curve::P256 => SigningInner::P256(p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap()),
            Curve::P384 => SigningInner::P384(p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap()),
            Curve::P521 => {
                let mut b = [7u8; 66];
                b[0] = 1;
                SigningInner::P521(p521::ecdsa::SigningKey::from_slice(&b).unwrap())
            }
        };
        SigningKey { inner }
    }

    #[test]
    fn sign_verify_round_trip_on_every_curve_and_tamper_fails() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let k = key(curve);
            let vk = k.verifying_key();
            let sig = k.sign(b"hello");
            vk.verify(b"hello", &sig).unwrap();
            assert!(vk.verify(b"hellp", &sig).is_err(), "{curve}");
            let pem = vk.to_pem();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
            assert_eq!(VerifyingKey::from_pem(&pem).unwrap(), vk);
            assert_eq!(vk.hint().len(), 64);
        }
    }

    #[test]
    fn debug_never_prints_key_material() {
        let k = key(Curve::P256);
        assert_eq!(format!("{k:?}"), "SigningKey(P-256, ..)");
    }
}
