//! The authenticated caller of a request, built from a verified access token
//! by the auth middleware and read by handlers from the request extensions.

use serde::{Deserialize, Serialize};

/// A role as carried in the `roles` claim of an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shopper.
    Customer,
    /// May act on every account and call admin-only RPCs.
    Admin,
    /// A shop service, not a person: only in the service tokens
    /// user-service issues to configured service accounts, never stored
    /// on an account. Such a token opens `ACCESS_SERVICE` RPCs and nothing
    /// else.
    Service,
}

impl Role {
    /// The claim and storage spelling: `customer` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    /// Parses the storage spelling of an account's role: `customer` or
    /// `admin` (an account is never a service).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "customer" => Some(Role::Customer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who is calling: the subject of a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`sub` claim).
    pub user_id: String,
    /// The roles the token grants.
    pub roles: Vec<Role>,
    /// The token's unique id (`jti`), for logs and revocation.
    pub token_id: String,
    /// When the token expires, seconds since the Unix epoch (`exp`).
    pub expires_at: i64,
}

impl Principal {
    /// True when the token carries the admin role.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// True when the caller may act on `user_id`'s data: it is its own
    /// account, or the caller is an admin.
    pub fn may_act_for(&self, user_id: &str) -> bool {
        self.user_id == user_id || self.is_admin()
    }

    /// The service account's name when this is a service token (subject
    /// `service:<name>` with the service role).
    pub fn service_name(&self) -> Option<&str> {
        if self.roles.contains(&Role::Service) {
            self.user_id.strip_prefix(SERVICE_SUBJECT_PREFIX)
        } else {
            None
        }
    }
}

/// A principal shows as its user id, as the access log names callers.
impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.user_id)
    }
}

/// The subject prefix of service tokens: `service:order-service`.
pub const SERVICE_SUBJECT_PREFIX: &str = "service:";

/// The calling service of an `ACCESS_SERVICE` RPC, proven by its service
/// token; the auth middleware puts it in the request extensions (next to
/// the end user's [`Principal`] when the user's token was forwarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller {
    /// The service account's name (`order-service`).
    pub name: String,
}

/// As its token's subject says it: `service:order-service`.
impl std::fmt::Display for ServiceCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SERVICE_SUBJECT_PREFIX}{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: Vec<Role>) -> Principal {
        Principal {
            user_id: "u1".into(),
            roles,
            token_id: "t".into(),
            expires_at: 0,
        }
    }

    #[test]
    fn customers_act_only_for_themselves() {
        let p = principal(vec![Role::Customer]);
        assert!(p.may_act_for("u1"));
        assert!(!p.may_act_for("u2"));
        assert!(!p.is_admin());
    }

    #[test]
    fn admins_act_for_anyone() {
        let p = principal(vec![Role::Customer, Role::Admin]);
        assert!(p.may_act_for("u2"));
    }

    #[test]
    fn role_spelling_round_trips() {
        for role in [Role::Customer, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("service"), None, "never an account's role");
    }

    #[test]
    fn only_a_token_with_the_service_role_names_a_service() {
        let mut p = principal(vec![Role::Service]);
        p.user_id = "service:order-service".into();
        assert_eq!(p.service_name(), Some("order-service"));
        p.roles = vec![Role::Customer];
        assert_eq!(p.service_name(), None);
    }
}
