//! Public keys for tokens, read from files once, when the options are parsed: a PEM file
//! (`--jwt-public-key`) and a JSON Web Key Set (`--jwt-jwks`). A file that cannot be used
//! is an option error, so the server does not start with it.
//!
//! Also here: [`read_signing_key`], the private half, for `switchboard-token` and tests.
//!
//! Every key is checked here, so that verifying a token never meets a broken key: RSA
//! moduli of at least 2048 bits, EC points on P-256 or P-384, Ed25519 keys of 32 bytes.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use spki::der::Decode;
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3 asks for 2048 or more).
const MIN_RSA_BITS: usize = 2048;

/// What a public key is, which decides the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA: RS256 unless told otherwise; RS384, RS512, PS256, PS384, PS512 on request.
    Rsa,
    /// EC on P-256: ES256.
    P256,
    /// EC on P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyType {
    /// The algorithm for this key when nothing names one.
    pub fn default_algorithm(self) -> Algorithm {
        match self {
            Self::Rsa => Algorithm::RS256,
            Self::P256 => Algorithm::ES256,
            Self::P384 => Algorithm::ES384,
            Self::Ed25519 => Algorithm::EdDSA,
        }
    }

    /// Whether tokens signed with `alg` can be checked with this kind of key.
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rsa => "RSA",
            Self::P256 => "EC P-256",
            Self::P384 => "EC P-384",
            Self::Ed25519 => "Ed25519",
        })
    }
}

/// Parses a public-key algorithm name (`--jwt-algorithm`): `RS256`, `RS384`, `RS512`,
/// `PS256`, `PS384`, `PS512`, `ES256`, `ES384` or `EdDSA`. The HMAC algorithms are refused:
/// they belong to `--jwt-secret`, never to a public key.
pub fn parse_public_key_algorithm(name: &str) -> Result<Algorithm, String> {
    match name.parse::<Algorithm>() {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => Err(format!(
            "{name} is a shared-secret algorithm, not one for a public key (HS256 tokens \
             use the secret)"
        )),
        Ok(alg) => Ok(alg),
        Err(_) => Err(format!(
            "unknown algorithm {name:?}: expected RS256, RS384, RS512, PS256, PS384, PS512, \
             ES256, ES384 or EdDSA"
        )),
    }
}

/// A public key read from a PEM file (`--jwt-public-key`).
#[derive(Debug, Clone)]
pub struct PublicKeyFile {
    path: PathBuf,
    key_type: KeyType,
    key: DecodingKey,
}

impl PublicKeyFile {
    /// Reads the PEM file at `path`: a `PUBLIC KEY` (RSA, EC P-256, EC P-384 or Ed25519,
    /// as `openssl pkey -pubout` writes it) or an `RSA PUBLIC KEY`. Private keys and
    /// certificates are refused with a hint.
    pub fn read(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let (key_type, key) = parse_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self {
            path: path.into(),
            key_type,
            key,
        })
    }

    /// The file the key came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the key is.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The algorithm tokens signed with this key must name: `explicit` (from
    /// `--jwt-algorithm`) if given, which must suit the key; otherwise the key type's
    /// [default](KeyType::default_algorithm).
    pub fn algorithm(&self, explicit: Option<Algorithm>) -> Result<Algorithm, String> {
        match explicit {
            None => Ok(self.key_type.default_algorithm()),
            Some(alg) if self.key_type.verifies(alg) => Ok(alg),
            Some(alg) => Err(format!(
                "--jwt-algorithm {alg:?} does not suit the {} key in {}",
                self.key_type,
                self.path.display()
            )),
        }
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

fn parse_pem(pem: &[u8]) -> Result<(KeyType, DecodingKey), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_owned())?;
    let (label, der) = spki::der::pem::decode_vec(text.trim().as_bytes())
        .map_err(|e| format!("not a PEM file: {e}"))?;
    match label {
        "PUBLIC KEY" => {
            let info = SubjectPublicKeyInfoRef::from_der(&der)
                .map_err(|e| format!("not a valid public key: {e}"))?;
            let bits = info
                .subject_public_key
                .as_bytes()
                .ok_or("not a valid public key: the key bits are not whole bytes")?;
            let (oid, curve) = (info.algorithm.oid, info.algorithm.parameters_oid().ok());
            if oid == RSA_ENCRYPTION {
                rsa_from_pkcs1(bits)
            } else if oid == EC_PUBLIC_KEY && curve == Some(SECP256R1) {
                checked(KeyType::P256, DecodingKey::from_ec_der(bits))
            } else if oid == EC_PUBLIC_KEY && curve == Some(SECP384R1) {
                checked(KeyType::P384, DecodingKey::from_ec_der(bits))
            } else if oid == EC_PUBLIC_KEY {
                Err("an EC key on an unsupported curve (P-256 and P-384 are supported)".into())
            } else if oid == ED25519 {
                checked(KeyType::Ed25519, DecodingKey::from_ed_der(bits))
            } else {
                Err(format!(
                    "an unsupported key type (algorithm {oid}); RSA, EC P-256, EC P-384 and \
                     Ed25519 are supported"
                ))
            }
        }
        "RSA PUBLIC KEY" => rsa_from_pkcs1(&der),
        label if label.contains("PRIVATE KEY") => Err(format!(
            "a private key ({label}); the server needs the public key: \
             openssl pkey -in <private.pem> -pubout"
        )),
        "CERTIFICATE" => Err(
            "a certificate; extract its public key: openssl x509 -in <cert.pem> -pubkey -noout"
                .into(),
        ),
        label => Err(format!(
            "a PEM {label:?}; expected PUBLIC KEY or RSA PUBLIC KEY"
        )),
    }
}

