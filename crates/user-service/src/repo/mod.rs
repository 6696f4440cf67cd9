//! Storage of users and refresh tokens.
//!
//! Each aggregate has one trait ([`UserRepo`], [`RefreshTokenRepo`]) and
//! one SQL implementation for SQLite and PostgreSQL alike ([`SqlStore`],
//! through `shop-storage`); [`connect`] opens the database the
//! `DATABASE_URL` names and runs that backend's embedded migrations. SQL
//! lives only here, and nothing here builds a `tonic::Status`: errors are
//! [`RepoError`]s that the service maps.

mod cached;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use thiserror::Error;
use uuid::Uuid;

use crate::domain::{
    Credentials, Email, NewUser, User, UserFilter, UserPatch, UserStatus, Username,
    roles_from_storage,
};

pub use cached::{CachedStore, UserCache};
pub use shop_storage::StoreError;
pub use sql::SqlStore;

/// The change-notice channel a committed change of a user is announced on
/// (payload: the user's id), for the caches of every replica.
pub const USER_CHANGES: &str = "shop_user_changes";

/// How many user-change notices a slow cache may fall behind before it
/// clears itself.
const USER_CHANGES_CAPACITY: usize = 1024;

/// A unique field that a write collided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniqueField {
    /// `users.email`.
    Email,
    /// `users.username`.
    Username,
}

/// What can go wrong in storage: a unique field taken, or anything the
/// storage kit reports.
#[derive(Debug, Error)]
pub enum RepoError {
    /// A unique constraint refused the write.
    #[error("{0:?} already taken")]
    Conflict(UniqueField),
    /// The database failed (unreachable, corrupt row, migrations, ...).
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RepoError {
    /// Unique violations become [`RepoError::Conflict`] by the name the
    /// backend gives them (a constraint on PostgreSQL, the column on
    /// SQLite).
    fn from(err: StoreError) -> RepoError {
        match err.unique_violation() {
            Some("users_email_key" | "users.email") => RepoError::Conflict(UniqueField::Email),
            Some("users_username_key" | "users.username") => {
                RepoError::Conflict(UniqueField::Username)
            }
            _ => RepoError::Store(err),
        }
    }
}

/// How to find one user.
#[derive(Debug, Clone, Copy)]
pub enum UserKey<'a> {
    /// By id.
    Id(Uuid),
    /// By email.
    Email(&'a Email),
    /// By username.
    Username(&'a Username),
}

/// Accounts.
#[async_trait]
pub trait UserRepo: Send + Sync {
    /// Stores a new user; [`RepoError::Conflict`] when the email or
    /// username is taken.
    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError>;

    /// One user, deleted ones included.
    async fn find_user(&self, key: UserKey<'_>) -> Result<Option<User>, RepoError>;

    /// A user and its password hash, by lower-cased email or username.
    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, RepoError>;

    /// Applies the set fields of `patch` to a user that is not deleted;
    /// `None` when there is no such user.
    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, RepoError>;

    /// Marks a user deleted; false when there is no such user or it was
    /// deleted already.
    async fn soft_delete_user(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, RepoError>;

    /// Up to `limit` users matching `filter` with an id above `after`,
    /// in id (creation) order.
    async fn list_users(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<User>, RepoError>;

    /// How many users match `filter`.
    async fn count_users(&self, filter: &UserFilter) -> Result<u64, RepoError>;

    /// How many active accounts hold the admin role.
    async fn count_active_admins(&self) -> Result<u64, RepoError>;

    /// Up to `limit` users matching `filter`, in id order, read from the
    /// database as the stream is polled (not collected first).
    fn stream_users(
        &self,
        filter: UserFilter,
        limit: u32,
    ) -> BoxStream<'_, Result<User, RepoError>>;
}

/// A refresh token to store.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// SHA-256 hex of the token.
    pub token_hash: String,
    /// The login it belongs to.
    pub family_id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token for rotation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Consumed; the next token was stored in the same family.
    Rotated {
        /// The token's user.
        user_id: Uuid,
        /// The token's family.
        family_id: Uuid,
    },
    /// Already consumed before: the family is now revoked.
    Reused {
        /// The revoked family.
        family_id: Uuid,
    },
    /// Revoked (logout, deleted user, or an earlier reuse).
    Revoked,
    /// Past its expiry.
    Expired,
    /// Never issued.
    Unknown,
}

/// Refresh token families.
#[async_trait]
pub trait RefreshTokenRepo: Send + Sync {
    /// Stores the first token of a new family.
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), RepoError>;

    /// Consumes the token hashed `presented` and, if it was live, stores
    /// `next_hash` in its family, atomically. A second use of the same
    /// token revokes the family.
    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, RepoError>;

    /// Revokes the family of the token hashed `presented`, if it exists.
    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError>;

    /// Revokes every refresh token of a user; returns how many were not
    /// revoked yet.
    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError>;
}

/// Everything user-service stores, behind one connection pool.
#[async_trait]
pub trait Store: UserRepo + RefreshTokenRepo {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), RepoError>;

    /// "postgres" or "sqlite", for logs.
    fn backend(&self) -> &'static str;
}

/// user-service's migrations, per backend.
static MIGRATIONS: shop_storage::Migrations = shop_storage::migrations!();

pub use shop_storage::ConnectOptions;

/// Opens the database named by `url` (`sqlite:` or `postgres:`), creating a
/// SQLite file and its directory when missing, applies migrations, and
/// caches users by id as `cache` says.
pub async fn connect(
    url: &str,
    options: ConnectOptions,
    cache: UserCache,
) -> Result<Arc<dyn Store>, RepoError> {
    let db = shop_storage::connect_with(url, options, &MIGRATIONS).await?;
    let store = SqlStore::new(db.clone());
    if !cache.is_on() {
        return Ok(Arc::new(store));
    }
    let changes = db.listen(USER_CHANGES, USER_CHANGES_CAPACITY).await?;
    Ok(Arc::new(CachedStore::new(store, cache, changes)))
}

/// The columns every user query selects, as a literal for `concat!` (sqlx
/// takes only `'static` SQL, which keeps query text free of user input).
macro_rules! user_columns {
    () => {
        "id, email, username, first_name, last_name, bio, status, roles, created_at, updated_at"
    };
}
use user_columns;

/// A `users` row (selected with [`user_columns`]) as a [`User`].
fn user_row(row: shop_storage::Row<'_>) -> Result<User, StoreError> {
    let id: Uuid = row.get("id")?;
    let status: String = row.get("status")?;
    let roles: String = row.get("roles")?;
    Ok(User {
        id,
        email: row.get("email")?,
        username: row.get("username")?,
        first_name: row.get("first_name")?,
        last_name: row.get("last_name")?,
        bio: row.get("bio")?,
        status: UserStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("user {id} status {status:?}")))?,
        roles: roles_from_storage(&roles)
            .ok_or_else(|| StoreError::Corrupt(format!("user {id} roles {roles:?}")))?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}
