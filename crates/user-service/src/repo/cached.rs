//! Users by id, cached in front of the database: every authenticated
//! `GetUser`, the user-status check order-service makes for each order, and
//! the standing check of every open stream read a user by id, and almost
//! never the same one twice in a row changes.
//!
//! Consistency (see `shop_storage::ReadThrough`): a write through this
//! store invalidates its entry before it answers; a write through another
//! replica reaches this one as a change notice (PostgreSQL `NOTIFY`, sent
//! by the writing transaction); and no entry is served longer than
//! `USER_CACHE_MAX_AGE` after it was read, notices or not. That age is the
//! most a suspension can lag on another replica when notices are lost.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use shop_storage::{Notices, ReadThrough};
use uuid::Uuid;

use super::{
    NewRefreshToken, RefreshTokenRepo, RepoError, Rotation, SqlStore, Store, UserKey, UserRepo,
};
use crate::domain::{Credentials, NewUser, User, UserFilter, UserPatch};

/// How users are cached: `USER_CACHE_CAPACITY` entries at most, each
/// served for at most `USER_CACHE_MAX_AGE`.
pub type UserCache = shop_storage::CacheBounds;

/// [`SqlStore`] with users by id cached.
#[derive(Debug, Clone)]
pub struct CachedStore {
    inner: SqlStore,
    users: Arc<ReadThrough<Uuid, User>>,
}

impl CachedStore {
    /// Caches `inner`'s users as `settings` say, dropping entries as
    /// `changes` (the store's user-change notices) arrive.
    pub fn new(inner: SqlStore, settings: UserCache, changes: Notices) -> CachedStore {
        let users = ReadThrough::new(settings.capacity, settings.max_age);
        users.follow(changes, |payload| payload.parse().ok());
        CachedStore { inner, users }
    }

    /// Cache hits and misses so far.
    pub fn counts(&self) -> (u64, u64) {
        self.users.counts()
    }
}

#[async_trait]
impl UserRepo for CachedStore {
    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError> {
        self.inner.create_user(user).await
    }

    async fn find_user(&self, key: UserKey<'_>) -> Result<Option<User>, RepoError> {
        match key {
            UserKey::Id(id) => {
                self.users
                    .get_or_load(&id, || self.inner.find_user(key))
                    .await
            }
            other => self.inner.find_user(other).await,
        }
    }

    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, RepoError> {
        self.inner.find_credentials(identifier).await
    }

    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, RepoError> {
        let updated = self.inner.update_user(id, patch, now).await;
        self.users.invalidate(&id);
        updated
    }

    async fn soft_delete_user(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, RepoError> {
        let deleted = self.inner.soft_delete_user(id, now).await;
        self.users.invalidate(&id);
        deleted
    }

    async fn list_users(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<User>, RepoError> {
        self.inner.list_users(filter, after, limit).await
    }

    async fn count_users(&self, filter: &UserFilter) -> Result<u64, RepoError> {
        self.inner.count_users(filter).await
    }

    async fn count_active_admins(&self) -> Result<u64, RepoError> {
        self.inner.count_active_admins().await
    }

    fn stream_users(
        &self,
        filter: UserFilter,
        limit: u32,
    ) -> BoxStream<'_, Result<User, RepoError>> {
        self.inner.stream_users(filter, limit)
    }
}

#[async_trait]
impl RefreshTokenRepo for CachedStore {
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), RepoError> {
        self.inner.insert_refresh_token(token).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, RepoError> {
        self.inner
            .rotate_refresh_token(presented, next_hash, next_expires_at, now)
            .await
    }

    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        self.inner.revoke_refresh_family(presented, now).await
    }

    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        self.inner.revoke_user_refresh_tokens(user_id, now).await
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn ping(&self) -> Result<(), RepoError> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