/// An RSA key from its PKCS#1 `RSAPublicKey` DER.
fn rsa_from_pkcs1(der: &[u8]) -> Result<(KeyType, DecodingKey), String> {
    let key = pkcs1::RsaPublicKey::from_der(der)
        .map_err(|e| format!("not a valid RSA public key: {e}"))?;
    check_rsa(key.modulus.as_bytes(), key.public_exponent.as_bytes())?;
    Ok((KeyType::Rsa, DecodingKey::from_rsa_der(der)))
}

/// `n` and `e` big-endian; leading zero bytes are allowed.
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_zeros(n);
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    if strip_zeros(e).is_empty() {
        return Err("an RSA key with a zero exponent".into());
    }
    Ok(())
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Checks an EC or Ed25519 key by building the verifier jsonwebtoken would build (it checks
/// the point is on the curve); RSA keys are checked by [`check_rsa`].
fn checked(key_type: KeyType, key: DecodingKey) -> Result<(KeyType, DecodingKey), String> {
    let expected = match key_type {
        KeyType::Rsa => None,
        KeyType::P256 => Some(65),
        KeyType::P384 => Some(97),
        KeyType::Ed25519 => Some(32),
    };
    if let (Some(expected), Ok(bytes)) = (expected, key.try_get_as_bytes()) {
        // Uncompressed points (0x04, x, y) and raw Ed25519 keys; the length is also what
        // keeps jsonwebtoken's EdDSA verifier from slicing out of bounds.
        if bytes.len() != expected {
            return Err(format!(
                "a {key_type} key of {} bytes; expected {expected}",
                bytes.len()
            ));
        }
    }
    let alg = key_type.default_algorithm();
    // An empty signature never verifies; only a key the verifier refuses is an error.
    if let Err(e) = jsonwebtoken::crypto::verify("", b"", &key, alg) {
        return Err(format!("not a valid {key_type} key: {e}"));
    }
    Ok((key_type, key))
}

/// The signature keys of a JSON Web Key Set file (`--jwt-jwks`).
#[derive(Debug, Clone)]
pub struct JwksFile {
    path: PathBuf,
    keys: Vec<JwksKey>,
}

/// One usable key of a key set.
#[derive(Debug, Clone)]
pub(crate) struct JwksKey {
    /// The key's `kid`; only a set's single key may lack one.
    pub(crate) kid: Option<String>,
    /// The key's `alg`, or the default for its type when it names none.
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl JwksFile {
    /// Reads the key set at `path`: `{"keys": [...]}` with RSA (`n`, `e`), EC (`crv`
    /// `P-256` or `P-384`, `x`, `y`) and OKP (`crv` `Ed25519`, `x`) keys. A key's `alg`, when
    /// present, must suit it; without `alg` a key gets its type's
    /// [default](KeyType::default_algorithm). Keys marked `"use": "enc"` or with an
    /// encryption `alg` are skipped. In a set of several keys every key needs a distinct
    /// `kid`. Symmetric (`oct`) keys and anything else are refused.
    pub fn read(path: &str) -> Result<Self, String> {
        let json = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let keys = parse_jwks(&json).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self {
            path: path.into(),
            keys,
        })
    }

    /// The file the keys came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many signature keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no keys (never true for a set that [`read`](Self::read)
    /// returned).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn keys(&self) -> &[JwksKey] {
        &self.keys
    }
}

