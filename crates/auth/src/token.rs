//! JWT access tokens: issued by user-service, verified by every service.
//!
//! Tokens are EdDSA (Ed25519) JWS with a `kid` header naming the key and the
//! claims `sub`, `roles`, `iss`, `aud`, `exp`, `nbf`, `iat` and `jti`.
//! Verification pins the algorithm (a token may not choose it), requires
//! every one of those time and audience claims, and allows a small clock
//! skew.

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{KeySet, Role, SigningKey, principal::Principal};

/// Default `iss` of shop access tokens: the name of the platform's token
/// issuer (the account service), kept stable so that issuers and verifiers
/// of different releases agree.
pub const DEFAULT_ISSUER: &str = "shop.user-service";
/// Default `aud` of shop access tokens.
pub const DEFAULT_AUDIENCE: &str = "shop";

/// Default lifetime of an access token.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Default clock skew tolerated on `exp` and `nbf`: enough for servers whose
/// clocks are NTP-synchronised, small enough not to extend a token's life
/// meaningfully.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The claims of a shop access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The user's roles when the token was issued.
    pub roles: Vec<Role>,
    /// Who issued the token.
    pub iss: String,
    /// Who the token is for.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not valid before, seconds since the Unix epoch.
    pub nbf: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
}

impl Claims {
    /// The caller these claims describe.
    pub fn into_principal(self) -> Principal {
        Principal {
            user_id: self.sub,
            roles: self.roles,
            token_id: self.jti,
            expires_at: self.exp,
        }
    }
}

/// Why a token was refused (or could not be issued).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a well-formed JWS with a `kid` and readable claims.
    #[error("malformed token")]
    Malformed,
    /// Signed by a key this verifier does not know (yet: a verifier that
    /// fetches keys may refresh and try again).
    #[error("unknown signing key {kid:?}")]
    UnknownKey {
        /// The `kid` header.
        kid: String,
    },
    /// The header names an algorithm other than EdDSA.
    #[error("algorithm not allowed")]
    Algorithm,
    /// The signature does not match.
    #[error("invalid signature")]
    Signature,
    /// Past `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` is not the expected audience.
    #[error("wrong audience")]
    Audience,
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// Signing failed (issuer side only).
    #[error("signing failed: {0}")]
    Signing(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(err: jsonwebtoken::errors::Error) -> TokenError {
        match err.kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
            _ => TokenError::Malformed,
        }
    }
}

/// A freshly signed access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its lifetime from now.
    pub expires_in: Duration,
}

/// Signs access tokens. Only user-service constructs one.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    key: Arc<SigningKey>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl TokenIssuer {
    /// An issuer that signs with `key`.
    pub fn new(
        key: Arc<SigningKey>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        ttl: Duration,
    ) -> TokenIssuer {
        TokenIssuer {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
            ttl,
        }
    }

    /// Signs a token for `subject` with `roles`, valid from now for the
    /// configured lifetime.
    pub fn issue(&self, subject: &str, roles: &[Role]) -> Result<IssuedToken, TokenError> {
        self.issue_at(subject, roles, unix_now())
    }

    /// [`TokenIssuer::issue`] as of `now` (seconds since the Unix epoch),
    /// for tokens that are already expired or not valid yet (tests).
    pub fn issue_at(
        &self,
        subject: &str,
        roles: &[Role],
        now: i64,
    ) -> Result<IssuedToken, TokenError> {
        let claims = Claims {
            sub: subject.to_owned(),
            roles: roles.to_vec(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + self.ttl.as_secs() as i64,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = sign(&self.key, &claims)?;
        Ok(IssuedToken {
            token,
            jti: claims.jti,
            expires_in: self.ttl,
        })
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
}

fn sign(key: &SigningKey, claims: &Claims) -> Result<String, TokenError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, claims, key.encoding_key())
        .map_err(|e| TokenError::Signing(e.to_string()))
}

/// Verifies access tokens against a key set.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: KeySet,
    validation: Validation,
}

impl TokenVerifier {
    /// A verifier that accepts tokens signed by any key in `keys`, issued by
    /// `issuer` for `audience`, allowing `leeway` of clock skew.
    pub fn new(keys: KeySet, issuer: &str, audience: &str, leeway: Duration) -> TokenVerifier {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = leeway.as_secs();
        TokenVerifier { keys, validation }
    }

    /// The keys this verifier accepts.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Checks the signature, algorithm, `kid`, times, issuer and audience,
    /// and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey { kid: kid.clone() })?;
        let data = jsonwebtoken::decode::<Claims>(token, key.decoding_key(), &self.validation)?;
        Ok(data.claims)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::EncodingKey;

    use super::*;

    const ISS: &str = "shop.user-service";
    const AUD: &str = "shop";

    struct Fixture {
        key: Arc<SigningKey>,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
    }

    fn fixture() -> Fixture {
        let key = Arc::new(SigningKey::generate());
        let keys: KeySet = [key.verification_key().clone()].into_iter().collect();
        Fixture {
            issuer: TokenIssuer::new(Arc::clone(&key), ISS, AUD, DEFAULT_ACCESS_TOKEN_TTL),
            verifier: TokenVerifier::new(keys, ISS, AUD, DEFAULT_LEEWAY),
            key,
        }
    }

