//! Key transport as AKV does it: the runtime RSA key (sent as MAA runtime data), CKM_RSA_AES_KEY_WRAP
//! (RSA-OAEP of a fresh AES KEK ‖ AES key wrap with padding, RFC 5649), and turning a released key into
//! the 32-byte model key (oct as is; RSA via HKDF-SHA256 over the private exponent, as the seed does).

use aes_kw::KeyInit as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hkdf::Hkdf;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BoxedUint, PrivateKey, PublicKey};
use sha2::{Digest, Sha256, Sha384};

use crate::error::KeyWrapError;
use crate::secret::{ModelKey, SecretBytes, random_bytes};

/// AKV's default release wrapping algorithm (OAEP with SHA-1 and MGF1-SHA-1, then AES-KWP).
pub const CKM_RSA_AES_KEY_WRAP: &str = "CKM_RSA_AES_KEY_WRAP";
/// Variant with OAEP-SHA-256.
pub const RSA_AES_KEY_WRAP_256: &str = "RSA_AES_KEY_WRAP_256";
/// Variant with OAEP-SHA-384.
pub const RSA_AES_KEY_WRAP_384: &str = "RSA_AES_KEY_WRAP_384";
/// Default HKDF label of the seed's RSA-HSM → symmetric key derivation.
pub const DEFAULT_HKDF_LABEL: &str = "Symmetric Encryption Key";

fn b64url_uint(v: &BoxedUint) -> String {
    B64URL.encode(v.to_be_bytes_trimmed_vartime())
}

/// The guest's ephemeral RSA key. Its public half goes into MAA runtime data (and so into the token's
/// `x-ms-runtime.keys`); the key broker wraps the released key to it.
#[derive(Clone)]
pub struct RuntimeKey {
    key: PrivateKey,
}

impl std::fmt::Debug for RuntimeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl RuntimeKey {
    /// Generate an RSA-2048 key (as the seed does). Slow in debug builds; reuse one key per process.
    pub fn generate() -> Result<Self, KeyWrapError> {
        let key = PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| KeyWrapError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// Load from PEM (PKCS#8 or PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self, KeyWrapError> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let key = PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| PrivateKey::from_pkcs1_pem(pem))
            .map_err(|e| KeyWrapError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.to_public_key()
    }

    /// RFC 7638 thumbprint (b64url SHA-256 of `{"e","kty","n"}`), the `kid` jwx assigns.
    pub fn kid(&self) -> String {
        let n = b64url_uint(self.key.n());
        let e = b64url_uint(self.key.e());
        let canon = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        B64URL.encode(Sha256::digest(canon.as_bytes()))
    }

    /// Runtime data as the seed sends it: `{"keys":[{"e","key_ops":["encrypt"],"kid","kty":"RSA","n"}]}`,
    /// keys sorted, no whitespace (byte-exact with jwx). report_data = SHA-256 of these bytes ‖ 0³².
    pub fn runtime_data(&self) -> Vec<u8> {
        let n = b64url_uint(self.key.n());
        let e = b64url_uint(self.key.e());
        format!(
            r#"{{"keys":[{{"e":"{e}","key_ops":["encrypt"],"kid":"{}","kty":"RSA","n":"{n}"}}]}}"#,
            self.kid()
        )
        .into_bytes()
    }

    /// Unwrap a CKM_RSA_AES_KEY_WRAP (or _256/_384) ciphertext: RSA block of the modulus size, then KWP.
    pub fn unwrap(&self, enc: &str, ciphertext: &[u8]) -> Result<SecretBytes, KeyWrapError> {
        let k = self.key.size();
        if ciphertext.len() <= k {
            return Err(KeyWrapError::Short {
                len: ciphertext.len(),
                modulus: k,
            });
        }
        let (enc_kek, wrapped) = ciphertext.split_at(k);
        let kek = SecretBytes::new(
            match enc {
                CKM_RSA_AES_KEY_WRAP => self.key.oaep_decrypt::<sha1::Sha1>(enc_kek),
                RSA_AES_KEY_WRAP_256 => self.key.oaep_decrypt::<Sha256>(enc_kek),
                RSA_AES_KEY_WRAP_384 => self.key.oaep_decrypt::<Sha384>(enc_kek),
                other => return Err(KeyWrapError::Algorithm(other.to_string())),
            }
            .map_err(|e| KeyWrapError::Rsa(format!("decrypt: {e}")))?,
        );
        aes_kwp_unwrap(kek.expose(), wrapped)
    }
}

/// RFC 5649 unwrap with a 16-, 24- or 32-byte KEK.
pub fn aes_kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<SecretBytes, KeyWrapError> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; wrapped.len()]);
    let out = match kek.len() {
        16 => aes_kw::KwpAes128::new_from_slice(kek)
            .map_err(|_| KeyWrapError::Kwp)?
            .unwrap_key(wrapped, &mut buf),
        24 => aes_kw::KwpAes192::new_from_slice(kek)
            .map_err(|_| KeyWrapError::Kwp)?
            .unwrap_key(wrapped, &mut buf),
        32 => aes_kw::KwpAes256::new_from_slice(kek)
            .map_err(|_| KeyWrapError::Kwp)?
            .unwrap_key(wrapped, &mut buf),
        n => return Err(KeyWrapError::Key(format!("KEK of {n} bytes"))),
    }
    .map_err(|_| KeyWrapError::Kwp)?;
    Ok(SecretBytes::from_slice(out))
}

