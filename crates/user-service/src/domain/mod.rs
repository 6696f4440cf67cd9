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

pub use shop_core::validation::{FieldViolation, Violations};
