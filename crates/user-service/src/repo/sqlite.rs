//! The SQLite store: one file in WAL mode, for the all-in-one stack and
//! single-instance deployments. Ids are stored as hyphenated UUID text.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt as _, stream::BoxStream};
use sqlx::{
    Row,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
};
use uuid::Uuid;

use super::{
    NewRefreshToken, RefreshTokenRepo, RepoError, Rotation, Store, UniqueField, UserKey, UserRepo,
    UserRow, user_columns,
};
use crate::domain::{Credentials, NewUser, User, UserFilter, UserPatch, roles_to_storage};

/// [`Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` and migrates it.
    pub async fn connect(url: &str, max_connections: u32) -> Result<SqliteStore, RepoError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(RepoError::Database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed write survives a power cut, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| RepoError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(RepoError::from_sqlx)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

fn map_err(err: sqlx::Error) -> RepoError {
    // SQLite names the column, not the constraint:
    // "UNIQUE constraint failed: users.email".
    if let Some(db) = err.as_database_error()
        && db.is_unique_violation()
    {
        let message = db.message();
        if message.contains("users.email") {
            return RepoError::Conflict(UniqueField::Email);
        }
        if message.contains("users.username") {
            return RepoError::Conflict(UniqueField::Username);
        }
    }
    RepoError::from_sqlx(err)
}

fn parse_uuid(s: &str) -> Result<Uuid, RepoError> {
    Uuid::parse_str(s).map_err(|_| RepoError::Corrupt(format!("uuid {s:?}")))
}

fn user_row(row: &SqliteRow) -> Result<User, RepoError> {
    let id: String = row.try_get("id").map_err(map_err)?;
    UserRow {
        id: parse_uuid(&id)?,
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
impl UserRepo for SqliteStore {
    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError> {
        let row = sqlx::query(concat!(
            "INSERT INTO users (id, email, username, password_hash, first_name, last_name, \
             bio, status, roles, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?) RETURNING ",
            user_columns!()
        ))
        .bind(user.id.to_string())
        .bind(user.email.as_str())
        .bind(user.username.as_str())
        .bind(&user.password_hash)
        .bind(user.first_name.as_str())
        .bind(user.last_name.as_str())
        .bind(user.status.as_str())
        .bind(roles_to_storage(&user.roles))
        .bind(user.now)
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
                " FROM users WHERE id = ?"
            ))
            .bind(id.to_string()),
            UserKey::Email(email) => sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE email = ?"
            ))
            .bind(email.as_str().to_owned()),
            UserKey::Username(username) => sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = ?"
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
            ", password_hash FROM users WHERE email = ?1 OR username = ?1"
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
             username = COALESCE(?, username), \
             first_name = COALESCE(?, first_name), \
             last_name = COALESCE(?, last_name), \
             bio = COALESCE(?, bio), \
             status = COALESCE(?, status), \
             roles = COALESCE(?, roles), \
             updated_at = ? \
             WHERE id = ? AND status <> 'deleted' RETURNING ",
            user_columns!()
        ))
        .bind(patch.username.as_ref().map(|u| u.as_str().to_owned()))
        .bind(patch.first_name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(patch.last_name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(patch.bio.as_ref().map(|b| b.as_str().to_owned()))
        .bind(patch.status.map(|s| s.as_str()))
        .bind(patch.roles.as_deref().map(roles_to_storage))
        .bind(now)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(user_row).transpose()
    }

    async fn soft_delete_user(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, RepoError> {
        let done = sqlx::query(
            "UPDATE users SET status = 'deleted', deleted_at = ?1, updated_at = ?1 \
             WHERE id = ?2 AND status <> 'deleted'",
        )
        .bind(now)
        .bind(id.to_string())
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
            "((?1 IS NULL AND status <> 'deleted') OR status = ?1) \
             AND (?2 IS NULL OR email LIKE ?2 ESCAPE '\\' OR username LIKE ?2 ESCAPE '\\' \
                  OR lower(first_name) LIKE ?2 ESCAPE '\\' OR lower(last_name) LIKE ?2 ESCAPE '\\') \
             AND (?3 IS NULL OR id > ?3) \
             ORDER BY id LIMIT ?4"
        ))
        .bind(filter.status_str())
        .bind(filter.like_pattern())
        .bind(after.map(|id| id.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(user_row).collect()
    }

    async fn count_users(&self, filter: &UserFilter) -> Result<u64, RepoError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE \
             ((?1 IS NULL AND status <> 'deleted') OR status = ?1) \
             AND (?2 IS NULL OR email LIKE ?2 ESCAPE '\\' OR username LIKE ?2 ESCAPE '\\' \
                  OR lower(first_name) LIKE ?2 ESCAPE '\\' OR lower(last_name) LIKE ?2 ESCAPE '\\')",
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
            "((?1 IS NULL AND status <> 'deleted') OR status = ?1) \
             AND (?2 IS NULL OR email LIKE ?2 ESCAPE '\\' OR username LIKE ?2 ESCAPE '\\' \
                  OR lower(first_name) LIKE ?2 ESCAPE '\\' OR lower(last_name) LIKE ?2 ESCAPE '\\') \
             ORDER BY id LIMIT ?3"
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
impl RefreshTokenRepo for SqliteStore {
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&token.token_hash)
        .bind(token.family_id.to_string())
        .bind(token.user_id.to_string())
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
        // Claim the token: only one caller can flip used_at from NULL.
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = ?1 \
             WHERE token_hash = ?2 AND used_at IS NULL AND revoked_at IS NULL \
             RETURNING family_id, user_id, expires_at",
        )
        .bind(now)
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;

        let outcome = if let Some(row) = claimed {
            let family_id = parse_uuid(&row.try_get::<String, _>("family_id").map_err(map_err)?)?;
            let user_id = parse_uuid(&row.try_get::<String, _>("user_id").map_err(map_err)?)?;
            let expires_at: DateTime<Utc> = row.try_get("expires_at").map_err(map_err)?;
            if expires_at <= now {
                Rotation::Expired
            } else {
                sqlx::query(
                    "INSERT INTO refresh_tokens \
                     (token_hash, family_id, user_id, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(next_hash)
                .bind(family_id.to_string())
                .bind(user_id.to_string())
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
                 WHERE token_hash = ?",
            )
            .bind(presented)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            match existing {
                None => Rotation::Unknown,
                Some(row) => {
                    let family_id =
                        parse_uuid(&row.try_get::<String, _>("family_id").map_err(map_err)?)?;
                    let used: bool = row.try_get("used").map_err(map_err)?;
                    sqlx::query(
                        "UPDATE refresh_tokens SET revoked_at = ?1 \
                         WHERE family_id = ?2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(family_id.to_string())
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
            "UPDATE refresh_tokens SET revoked_at = ?1 WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = ?2)",
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
            "UPDATE refresh_tokens SET revoked_at = ?1 \
             WHERE user_id = ?2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
