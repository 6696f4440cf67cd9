//! The rules of user accounts, free of gRPC and SQL: what a valid email,
//! username or name is, what a user looks like, and how refresh tokens are
//! made. Handlers parse requests into these types once, at the edge.

mod fields;
mod refresh;
mod user;

pub use fields::{Bio, Email, PersonName, Username};
pub use refresh::{RefreshToken, hash_refresh_token};
pub use user::{
    Credentials, NewUser, User, UserFilter, UserPatch, UserStatus, roles_from_storage,
    roles_to_storage,
};

/// One invalid field of a request: its name as in the proto, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field name, dotted for nested fields (`roles.roles[1]`).
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Collects every invalid field of a request so they are reported at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// A new, empty collection.
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Keeps the parsed value, or records why `field` did not parse.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|why| self.add(field, why)).ok()
    }

    /// Ok when nothing was recorded.
    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}
