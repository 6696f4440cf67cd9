//! Ed25519 keys for signing and verifying access tokens.
//!
//! Each key is named by its `kid`: the RFC 7638 JWK thumbprint of its public
//! half, so the same key gets the same id on every replica without any
//! configuration. A [`KeySet`] holds every public key a verifier accepts:
//! during a rotation it holds the new key and the old one until tokens
//! signed by the old key have expired.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey,
    spki::der::pem::LineEnding,
};
use jsonwebtoken::{DecodingKey, EncodingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The JWS algorithm of every shop key.
pub const ALGORITHM: &str = "EdDSA";

/// Loading, parsing or storing a key failed.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A private key or secret file every user of the machine may read or
    /// write: refused, as ssh refuses such a key.
    #[error(
        "{path} is open to every user (mode {mode:o}); make it owner-only (chmod 600; in Kubernetes, defaultMode: 0400)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file does not hold 64 hex digits.
    #[error("{path}: expected a secret of 64 hex digits")]
    InvalidSecret {
        /// The file.
        path: PathBuf,
    },
    /// The PEM text is not an Ed25519 key of the expected kind.
    #[error("{what} is not a valid Ed25519 {kind} key in PEM form")]
    InvalidPem {
        /// Where the text came from.
        what: String,
        /// "private" (PKCS#8) or "public" (SubjectPublicKeyInfo).
        kind: &'static str,
    },
}

/// The private key that signs access tokens. Only user-service has one.
pub struct SigningKey {
    kid: String,
    pkcs8_pem: String,
    encoding: EncodingKey,
    verification: VerificationKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key from the OS random source.
    pub fn generate() -> SigningKey {
        let secret = ed25519_dalek::SigningKey::from_bytes(&crate::random_bytes::<32>());
        SigningKey::from_dalek(&secret)
    }

    /// Parses a PKCS#8 PEM private key (PEM label `PRIVATE KEY`), as
    /// written by `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str, what: &str) -> Result<SigningKey, KeyError> {
        let secret =
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|_| KeyError::InvalidPem {
                what: what.to_owned(),
                kind: "private",
            })?;
        Ok(SigningKey::from_dalek(&secret))
    }

    /// Reads the key at `path`.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let pem = read_private_file(path)?;
        SigningKey::from_pem(&pem, &path.display().to_string())
    }

    /// Reads the key at `path`, or generates one and writes it there
    /// (mode 0600, parent directories created) when the file does not exist
    /// yet. This is how a development stack gets a key without one ever
    /// being committed, and keeps it across restarts so tokens stay valid.
    /// Returns the key and whether it was generated.
    pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            return Ok((SigningKey::load(path)?, false));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(io_err)?;
        }
        let key = SigningKey::generate();
        match write_new_private_file(path, key.to_pkcs8_pem().as_bytes()) {
            Ok(()) => Ok((key, true)),
            // Another process created it between our check and our write:
            // use theirs so both sign with the same key.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok((SigningKey::load(path)?, false))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn from_dalek(secret: &ed25519_dalek::SigningKey) -> SigningKey {
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes as PKCS#8");
        let encoding =
            EncodingKey::from_ed_pem(pem.as_bytes()).expect("our own PKCS#8 PEM always parses");
        let verification = VerificationKey::from_dalek(&secret.verifying_key());
        SigningKey {
            kid: verification.kid.clone(),
            pkcs8_pem: pem.to_string(),
            encoding,
            verification,
        }
    }

    fn to_pkcs8_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// The key id, as put in the `kid` header of the tokens it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for the key set and GetPublicKeys.
    pub fn verification_key(&self) -> &VerificationKey {
        &self.verification
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// Reads the 32-byte secret (hex) at `path`, or generates one and writes it
/// there (mode 0600, parent directories created) when the file does not
/// exist yet. For secrets a service keeps for itself, such as the key of
/// its page tokens; replicas must be given the same file.
pub fn load_or_generate_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let parse = |text: &str| -> Result<[u8; 32], KeyError> {
        let text = text.trim();
        let invalid = || KeyError::InvalidSecret {
            path: path.to_owned(),
        };
        if text.len() != 64 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(out)
    };
    if path.exists() {
        return parse(&read_private_file(path)?);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(io_err)?;
    }
    let secret = crate::random_bytes::<32>();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    match write_new_private_file(path, format!("{hex}\n").as_bytes()) {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => parse(&read_private_file(path)?),
        Err(e) => Err(io_err(e)),
    }
}

/// Reads a private key or secret file, refusing one that every user of
/// the machine may read or write.
fn read_private_file(path: &Path) -> Result<String, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
    }
    fs::read_to_string(path).map_err(io_err)
}