fn parse_jwks(json: &str) -> Result<Vec<JwksKey>, String> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("key {i} (kid {kid:?})"),
            None => format!("key {i}"),
        };
        if let Some(key) = jwk_key(jwk).map_err(|e| format!("{name}: {e}"))? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("no signature keys in the set".into());
    }
    if keys.len() > 1 {
        let mut kids = std::collections::HashSet::new();
        for key in &keys {
            let Some(kid) = &key.kid else {
                return Err("a set of several keys needs a kid on every key".into());
            };
            if !kids.insert(kid.as_str()) {
                return Err(format!("two keys with kid {kid:?}"));
            }
        }
    }
    Ok(keys)
}

/// One JWK as a verification key; `None` for an encryption key.
fn jwk_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Option<JwksKey>, String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let key_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => KeyType::P256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => KeyType::P384,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyType::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key; HS256 tokens use --jwt-secret".into());
        }
        _ => {
            return Err(
                "an unsupported key (RSA, EC P-256, EC P-384 and OKP Ed25519 are supported)".into(),
            );
        }
    };
    let alg = match jwk.common.key_algorithm {
        None => key_type.default_algorithm(),
        Some(alg) => match signature_algorithm(alg) {
            Some(alg) => alg,
            None if is_encryption(alg) => return Ok(None),
            None => return Err(format!("an unsupported alg {alg:?}")),
        },
    };
    if !key_type.verifies(alg) {
        return Err(format!("alg {alg:?} does not suit a {key_type} key"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a malformed key: {e}"))?;
    let key = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            check_rsa(n, e)?;
            key
        }
        DecodingKeyKind::SecretOrDer(_) => checked(key_type, key)?.1,
    };
    Ok(Some(JwksKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    }))
}

/// The signature algorithm a JWK names; `None` for the rest.
fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn is_encryption(alg: KeyAlgorithm) -> bool {
    matches!(
        alg,
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256
    )
}