    fn claims(f: &Fixture) -> Claims {
        let token = f.issuer.issue("user-1", &[Role::Customer]).unwrap();
        f.verifier.verify(&token.token).unwrap()
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn issued_tokens_verify_with_every_claim() {
        let f = fixture();
        let issued = f
            .issuer
            .issue("user-1", &[Role::Customer, Role::Admin])
            .unwrap();
        let claims = f.verifier.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.roles, vec![Role::Customer, Role::Admin]);
        assert_eq!(claims.iss, ISS);
        assert_eq!(claims.aud, AUD);
        assert_eq!(claims.jti, issued.jti);
        assert_eq!(claims.exp - claims.iat, 15 * 60);
        assert_eq!(claims.nbf, claims.iat);
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(f.key.kid()));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }

    #[test]
    fn alg_none_is_refused() {
        let f = fixture();
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": f.key.kid()});
        let payload = serde_json::to_value(claims(&f)).unwrap();
        let token = format!("{}.{}.", b64(&header), b64(&payload));
        assert!(f.verifier.verify(&token).is_err());
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let f = fixture();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(f.key.kid().to_owned());
        let secret = f.key.verification_key().public_key_pem().as_bytes();
        let token =
            jsonwebtoken::encode(&header, &claims(&f), &EncodingKey::from_secret(secret)).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::Algorithm));
    }

    #[test]
    fn stripped_signature_is_refused() {
        let f = fixture();
        let token = f.issuer.issue("user-1", &[Role::Customer]).unwrap().token;
        let unsigned = &token[..=token.rfind('.').unwrap()];
        assert!(f.verifier.verify(unsigned).is_err());
        let no_dot = &token[..token.rfind('.').unwrap()];
        assert!(f.verifier.verify(no_dot).is_err());
    }

    #[test]
    fn tampered_payload_is_refused() {
        let f = fixture();
        let token = f.issuer.issue("user-1", &[Role::Customer]).unwrap().token;
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims(&f);
        forged.roles = vec![Role::Admin];
        let forged_payload = b64(&serde_json::to_value(forged).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(f.verifier.verify(&tampered), Err(TokenError::Signature));
    }

    #[test]
    fn expired_tokens_are_refused_after_the_leeway() {
        let f = fixture();
        let mut c = claims(&f);
        c.iat -= 3600;
        c.nbf -= 3600;
        c.exp = c.iat + 60 - 3600 + 60; // expired ~an hour ago
        let token = sign(&f.key, &c).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::Expired));

        // Within the leeway it still passes: clocks are allowed to differ.
        let mut c = claims(&f);
        c.exp = unix_now() - 5;
        let token = sign(&f.key, &c).unwrap();
        assert!(f.verifier.verify(&token).is_ok());
    }

    #[test]
    fn not_yet_valid_tokens_are_refused() {
        let f = fixture();
        let mut c = claims(&f);
        c.nbf = unix_now() + 600;
        c.exp = c.nbf + 900;
        let token = sign(&f.key, &c).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let f = fixture();
        let mut c = claims(&f);
        c.iss = "someone-else".into();
        let token = sign(&f.key, &c).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::Issuer));
    }

    #[test]
    fn wrong_audience_is_refused() {
        let f = fixture();
        let mut c = claims(&f);
        c.aud = "another-api".into();
        let token = sign(&f.key, &c).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::Audience));
    }

    #[test]
    fn unknown_kid_is_refused() {
        let f = fixture();
        let stranger = SigningKey::generate();
        let token = sign(&stranger, &claims(&f)).unwrap();
        assert_eq!(
            f.verifier.verify(&token),
            Err(TokenError::UnknownKey {
                kid: stranger.kid().to_owned()
            })
        );
    }

    #[test]
    fn kid_of_a_known_key_with_a_strangers_signature_is_refused() {
        let f = fixture();
        let stranger = SigningKey::generate();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(f.key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims(&f), stranger.encoding_key()).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::Signature));
    }

    #[test]
    fn missing_kid_or_claims_are_refused() {
        let f = fixture();
        let header = Header::new(Algorithm::EdDSA);
        let token = jsonwebtoken::encode(&header, &claims(&f), f.key.encoding_key()).unwrap();
        assert_eq!(f.verifier.verify(&token), Err(TokenError::Malformed));

        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(f.key.kid().to_owned());
        let no_aud = serde_json::json!({
            "sub": "user-1", "roles": ["customer"], "iss": ISS,
            "exp": unix_now() + 60, "nbf": unix_now(), "iat": unix_now(), "jti": "x"
        });
        let token = jsonwebtoken::encode(&header, &no_aud, f.key.encoding_key()).unwrap();
        assert!(f.verifier.verify(&token).is_err());
    }

    #[test]
    fn rotation_accepts_old_and_new_keys_until_the_old_one_is_dropped() {
        let old = Arc::new(SigningKey::generate());
        let new = Arc::new(SigningKey::generate());
        let both: KeySet = [
            old.verification_key().clone(),
            new.verification_key().clone(),
        ]
        .into_iter()
        .collect();
        let old_token = TokenIssuer::new(Arc::clone(&old), ISS, AUD, DEFAULT_ACCESS_TOKEN_TTL)
            .issue("u", &[Role::Customer])
            .unwrap()
            .token;
        let new_token = TokenIssuer::new(Arc::clone(&new), ISS, AUD, DEFAULT_ACCESS_TOKEN_TTL)
            .issue("u", &[Role::Customer])
            .unwrap()
            .token;
        let during = TokenVerifier::new(both, ISS, AUD, DEFAULT_LEEWAY);
        assert!(during.verify(&old_token).is_ok());
        assert!(during.verify(&new_token).is_ok());

        let after_keys: KeySet = [new.verification_key().clone()].into_iter().collect();
        let after = TokenVerifier::new(after_keys, ISS, AUD, DEFAULT_LEEWAY);
        assert!(matches!(
            after.verify(&old_token),
            Err(TokenError::UnknownKey { .. })
        ));
        assert!(after.verify(&new_token).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        let f = fixture();
        for junk in ["", "abc", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30.AA"] {
            assert!(f.verifier.verify(junk).is_err(), "{junk:?} accepted");
        }
    }
}