/// Creates `dir` and its missing parents, owner-only (0700) on Unix.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(unix)]
fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A public key that verifies tokens, with its id.
#[derive(Clone)]
pub struct VerificationKey {
    kid: String,
    public_key_pem: String,
    decoding: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Parses a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    /// The `kid` is computed from the key, never taken on trust.
    pub fn from_pem(pem: &str, what: &str) -> Result<VerificationKey, KeyError> {
        let public = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|_| {
            KeyError::InvalidPem {
                what: what.to_owned(),
                kind: "public",
            }
        })?;
        Ok(VerificationKey::from_dalek(&public))
    }

    /// Reads a public key PEM file.
    pub fn load(path: &Path) -> Result<VerificationKey, KeyError> {
        let pem = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        VerificationKey::from_pem(&pem, &path.display().to_string())
    }

    fn from_dalek(public: &ed25519_dalek::VerifyingKey) -> VerificationKey {
        let public_key_pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 public key always encodes as SPKI");
        let decoding = DecodingKey::from_ed_der(public.as_bytes());
        VerificationKey {
            kid: jwk_thumbprint(public.as_bytes()),
            public_key_pem,
            decoding,
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS algorithm this key verifies.
    pub fn algorithm(&self) -> &'static str {
        ALGORITHM
    }

    /// The key as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK: base64url(SHA-256 of the
/// canonical JSON `{"crv":"Ed25519","kty":"OKP","x":"..."}`).
fn jwk_thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The public keys a verifier accepts, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, VerificationKey>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> KeySet {
        KeySet::default()
    }

    /// Adds a key, replacing one with the same id.
    pub fn insert(&mut self, key: VerificationKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    /// Every key, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &VerificationKey> {
        self.keys.values()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromIterator<VerificationKey> for KeySet {
    fn from_iter<I: IntoIterator<Item = VerificationKey>>(iter: I) -> KeySet {
        let mut set = KeySet::new();
        for key in iter {
            set.insert(key);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_kept_and_reloaded_with_the_same_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/jwt.pem");
        let (first, generated) = SigningKey::load_or_generate(&path).unwrap();
        assert!(generated);
        let (second, generated) = SigningKey::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(first.kid(), second.kid());
        let pem = fs::read_to_string(&path).unwrap();
        let label = ["PRIVATE", "KEY"].join(" ");
        assert!(
            pem.starts_with(&format!("-----BEGIN {label}-----")),
            "PKCS#8 PEM"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
            let dir_mode = fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                dir_mode & 0o077,
                0,
                "key directory open to others: {dir_mode:o}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_and_secret_files_open_to_every_user_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("jwt.pem");
        let secret = dir.path().join("secret.key");
        SigningKey::load_or_generate(&key).unwrap();
        load_or_generate_secret(&secret).unwrap();
        for path in [&key, &secret] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let Err(refused) = SigningKey::load(&key) else {
            panic!("a 0644 key is refused");
        };
        assert!(
            matches!(refused, KeyError::Exposed { mode: 0o644, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        assert!(matches!(
            load_or_generate_secret(&secret),
            Err(KeyError::Exposed { .. })
        ));
        // Group access is the operator's choice (a shared service group).
        for path in [&key, &secret] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o640)).unwrap();
        }
        SigningKey::load(&key).expect("a 0640 key loads");
        load_or_generate_secret(&secret).expect("a 0640 secret loads");
    }

    #[test]
    fn secrets_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/secret.key");
        let first = load_or_generate_secret(&path).unwrap();
        assert_eq!(load_or_generate_secret(&path).unwrap(), first);
        assert_ne!(first, [0u8; 32]);
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            load_or_generate_secret(&path),
            Err(KeyError::InvalidSecret { .. })
        ));
    }

    #[test]
    fn public_pem_round_trips_with_the_same_kid() {
        let key = SigningKey::generate();
        let public = key.verification_key();
        let parsed = VerificationKey::from_pem(public.public_key_pem(), "test").unwrap();
        assert_eq!(parsed.kid(), key.kid());
        assert_eq!(parsed.algorithm(), "EdDSA");
    }

    #[test]
    fn different_keys_have_different_kids() {
        assert_ne!(SigningKey::generate().kid(), SigningKey::generate().kid());
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = SigningKey::from_pem("not a key", "JWT_PRIVATE_KEY_FILE").unwrap_err();
        assert!(err.to_string().contains("JWT_PRIVATE_KEY_FILE"));
        assert!(VerificationKey::from_pem("-----BEGIN PUBLIC KEY-----\n", "x").is_err());
    }

    #[test]
    fn openssl_style_pkcs8_keys_load() {
        // The published example key of RFC 8410 section 10.3 (what
        // `openssl genpkey -algorithm ed25519` writes), armoured here at
        // run time so that no key-shaped block sits in the source tree.
        let der_b64 = "MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC";
        let label = ["PRIVATE", "KEY"].join(" ");
        let pem = format!("-----BEGIN {label}-----\n{der_b64}\n-----END {label}-----\n");
        let key = SigningKey::from_pem(&pem, "rfc8410").unwrap();
        assert!(!key.kid().is_empty());
    }
}
