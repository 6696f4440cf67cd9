//! Opaque, tamper-proof page tokens for cursor pagination.
//!
//! A token carries the cursor (where the next page starts) and an HMAC that
//! binds it to the server's secret and to the request's *scope*: the filters
//! and, where it matters, the owner the list was issued for. A client can
//! therefore neither forge a cursor nor replay a token with other filters or
//! against another user's list; each of those is INVALID_ARGUMENT.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use thiserror::Error;
use uuid::Uuid;

use crate::validation::Violations;

/// Page size when a request asks for 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size; a larger request is served this many (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 100;

/// The page size a list request asked for: 0 means [`DEFAULT_PAGE_SIZE`],
/// more than [`MAX_PAGE_SIZE`] is clamped, a negative one is a violation of
/// `page_size`.
pub fn page_size(requested: i32, v: &mut Violations) -> u32 {
    match requested {
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        0 => DEFAULT_PAGE_SIZE,
        n => (n as u32).min(MAX_PAGE_SIZE),
    }
}

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Longest token accepted; anything longer is refused before decoding.
pub const MAX_TOKEN_CHARS: usize = 512;

/// Why a page token was refused. Every variant is the client's fault and
/// maps to INVALID_ARGUMENT.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PageTokenError {
    /// Not something this server issued: wrong encoding, length or version.
    #[error("page_token is malformed")]
    Malformed,
    /// Issued for other filters or another list, or altered.
    #[error("page_token does not belong to this request (filters changed, or it was altered)")]
    Mismatch,
}

/// Encodes and checks page tokens with a server secret.
#[derive(Clone)]
pub struct PageTokenCodec {
    key: [u8; 32],
}

impl std::fmt::Debug for PageTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenCodec(<secret>)")
    }
}

impl PageTokenCodec {
    /// A codec keyed with `secret`. Every replica of a service must use the
    /// same secret, or tokens fail on the replica that did not issue them.
    pub fn new(secret: [u8; 32]) -> PageTokenCodec {
        PageTokenCodec { key: secret }
    }

    /// A token for `cursor`, valid only with the same `scope`.
    pub fn encode(&self, scope: &[u8], cursor: &[u8]) -> String {
        let mut bytes = Vec::with_capacity(1 + cursor.len() + TAG_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(cursor);
        let tag = self.tag(scope, &bytes);
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor in `token`, if this server issued it for `scope`.
    pub fn decode(&self, scope: &[u8], token: &str) -> Result<Vec<u8>, PageTokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(PageTokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageTokenError::Malformed)?;
        if bytes.len() < 1 + TAG_LEN || bytes[0] != VERSION {
            return Err(PageTokenError::Malformed);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        self.mac(scope, body)
            .verify_truncated_left(tag)
            .map_err(|_| PageTokenError::Mismatch)?;
        Ok(body[1..].to_vec())
    }

    /// The id cursor in `token` for `scope`: `None` for the first page
    /// (empty token) or when the token is refused, which is then recorded
    /// as a violation of `page_token`.
    pub fn decode_id(&self, scope: &[u8], token: &str, v: &mut Violations) -> Option<Uuid> {
        if token.is_empty() {
            return None;
        }
        let cursor = self
            .decode(scope, token)
            .map_err(|e| v.add("page_token", e.to_string()))
            .ok()?;
        Uuid::from_slice(&cursor)
            .map_err(|_| v.add("page_token", PageTokenError::Malformed.to_string()))
            .ok()
    }

    /// Cuts `items` (fetched with one more than `page_size`) to the page and
    /// returns the token of the next page, or "" on the last one.
    pub fn next_page<T>(
        &self,
        scope: &[u8],
        items: &mut Vec<T>,
        page_size: u32,
        id: impl Fn(&T) -> Uuid,
    ) -> String {
        if items.len() <= page_size as usize {
            return String::new();
        }
        items.truncate(page_size as usize);
        items
            .last()
            .map(|last| self.encode(scope, id(last).as_bytes()))
            .unwrap_or_default()
    }

    fn mac(&self, scope: &[u8], body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        // Length-prefix the scope so (scope, body) pairs cannot collide.
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope);
        mac.update(body);
        mac
    }

    fn tag(&self, scope: &[u8], body: &[u8]) -> Vec<u8> {
        self.mac(scope, body).finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> PageTokenCodec {
        PageTokenCodec::new([7; 32])
    }

    #[test]
    fn round_trips_within_the_same_scope() {
        let token = codec().encode(b"status=active", b"cursor-1");
        assert_eq!(
            codec().decode(b"status=active", &token).unwrap(),
            b"cursor-1"
        );
    }

    #[test]
    fn another_scope_is_a_mismatch() {
        let token = codec().encode(b"user=alice", b"cursor-1");
        assert_eq!(
            codec().decode(b"user=bob", &token),
            Err(PageTokenError::Mismatch)
        );
    }

    #[test]
    fn another_secret_is_a_mismatch() {
        let token = PageTokenCodec::new([1; 32]).encode(b"s", b"c");
        assert_eq!(codec().decode(b"s", &token), Err(PageTokenError::Mismatch));
    }

    #[test]
    fn forged_cursor_is_a_mismatch() {
        let token = codec().encode(b"s", b"cursor-1");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[1] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(codec().decode(b"s", &forged), Err(PageTokenError::Mismatch));
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        let mut v = Violations::new();
        assert_eq!(page_size(0, &mut v), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7, &mut v), 7);
        assert_eq!(page_size(1000, &mut v), MAX_PAGE_SIZE);
        assert!(v.is_empty());
        page_size(-1, &mut v);
        assert!(!v.is_empty());
    }

    #[test]
    fn id_cursors_round_trip_and_pages_are_cut() {
        let codec = codec();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let mut page = ids.clone();
        let token = codec.next_page(b"s", &mut page, 2, |id| *id);
        assert_eq!(page, ids[..2]);
        let mut v = Violations::new();
        assert_eq!(codec.decode_id(b"s", &token, &mut v), Some(ids[1]));
        assert_eq!(codec.decode_id(b"s", "", &mut v), None);
        assert!(v.is_empty());
        assert_eq!(codec.decode_id(b"other", &token, &mut v), None);
        assert!(!v.is_empty(), "a foreign token is a violation");
        let mut last = ids[..1].to_vec();
        assert_eq!(codec.next_page(b"s", &mut last, 2, |id| *id), "");
    }

    #[test]
    fn garbage_is_malformed() {
        for junk in ["", "!!!", "AAAA", &"A".repeat(600)] {
            assert_eq!(
                codec().decode(b"s", junk),
                Err(PageTokenError::Malformed),
                "{junk:?}"
            );
        }
    }
}
