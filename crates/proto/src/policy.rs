//! Who may call each RPC, how large its request may be and whether it is
//! safe to retry, as declared in the protos (`option
//! (shop.options.v1.access)`, `option (shop.options.v1.max_request_bytes)`
//! and `option idempotency_level`).
//!
//! The table is generated at build time, so the middleware has no hand-kept
//! list of method names: a new service gets its access rules by annotating
//! its proto and adding the file to `build.rs`.

#![warn(missing_docs, unreachable_pub)]

pub use crate::options::v1::Access;

/// Whether repeating a call can change the outcome, from the standard
/// `google.protobuf.MethodOptions.idempotency_level` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Not declared: a retry might apply the call twice.
    Unknown,
    /// Reads only (`NO_SIDE_EFFECTS`): always safe to retry.
    NoSideEffects,
    /// Repeating has the effect of doing it once (`IDEMPOTENT`).
    Idempotent,
}

impl Idempotency {
    /// True when a transparent retry cannot apply the call twice.
    pub fn is_retry_safe(self) -> bool {
        !matches!(self, Idempotency::Unknown)
    }
}

/// The declared policy of one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodPolicy {
    /// The HTTP/2 path, `/package.Service/Method`.
    pub path: &'static str,
    /// Fully qualified service name, `package.Service`.
    pub service: &'static str,
    /// Method name.
    pub method: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether it is safe to retry.
    pub idempotency: Idempotency,
    /// The client sends a stream.
    pub client_streaming: bool,
    /// The server sends a stream.
    pub server_streaming: bool,
    /// The largest request message accepted, encoded, in bytes (for a
    /// client stream: each message); see `shop.options.v1.max_request_bytes`.
    pub max_request_bytes: u32,
}

include!(concat!(env!("OUT_DIR"), "/method_policy.rs"));

/// The policy of the RPC at `path` (`/package.Service/Method`), or `None`
/// for a method that no shop proto declares.
pub fn lookup(path: &str) -> Option<&'static MethodPolicy> {
    position(path).map(|i| &METHODS[i])
}

/// Every method the shop protos declare, sorted by path.
pub fn methods() -> &'static [MethodPolicy] {
    METHODS
}

/// Where the method at `path` is in [`methods`]: a small dense index for
/// per-method tables (metric handles, for instance).
pub fn position(path: &str) -> Option<usize> {
    // Every server layer asks for the method of each call, and the paths
    // share long prefixes (`/shop.user.v1.UserService/`): ordered by
    // length first, most steps of the search compare two integers.
    BY_LENGTH
        .binary_search_by(|&i| {
            let candidate = METHODS[usize::from(i)].path;
            (candidate.len(), candidate).cmp(&(path.len(), path))
        })
        .ok()
        .map(|found| usize::from(BY_LENGTH[found]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_declares_who_may_call_it() {
        let undeclared: Vec<_> = METHODS
            .iter()
            .filter(|m| m.access == Access::Unspecified)
            .map(|m| m.path)
            .collect();
        assert!(
            undeclared.is_empty(),
            "RPCs without `option (shop.options.v1.access)`: {undeclared:?}"
        );
    }

    #[test]
    fn every_rpc_declares_its_largest_request() {
        let undeclared: Vec<_> = METHODS
            .iter()
            .filter(|m| m.max_request_bytes == 0)
            .map(|m| m.path)
            .collect();
        assert!(
            undeclared.is_empty(),
            "RPCs without `option (shop.options.v1.max_request_bytes)`: {undeclared:?}"
        );
        let create_order = lookup("/shop.order.v1.OrderService/CreateOrder").unwrap();
        assert_eq!(create_order.max_request_bytes, 32 * 1024);
    }

    #[test]
    fn table_covers_every_service_of_the_contract() {
        for service in [
            "shop.user.v1.UserService",
            "shop.auth.v1.AuthService",
            "shop.order.v1.OrderService",
            "shop.inventory.v1.InventoryService",
        ] {
            assert!(
                METHODS.iter().any(|m| m.service == service),
                "{service} missing from the policy table"
            );
        }
        assert_eq!(METHODS.len(), 8 + 5 + 8 + 10);
    }

    #[test]
    fn lookup_reads_the_declared_options() {
        let create = lookup("/shop.user.v1.UserService/CreateUser").unwrap();
        assert_eq!(create.access, Access::Public);
        assert_eq!(create.idempotency, Idempotency::Unknown);

        let list = lookup("/shop.user.v1.UserService/ListUsers").unwrap();
        assert_eq!(list.access, Access::Admin);
        assert_eq!(list.idempotency, Idempotency::NoSideEffects);

        let get = lookup("/shop.user.v1.UserService/GetUser").unwrap();
        assert_eq!(get.access, Access::Authenticated);
        assert!(get.idempotency.is_retry_safe());

        let reserve = lookup("/shop.inventory.v1.InventoryService/ReserveStock").unwrap();
        assert_eq!(reserve.access, Access::Service);
        let shared = lookup("/shop.inventory.v1.InventoryService/ReserveStocks").unwrap();
        assert_eq!(shared.access, Access::Service);
        assert!(shared.idempotency.is_retry_safe());
        assert_eq!(shared.max_request_bytes, 262_144);

        let activity = lookup("/shop.user.v1.UserService/UserActivity").unwrap();
        assert!(activity.client_streaming && activity.server_streaming);

        assert!(lookup("/shop.user.v1.UserService/Nope").is_none());
        assert!(lookup("/grpc.health.v1.Health/Check").is_none());
    }

    #[test]
    fn methods_are_sorted_for_binary_search() {
        assert!(METHODS.windows(2).all(|w| w[0].path < w[1].path));
        assert_eq!(BY_LENGTH.len(), METHODS.len());
        let key = |&i: &u16| {
            let path = METHODS[usize::from(i)].path;
            (path.len(), path)
        };
        assert!(BY_LENGTH.windows(2).all(|w| key(&w[0]) < key(&w[1])));
    }

    #[test]
    fn position_finds_what_a_linear_search_finds() {
        let linear = |path: &str| METHODS.iter().position(|m| m.path == path);
        let mut probes = vec![String::new(), "/".to_owned()];
        for m in METHODS {
            // The path; the same length, one byte off; one byte longer;
            // one shorter (sometimes another method's path).
            let mut changed = m.path.to_owned().into_bytes();
            *changed.last_mut().unwrap() ^= 0x20;
            probes.extend([
                m.path.to_owned(),
                String::from_utf8(changed).unwrap(),
                format!("{}x", m.path),
                m.path[..m.path.len() - 1].to_owned(),
            ]);
        }
        for probe in &probes {
            assert_eq!(position(probe), linear(probe), "{probe:?}");
        }
        for (i, m) in METHODS.iter().enumerate() {
            assert_eq!(position(m.path), Some(i), "{}", m.path);
        }
    }

    #[test]
    fn descriptor_set_keeps_the_access_option() {
        // Reflection clients (grpcurl describe) see the custom option only if
        // the encoded set kept it: look for the option's field key followed
        // by ACCESS_PUBLIC, as CreateUser carries it.
        let mut needle = Vec::new();
        prost::encoding::encode_key(50001, prost::encoding::WireType::Varint, &mut needle);
        needle.push(Access::Public as u8);
        assert!(
            crate::FILE_DESCRIPTOR_SET
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "the access option was dropped from FILE_DESCRIPTOR_SET"
        );
    }
}