/// Reads a private key PEM file to sign `alg` tokens with (`switchboard-token --key`, tests):
/// PKCS#8 (`PRIVATE KEY`, as `openssl genpkey` writes it) or, for RSA, `RSA PRIVATE KEY`.
/// Whether the key suits `alg` shows when signing.
pub fn read_signing_key(path: &Path, alg: Algorithm) -> Result<EncodingKey, String> {
    let shown = path.display();
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let (label, der) = spki::der::pem::decode_vec(pem.trim().as_bytes())
        .map_err(|e| format!("{shown}: not a PEM file: {e}"))?;
    Ok(match (label, alg.family()) {
        // jsonwebtoken signs RSA with a PKCS#1 key, which PKCS#8 wraps.
        ("PRIVATE KEY", AlgorithmFamily::Rsa) => {
            let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| format!("{shown}: not a PKCS#8 private key: {e}"))?;
            EncodingKey::from_rsa_der(info.private_key)
        }
        ("RSA PRIVATE KEY", AlgorithmFamily::Rsa) => EncodingKey::from_rsa_der(&der),
        ("PRIVATE KEY", AlgorithmFamily::Ec) => EncodingKey::from_ec_der(&der),
        ("PRIVATE KEY", AlgorithmFamily::Ed) => EncodingKey::from_ed_der(&der),
        ("EC PRIVATE KEY", _) => {
            return Err(format!(
                "{shown}: a SEC1 EC key; convert it to PKCS#8: \
                 openssl pkcs8 -topk8 -nocrypt -in {shown} -out key.p8.pem"
            ));
        }
        ("ENCRYPTED PRIVATE KEY", _) => {
            return Err(format!(
                "{shown}: an encrypted key; decrypt it first: openssl pkey -in {shown} -out plain.pem"
            ));
        }
        (label, _) => {
            return Err(format!(
                "{shown}: a PEM {label:?} is not a private key for {alg:?}"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Header, Validation, decode, encode};
    use serde_json::{Value, json};

    use super::*;

    fn key_file(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn pem_error(pem: &str) -> String {
        parse_pem(pem.as_bytes()).map(|_| ()).unwrap_err()
    }

    /// The test key set's key with this `kid`.
    fn test_jwk(kid: &str) -> Value {
        let set: Value =
            serde_json::from_str(&std::fs::read_to_string(key_file("jwks.json")).unwrap()).unwrap();
        let keys = set["keys"].as_array().unwrap();
        keys.iter().find(|k| k["kid"] == kid).unwrap().clone()
    }

    fn jwks_error(keys: Value) -> String {
        parse_jwks(&json!({ "keys": keys }).to_string())
            .map(|_| ())
            .unwrap_err()
    }

    #[test]
    fn pem_public_keys_are_typed_by_their_contents() {
        for (file, key_type) in [
            ("rsa.pub.pem", KeyType::Rsa),
            ("ec256.pub.pem", KeyType::P256),
            ("ec384.pub.pem", KeyType::P384),
            ("ed25519.pub.pem", KeyType::Ed25519),
        ] {
            let key = PublicKeyFile::read(&key_file(file)).unwrap();
            assert_eq!(key.key_type(), key_type, "{file}");
            assert_eq!(key.algorithm(None), Ok(key_type.default_algorithm()));
        }
        let rsa = PublicKeyFile::read(&key_file("rsa.pub.pem")).unwrap();
        assert_eq!(rsa.algorithm(Some(Algorithm::PS512)), Ok(Algorithm::PS512));
        assert!(rsa.algorithm(Some(Algorithm::ES256)).is_err());
    }

    #[test]
    fn a_pkcs1_rsa_public_key_verifies() {
        // `openssl rsa -pubin -in rsa.pub.pem -RSAPublicKey_out`
        let pem = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAnXHnCBXe8PUtBBxjs9kqnHBwIyr73XDAGfgb2/R1n/XDDl53gqwS
YGrzvZRHcK69ci9BhE5BqKBRaGVApBvMH5BjZC8iD+XRPW8T2G0WCuOTlHsUZ5lL
AiAho3tCSondAagIZZrd8zrqcZy7IL2Pj9l0GrOMyIG0ZaITTIJE6+ktfJLDVRqL
AFW6uzpw2xC1makqungxPx5FoWO0usKETb2gZsKz0drvj1e2vPfO4GtMfT/NSj7d
H6gmukdOj7p6dp1fzfwxAvB1wU3pj+ja9inG3fDVOg1hVHppjeVPRNDzJVdoFoPg
4blZetWddnJ/9GloEi7g4f0Y+PuYn8Ue8QIDAQAB
-----END RSA PUBLIC KEY-----
";
        let (key_type, key) = parse_pem(pem.as_bytes()).unwrap();
        assert_eq!(key_type, KeyType::Rsa);
        let signing = read_signing_key(Path::new(&key_file("rsa.pem")), Algorithm::RS256).unwrap();
        let claims = json!({"sub": "u1", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let token = encode(&Header::new(Algorithm::RS256), &claims, &signing).unwrap();
        let validation = Validation::new(Algorithm::RS256);
        assert!(decode::<Value>(&token, &key, &validation).is_ok());
    }

    #[test]
    fn unusable_pem_files_are_refused_with_a_hint() {
        let private = std::fs::read_to_string(key_file("ec256.pem")).unwrap();
        assert!(pem_error(&private).contains("openssl pkey -in <private.pem> -pubout"));
        let cert = "-----BEGIN CERTIFICATE-----
MIIBLDCB36ADAgECAhRVxD75HD5jvFL2EUCivFRHw5tK8jAFBgMrZXAwDDEKMAgG
A1UEAwwBdDAeFw0yNjExMjUyMzQ4MzdaFw0yNjExMjYyMzQ4MzdaMAwxCjAIBgNV
BAMMAXQwKjAFBgMrZXADIQAu830I4gs8bX+8oFTGvvV+jgb7aBnccj22QypU6ZCu
ZqNTMFEwHQYDVR0OBBYEFEiFeFTAHsuIQpuC2v8gqqlb+gbAMB8GA1UdIwQYMBaA
FEiFeFTAHsuIQpuC2v8gqqlb+gbAMA8GA1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EA
/Nf5HMFZs77aKt49DEzwQe3+ovA9iUxt3mzrIKQOldheK+k8CwjSg3/qTNucaP+R
pS4aO1d+RTtTEZdbnbDQAQ==
-----END CERTIFICATE-----";
        assert!(pem_error(cert).contains("openssl x509"));
        let x25519 = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VuAyEABSoTAxGK77KpqjbUF2qk3NMlfUhwb/EGPyXLh0B+bHI=
-----END PUBLIC KEY-----";
        assert!(pem_error(x25519).contains("unsupported key type (algorithm 1.3.101.110)"));
        let secp256k1 = "-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEVBZgBIfujgUboVn9jsyRMujzs0LBt0kV
JFH+EKEU4dpQuKXEOvxwlc7SHwC9/QmBozAAZa+i1Sd/Z+e1RBXTSQ==
-----END PUBLIC KEY-----";
        assert!(pem_error(secp256k1).contains("unsupported curve"));
        let rsa1024 = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCnc5+8mXOH52G925L7q4JoI+nW
Kx/EmXSDUbUpkMqleO2l8DlILtQ9RdKc3atH3vhRHAUu2Pm9wkv+baNT2bujAC2Y
6kWM3G94/qEmNJk1xh80sG+hvmdZlkXVjRDx53Xi1+VPINHpozsT8p9mcvuwGWj7
qZ4XXN2YOWylC1zTTQIDAQAB
-----END PUBLIC KEY-----";
        assert!(pem_error(rsa1024).contains("an RSA key of 1024 bits"));
        assert!(pem_error("ssh-ed25519 AAAAC3Nz").contains("not a PEM file"));
    }

    #[test]
    fn the_test_key_set_has_one_key_per_type() {
        let set = JwksFile::read(&key_file("jwks.json")).unwrap();
        let keys: Vec<_> = set
            .keys()
            .iter()
            .map(|k| (k.kid.as_deref().unwrap(), k.alg))
            .collect();
        assert_eq!(
            keys,
            [
                ("rsa-1", Algorithm::RS256),
                ("ec-1", Algorithm::ES256),
                ("ed-1", Algorithm::EdDSA)
            ]
        );
    }

    #[test]
    fn a_jwk_without_alg_gets_its_types_default_and_encryption_keys_are_skipped() {
        let mut ec = test_jwk("ec-1");
        ec.as_object_mut().unwrap().remove("alg");
        let mut enc = test_jwk("rsa-1");
        enc["use"] = json!("enc");
        let mut oaep = test_jwk("rsa-1");
        oaep["kid"] = json!("rsa-oaep");
        oaep["alg"] = json!("RSA-OAEP");
        oaep.as_object_mut().unwrap().remove("use");
        let keys = parse_jwks(&json!({"keys": [enc, ec, oaep]}).to_string()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (keys[0].kid.as_deref(), keys[0].alg),
            (Some("ec-1"), Algorithm::ES256)
        );
    }

    #[test]
    fn unusable_key_sets_are_refused() {
        let rsa = test_jwk("rsa-1");
        let ec = test_jwk("ec-1");
        let ed = test_jwk("ed-1");
        assert!(jwks_error(json!([])).contains("no signature keys"));
        let msg = jwks_error(json!([{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]));
        assert!(
            msg.contains(r#"key 0 (kid "h"): a symmetric (oct) key"#),
            "{msg}"
        );
        assert!(jwks_error(json!([ec, ec])).contains(r#"two keys with kid "ec-1""#));
        let mut bare = ed.clone();
        bare.as_object_mut().unwrap().remove("kid");
        assert!(jwks_error(json!([rsa, bare])).contains("needs a kid on every key"));
        let mut wrong_alg = ec.clone();
        wrong_alg["alg"] = json!("RS256");
        assert!(jwks_error(json!([wrong_alg])).contains("alg RS256 does not suit a EC P-256 key"));
        let mut hs = rsa.clone();
        hs["alg"] = json!("HS256");
        assert!(jwks_error(json!([hs])).contains("unsupported alg HS256"));
        let mut p521 = ec.clone();
        p521["crv"] = json!("P-521");
        assert!(jwks_error(json!([p521])).contains("an unsupported key"));
        let mut short = ed.clone();
        short["x"] = json!("AAAA");
        assert!(jwks_error(json!([short])).contains("a Ed25519 key of 3 bytes; expected 32"));
        let mut off_curve = ec.clone();
        off_curve["x"] = json!("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE");
        assert!(jwks_error(json!([off_curve])).contains("not a valid EC P-256 key"));
        let mut small = rsa.clone();
        small["n"] = json!(format!("{}8", "_".repeat(170))); // 128 bytes of 0xff
        assert!(jwks_error(json!([small])).contains("an RSA key of 1024 bits"));
        assert!(
            parse_jwks("{")
                .unwrap_err()
                .contains("not a JSON Web Key Set")
        );
    }

    #[test]
    fn signing_keys_need_pkcs8_or_pkcs1() {
        let path = key_file("ec256.pub.pem");
        let err = read_signing_key(Path::new(&path), Algorithm::ES256)
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.contains(r#"a PEM "PUBLIC KEY" is not a private key"#),
            "{err}"
        );
        for (file, alg) in [
            ("rsa.pem", Algorithm::RS256),
            ("ec256.pem", Algorithm::ES256),
            ("ed25519.pem", Algorithm::EdDSA),
        ] {
            assert!(
                read_signing_key(Path::new(&key_file(file)), alg).is_ok(),
                "{file}"
            );
        }
    }
}
