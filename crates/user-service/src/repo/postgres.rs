//! The PostgreSQL store, for containers and clusters where several replicas
//! share one database.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt as _, stream::BoxStream};
use sqlx::{
    Row,
    postgres::{PgPool, PgPoolOptions, PgRow},
};
use uuid::Uuid;

use super::{
    NewRefreshToken, RefreshTokenRepo, RepoError, Rotation, Store, UniqueField, UserKey, UserRepo,
    UserRow, user_columns,
};
use crate::domain::{Credentials, NewUser, User, UserFilter, UserPatch, roles_to_storage};

/// [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PostgresStore, RepoError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(RepoError::from_sqlx)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }
}

fn map_err(err: sqlx::Error) -> RepoError {
    if let Some(db) = err.as_database_error() {
        match db.constraint() {
            Some("users_email_key") => return RepoError::Conflict(UniqueField::Email),
            Some("users_username_key") => return RepoError::Conflict(UniqueField::Username),
            _ => {}
        }
    }
    RepoError::from_sqlx(err)
}

fn user_row(row: &PgRow) -> Result<User, RepoError> {
    UserRow {
        id: row.try_get("id").map_err(map_err)?,
        email: row.try_get("email").map_err(map_err)?,
        username: row.try_get("username").map_err(map_err)?,
        first_name: row.try_get("first_name").map_err(map_err)?,
        last_name: row.try_get("last_name").map_err(map_err)?,
        bio: row.try_get("bio").map_err(map_err)?,
        status: row.try_get("status").map_err(map_err)?,
        roles: row.try_get("roles").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        updated_at: row.try_get("updated_at").map_err(map_err)?,
    }
    .into_user()
}

#[async_trait]
impl UserRepo for PostgresStore {
    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError> {
        let row = sqlx::query(concat!(
            "INSERT INTO users (id, email, username, password_hash, first_name, last_name, \
             bio, status, roles, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, '', $7, $8, $9, $9) RETURNING ",
            user_columns!()
        ))
        .bind(user.id)
        .bind(user.email.as_str())
        .bind(user.username.as_str())
        .bind(&user.password_hash)
        .bind(user.first_name.as_str())
        .bind(user.last_name.as_str())
        .bind(user.status.as_str())
        .bind(roles_to_storage(&user.roles))
        .bind(user.now)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        user_row(&row)
    }