/// RFC 5649 wrap with a 32-byte KEK.
pub fn aes_kwp_wrap(kek: &[u8; 32], key: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
    let mut buf = vec![0u8; key.len().div_ceil(8) * 8 + 8];
    let kw = aes_kw::KwpAes256::new_from_slice(kek).map_err(|_| KeyWrapError::Kwp)?;
    let out = kw
        .wrap_key(key, &mut buf)
        .map_err(|e| KeyWrapError::Key(e.to_string()))?;
    Ok(out.to_vec())
}

/// CKM_RSA_AES_KEY_WRAP to `public`: `RSA-OAEP(KEK) ‖ AES-KWP(KEK, key)` with a fresh AES-256 KEK.
pub fn rsa_aes_wrap(public: &PublicKey, enc: &str, key: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
    let kek = zeroize::Zeroizing::new(random_bytes::<32>());
    let mut out = match enc {
        CKM_RSA_AES_KEY_WRAP => public.oaep_encrypt::<sha1::Sha1>(&kek[..]),
        RSA_AES_KEY_WRAP_256 => public.oaep_encrypt::<Sha256>(&kek[..]),
        RSA_AES_KEY_WRAP_384 => public.oaep_encrypt::<Sha384>(&kek[..]),
        other => return Err(KeyWrapError::Algorithm(other.to_string())),
    }
    .map_err(|e| KeyWrapError::Rsa(format!("encrypt: {e}")))?;
    out.extend_from_slice(&aes_kwp_wrap(&kek, key)?);
    Ok(out)
}

/// An RSA public key from a JWK (`kty` RSA, `n`, `e` base64url).
pub fn rsa_public_from_jwk(jwk: &serde_json::Value) -> Result<PublicKey, KeyWrapError> {
    let field = |name: &str| -> Result<Vec<u8>, KeyWrapError> {
        let s = jwk
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| KeyWrapError::Key(format!("JWK without {name}")))?;
        B64URL
            .decode(s.trim_end_matches('='))
            .map_err(|e| KeyWrapError::Key(format!("JWK {name}: {e}")))
    };
    if jwk.get("kty").and_then(|v| v.as_str()) != Some("RSA") {
        return Err(KeyWrapError::Key("JWK kty is not RSA".into()));
    }
    let n = BoxedUint::from_be_slice_vartime(&field("n")?);
    let e = BoxedUint::from_be_slice_vartime(&field("e")?);
    PublicKey::new(n, e).map_err(|e| KeyWrapError::Key(e.to_string()))
}

/// Salt and label for deriving a 32-byte key from an RSA key (seed: `key_derivation`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyDerivation {
    /// HKDF salt, hex (empty = no salt).
    #[serde(default)]
    pub salt: String,
    /// HKDF info; empty means [`DEFAULT_HKDF_LABEL`].
    #[serde(default)]
    pub label: String,
}

