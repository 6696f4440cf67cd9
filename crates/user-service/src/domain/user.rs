//! What a user account is, and the shapes in which it is created, changed,
//! listed and checked at login.

use chrono::{DateTime, Utc};
use shop_auth::Role;
use uuid::Uuid;

use super::{Bio, Email, PersonName, Username};

/// The lifecycle state of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserStatus {
    /// May log in.
    Active,
    /// Disabled; cannot log in.
    Inactive,
    /// Disabled by an admin; cannot log in.
    Suspended,
    /// Soft-deleted.
    Deleted,
}

impl UserStatus {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Inactive => "inactive",
            UserStatus::Suspended => "suspended",
            UserStatus::Deleted => "deleted",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<UserStatus> {
        match s {
            "active" => Some(UserStatus::Active),
            "inactive" => Some(UserStatus::Inactive),
            "suspended" => Some(UserStatus::Suspended),
            "deleted" => Some(UserStatus::Deleted),
            _ => None,
        }
    }
}

/// A user account as the service sees it. The password hash is not part of
/// it (see [`Credentials`]), so it cannot leak through a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// UUID v7.
    pub id: Uuid,
    /// Lower-cased email.
    pub email: String,
    /// Lower-cased username.
    pub username: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Free text.
    pub bio: String,
    /// Lifecycle state.
    pub status: UserStatus,
    /// Roles, never empty.
    pub roles: Vec<Role>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl User {
    /// True unless soft-deleted.
    pub fn is_visible(&self) -> bool {
        self.status != UserStatus::Deleted
    }
}

/// A user with the password hash, for checking a login.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The account.
    pub user: User,
    /// Its bcrypt hash.
    pub password_hash: String,
}

/// A validated sign-up, ready to store.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Chosen by the service (UUID v7).
    pub id: Uuid,
    /// Email.
    pub email: Email,
    /// Username.
    pub username: Username,
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// Given name.
    pub first_name: PersonName,
    /// Family name.
    pub last_name: PersonName,
    /// Initial roles.
    pub roles: Vec<Role>,
    /// Initial status.
    pub status: UserStatus,
    /// Creation time, also the first `updated_at`.
    pub now: DateTime<Utc>,
}

/// A partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New username.
    pub username: Option<Username>,
    /// New given name.
    pub first_name: Option<PersonName>,
    /// New family name.
    pub last_name: Option<PersonName>,
    /// New bio.
    pub bio: Option<Bio>,
    /// New status (never `Deleted`: that is a delete).
    pub status: Option<UserStatus>,
    /// New roles (never empty).
    pub roles: Option<Vec<Role>>,
}

/// Which users a list or count covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// Only this status; `None` means every status but `Deleted`.
    pub status: Option<UserStatus>,
    /// Lower-cased substring of email, username, first or last name.
    pub search: Option<String>,
}

impl UserFilter {
    /// The `LIKE` pattern for `search`, with `%`, `_` and `\` escaped (the
    /// queries use `ESCAPE '\'`).
    pub fn like_pattern(&self) -> Option<String> {
        self.search.as_ref().map(|s| {
            let mut pattern = String::with_capacity(s.len() + 2);
            pattern.push('%');
            for c in s.chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        })
    }

    /// The storage spelling of the status filter.
    pub fn status_str(&self) -> Option<&'static str> {
        self.status.map(UserStatus::as_str)
    }
}

/// Roles in their storage form: comma-separated, e.g. `customer,admin`.
pub fn roles_to_storage(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses the storage form of roles; `None` if any is unknown.
pub fn roles_from_storage(s: &str) -> Option<Vec<Role>> {
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(Role::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_pattern_escapes_wildcards() {
        let filter = UserFilter {
            status: None,
            search: Some("50%_off\\".into()),
        };
        assert_eq!(filter.like_pattern().unwrap(), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn roles_round_trip_through_storage() {
        let roles = vec![Role::Customer, Role::Admin];
        assert_eq!(
            roles_from_storage(&roles_to_storage(&roles)).unwrap(),
            roles
        );
        assert!(roles_from_storage("customer,root").is_none());
    }

    #[test]
    fn statuses_round_trip_through_storage() {
        for s in [
            UserStatus::Active,
            UserStatus::Inactive,
            UserStatus::Suspended,
            UserStatus::Deleted,
        ] {
            assert_eq!(UserStatus::parse(s.as_str()), Some(s));
        }
    }
}