    async fn find_user(&self, key: UserKey<'_>) -> Result<Option<User>, RepoError> {
        let query = match key {
            UserKey::Id(id) => sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE id = $1"
            ))
            .bind(id),
            UserKey::Email(email) => sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE email = $1"
            ))
            .bind(email.as_str().to_owned()),
            UserKey::Username(username) => sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = $1"
            ))
            .bind(username.as_str().to_owned()),
        };
        let row = query.fetch_optional(&self.pool).await.map_err(map_err)?;
        row.as_ref().map(user_row).transpose()
    }

    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, RepoError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE email = $1 OR username = $1"
        ))
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|row| {
            Ok(Credentials {
                user: user_row(&row)?,
                password_hash: row.try_get("password_hash").map_err(map_err)?,
            })
        })
        .transpose()
    }

    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, RepoError> {
        let row = sqlx::query(concat!(
            "UPDATE users SET \
             username = COALESCE($1, username), \
             first_name = COALESCE($2, first_name), \
             last_name = COALESCE($3, last_name), \
             bio = COALESCE($4, bio), \
             status = COALESCE($5, status), \
             roles = COALESCE($6, roles), \
             updated_at = $7 \
             WHERE id = $8 AND status <> 'deleted' RETURNING ",
            user_columns!()
        ))
        .bind(patch.username.as_ref().map(|u| u.as_str().to_owned()))
        .bind(patch.first_name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(patch.last_name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(patch.bio.as_ref().map(|b| b.as_str().to_owned()))
        .bind(patch.status.map(|s| s.as_str()))
        .bind(patch.roles.as_deref().map(roles_to_storage))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(user_row).transpose()
    }

    async fn soft_delete_user(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, RepoError> {
        let done = sqlx::query(
            "UPDATE users SET status = 'deleted', deleted_at = $1, updated_at = $1 \
             WHERE id = $2 AND status <> 'deleted'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_users(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<User>, RepoError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE ",
            "(($1::text IS NULL AND status <> 'deleted') OR status = $1) \
             AND ($2::text IS NULL OR email LIKE $2 ESCAPE '\\' OR username LIKE $2 ESCAPE '\\' \
                  OR lower(first_name) LIKE $2 ESCAPE '\\' OR lower(last_name) LIKE $2 ESCAPE '\\') \
             AND ($3::uuid IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(filter.status_str())
        .bind(filter.like_pattern())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(user_row).collect()
    }

    async fn count_users(&self, filter: &UserFilter) -> Result<u64, RepoError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE \
             (($1::text IS NULL AND status <> 'deleted') OR status = $1) \
             AND ($2::text IS NULL OR email LIKE $2 ESCAPE '\\' OR username LIKE $2 ESCAPE '\\' \
                  OR lower(first_name) LIKE $2 ESCAPE '\\' OR lower(last_name) LIKE $2 ESCAPE '\\')",
        )
        .bind(filter.status_str())
        .bind(filter.like_pattern())
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(count.max(0) as u64)
    }

    fn stream_users(
        &self,
        filter: UserFilter,
        limit: u32,
    ) -> BoxStream<'_, Result<User, RepoError>> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE ",
            "(($1::text IS NULL AND status <> 'deleted') OR status = $1) \
             AND ($2::text IS NULL OR email LIKE $2 ESCAPE '\\' OR username LIKE $2 ESCAPE '\\' \
                  OR lower(first_name) LIKE $2 ESCAPE '\\' OR lower(last_name) LIKE $2 ESCAPE '\\') \
             ORDER BY id LIMIT $3"
        ))
        .bind(filter.status_str())
        .bind(filter.like_pattern())
        .bind(i64::from(limit))
        .fetch(&self.pool)
        .map(|row| row.map_err(map_err).and_then(|row| user_row(&row)))
        .boxed()
    }
}

#[async_trait]
impl RefreshTokenRepo for PostgresStore {
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token_hash)
        .bind(token.family_id)
        .bind(token.user_id)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, RepoError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Claim the token: the row lock lets only one caller flip used_at
        // from NULL; a concurrent second use finds it used.
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL \
             RETURNING family_id, user_id, expires_at",
        )
        .bind(now)
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;

        let outcome = if let Some(row) = claimed {
            let family_id: Uuid = row.try_get("family_id").map_err(map_err)?;
            let user_id: Uuid = row.try_get("user_id").map_err(map_err)?;
            let expires_at: DateTime<Utc> = row.try_get("expires_at").map_err(map_err)?;
            if expires_at <= now {
                Rotation::Expired
            } else {
                sqlx::query(
                    "INSERT INTO refresh_tokens \
                     (token_hash, family_id, user_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(next_hash)
                .bind(family_id)
                .bind(user_id)
                .bind(now)
                .bind(next_expires_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                Rotation::Rotated { user_id, family_id }
            }
        } else {
            let existing = sqlx::query(
                "SELECT family_id, used_at IS NOT NULL AS used FROM refresh_tokens \
                 WHERE token_hash = $1",
            )
            .bind(presented)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            match existing {
                None => Rotation::Unknown,
                Some(row) => {
                    let family_id: Uuid = row.try_get("family_id").map_err(map_err)?;
                    let used: bool = row.try_get("used").map_err(map_err)?;
                    sqlx::query(
                        "UPDATE refresh_tokens SET revoked_at = $1 \
                         WHERE family_id = $2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(family_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    if used {
                        Rotation::Reused { family_id }
                    } else {
                        Rotation::Revoked
                    }
                }
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
        )
        .bind(now)
        .bind(presented)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