/// HKDF-SHA256(ikm = RSA private exponent D big-endian minimal, salt, info = label) → 32 bytes.
pub fn derive_from_rsa(pkcs8_der: &[u8], derivation: &KeyDerivation) -> Result<ModelKey, KeyWrapError> {
    let key = PrivateKey::from_pkcs8_der(pkcs8_der).map_err(|e| KeyWrapError::Key(format!("RSA PKCS#8: {e}")))?;
    derive_from_rsa_key(&key, derivation)
}

fn derive_from_rsa_key(key: &PrivateKey, derivation: &KeyDerivation) -> Result<ModelKey, KeyWrapError> {
    let salt = hex::decode(derivation.salt.trim()).map_err(|e| KeyWrapError::Key(format!("salt hex: {e}")))?;
    let label = if derivation.label.is_empty() {
        DEFAULT_HKDF_LABEL
    } else {
        derivation.label.as_str()
    };
    let d = zeroize::Zeroizing::new(key.d().to_be_bytes_trimmed_vartime());
    let hk = Hkdf::<Sha256>::new(Some(&salt), &d);
    ModelKey::new_with(|out| hk.expand(label.as_bytes(), out)).map_err(|e| KeyWrapError::Key(e.to_string()))
}

/// A key as released by AKV or the local broker, by `kty`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleasedKey {
    /// `oct` / `oct-HSM`: raw symmetric key bytes.
    Oct(SecretBytes),
    /// `RSA` / `RSA-HSM`: PKCS#8 DER of the private key.
    Rsa(SecretBytes),
    /// `EC` / `EC-HSM`: PKCS#8 DER of the private key.
    Ec(SecretBytes),
}

impl ReleasedKey {
    /// Interpret released bytes by `kty`.
    pub fn from_kty(kty: &str, bytes: SecretBytes) -> Result<Self, KeyWrapError> {
        match kty {
            "oct" | "oct-HSM" => Ok(Self::Oct(bytes)),
            "RSA" | "RSA-HSM" => Ok(Self::Rsa(bytes)),
            "EC" | "EC-HSM" => Ok(Self::Ec(bytes)),
            other => Err(KeyWrapError::Key(format!("unsupported kty {other:?}"))),
        }
    }

    /// The 32-byte model key: an oct key must be exactly 32 bytes; an RSA key goes through HKDF with
    /// `derivation` (seed behaviour); EC keys are refused.
    pub fn to_model_key(&self, derivation: &KeyDerivation) -> Result<ModelKey, KeyWrapError> {
        match self {
            Self::Oct(b) => ModelKey::from_slice(b.expose())
                .ok_or_else(|| KeyWrapError::Key(format!("oct key of {} bytes, expected 32", b.len()))),
            Self::Rsa(der) => derive_from_rsa(der.expose(), derivation),
            Self::Ec(_) => Err(KeyWrapError::Key("EC keys cannot be used as model keys".into())),
        }
    }
}

/// PKCS#8 DER of an RSA private key (what AKV releases for RSA keys).
pub fn rsa_private_pkcs8(key: &PrivateKey) -> Result<SecretBytes, KeyWrapError> {
    let doc = key.to_pkcs8_der().map_err(|e| KeyWrapError::Key(e.to_string()))?;
    Ok(SecretBytes::from_slice(doc.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwp_round_trip_and_tamper() {
        let kek = [7u8; 32];
        for len in [1usize, 8, 20, 32, 64] {
            let key: Vec<u8> = (0..len as u8).collect();
            let w = aes_kwp_wrap(&kek, &key).unwrap();
            assert_eq!(aes_kwp_unwrap(&kek, &w).unwrap().expose(), &key[..]);
            let mut bad = w.clone();
            bad[0] ^= 1;
            assert!(aes_kwp_unwrap(&kek, &bad).is_err());
        }
    }

    #[test]
    fn rfc5649_vectors() {
        // RFC 5649 §6, KEK 5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8.
        let kek = hex::decode("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8").unwrap();
        let w = hex::decode("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a").unwrap();
        let k = aes_kwp_unwrap(&kek, &w).unwrap();
        assert_eq!(
            k.expose(),
            hex::decode("c37b7e6492584340bed12207808941155068f738").unwrap()
        );
        let w = hex::decode("afbeb0f07dfbf5419200f2ccb50bb24f").unwrap();
        assert_eq!(
            aes_kwp_unwrap(&kek, &w).unwrap().expose(),
            hex::decode("466f7250617369").unwrap()
        );
    }
}
