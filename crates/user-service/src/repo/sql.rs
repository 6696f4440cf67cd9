//! The user-service store: one SQL text for SQLite and PostgreSQL (see
//! `shop-storage` for what differs between them and where that is
//! handled).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use shop_storage::{Db, query};
use uuid::Uuid;

use super::{
    NewRefreshToken, RefreshTokenRepo, RepoError, Rotation, Store, USER_CHANGES, UserKey, UserRepo,
    user_columns, user_row,
};
use shop_auth::Role;

use crate::domain::{
    Credentials, NewUser, User, UserFilter, UserPatch, UserStatus, roles_to_storage,
};

/// The filter of `StreamUsers` and the count (`ListUsers` has a text for
/// each combination, `list_users!`): `$1` a status (NULL: every one but
/// deleted), `$2` a LIKE pattern (NULL: everyone).
macro_rules! user_filter {
    () => {
        "(($1 IS NULL AND status <> 'deleted') OR status = $1) \
         AND ($2 IS NULL OR email LIKE $2 ESCAPE '\\' OR username LIKE $2 ESCAPE '\\' \
              OR lower(first_name) LIKE $2 ESCAPE '\\' OR lower(last_name) LIKE $2 ESCAPE '\\')"
    };
}

/// The search of `ListUsers` with its LIKE pattern in parameter `$p`.
macro_rules! user_search {
    ($p:literal) => {
        concat!(
            " AND (email LIKE ",
            $p,
            " ESCAPE '\\' OR username LIKE ",
            $p,
            " ESCAPE '\\' \
             OR lower(first_name) LIKE ",
            $p,
            " ESCAPE '\\' \
             OR lower(last_name) LIKE ",
            $p,
            " ESCAPE '\\')"
        )
    };
}

/// A page of users after the cursor, in id order: `$status` the status
/// condition, `$search` the search or nothing, the cursor and the limit in
/// the parameters named.
///
/// One text for each combination of filters, and the cursor always a
/// bound (`id > COALESCE(cursor, the nil id)`, below every id), never a
/// condition that a NULL switches off (`$3 IS NULL OR id > $3`): in the
/// plan PostgreSQL keeps for a prepared statement from its sixth run on
/// (generic, for every value) an index can serve neither, and each page
/// read every user and sorted them.
macro_rules! list_users {
    ($status:literal, $search:expr, $cursor:literal, $limit:literal) => {
        concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE ",
            $status,
            $search,
            " AND id > COALESCE(",
            $cursor,
            ", '00000000-0000-0000-0000-000000000000') ORDER BY id LIMIT ",
            $limit
        )
    };
}

/// Every user but the deleted.
const LIST_USERS: &str = list_users!("status <> 'deleted'", "", "$1", "$2");
/// The users in one status.
const LIST_USERS_IN_STATUS: &str = list_users!("status = $1", "", "$2", "$3");
/// Every user but the deleted that the search matches.
const LIST_USERS_MATCHING: &str =
    list_users!("status <> 'deleted'", user_search!("$1"), "$2", "$3");
/// The users in one status that the search matches.
const LIST_USERS_IN_STATUS_MATCHING: &str =
    list_users!("status = $1", user_search!("$2"), "$3", "$4");

/// [`Store`] on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// The store on `db` (connected and migrated).
    pub fn new(db: Db) -> SqlStore {
        SqlStore { db }
    }
}

#[async_trait]
impl UserRepo for SqlStore {
    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError> {
        Ok(query(concat!(
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
        .fetch_one(&self.db, user_row)
        .await?)
    }

    async fn find_user(&self, key: UserKey<'_>) -> Result<Option<User>, RepoError> {
        let by = match key {
            UserKey::Id(id) => query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE id = $1"
            ))
            .bind(id),
            UserKey::Email(email) => query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE email = $1"
            ))
            .bind(email.as_str()),
            UserKey::Username(username) => query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = $1"
            ))
            .bind(username.as_str()),
        };
        Ok(by.fetch_optional(&self.db, user_row).await?)
    }

    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, RepoError> {
        Ok(query(concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE email = $1 OR username = $1"
        ))
        .bind(identifier)
        .fetch_optional(&self.db, |row| {
            Ok(Credentials {
                user: user_row(row)?,
                password_hash: row.get("password_hash")?,
            })
        })
        .await?)
    }

    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, RepoError> {
        let mut tx = self.db.begin().await?;
        let updated = query(concat!(
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
        .bind(patch.username.as_ref().map(|u| u.as_str()))
        .bind(patch.first_name.as_ref().map(|n| n.as_str()))
        .bind(patch.last_name.as_ref().map(|n| n.as_str()))
        .bind(patch.bio.as_ref().map(|b| b.as_str()))
        .bind(patch.status.map(|s| s.as_str()))
        .bind(patch.roles.as_deref().map(roles_to_storage))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut tx, user_row)
        .await?;
        if updated.is_some() {
            tx.notify(USER_CHANGES, &id.to_string()).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn soft_delete_user(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, RepoError> {
        let mut tx = self.db.begin().await?;
        let changed = query(
            "UPDATE users SET status = 'deleted', deleted_at = $1, updated_at = $1 \
             WHERE id = $2 AND status <> 'deleted'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut tx)
        .await?;
        if changed == 1 {
            tx.notify(USER_CHANGES, &id.to_string()).await?;
        }
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn list_users(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<User>, RepoError> {
        let filtered = match (filter.status_str(), filter.like_pattern()) {
            (None, None) => query(LIST_USERS),
            (Some(status), None) => query(LIST_USERS_IN_STATUS).bind(status),
            (None, Some(pattern)) => query(LIST_USERS_MATCHING).bind(pattern),
            (Some(status), Some(pattern)) => query(LIST_USERS_IN_STATUS_MATCHING)
                .bind(status)
                .bind(pattern),
        };
        Ok(filtered
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.db, user_row)
            .await?)
    }

    async fn count_users(&self, filter: &UserFilter) -> Result<u64, RepoError> {
        let count: i64 = query(concat!(
            "SELECT COUNT(*) AS count FROM users WHERE ",
            user_filter!()
        ))
        .bind(filter.status_str())
        .bind(filter.like_pattern())
        .fetch_one(&self.db, |row| row.get("count"))
        .await?;
        Ok(count.max(0) as u64)
    }

    async fn count_active_admins(&self) -> Result<u64, RepoError> {
        // Roles are stored comma-separated; the commas around both sides
        // match the whole name only.
        let count: i64 = query(
            "SELECT COUNT(*) AS count FROM users \
             WHERE status = $1 AND (',' || roles || ',') LIKE $2",
        )
        .bind(UserStatus::Active.as_str())
        .bind(format!("%,{},%", Role::Admin.as_str()))
        .fetch_one(&self.db, |row| row.get("count"))
        .await?;
        Ok(count.max(0) as u64)
    }

    fn stream_users(
        &self,
        filter: UserFilter,
        limit: u32,
    ) -> BoxStream<'_, Result<User, RepoError>> {
        use futures_util::StreamExt as _;
        query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE ",
            user_filter!(),
            " ORDER BY id LIMIT $3"
        ))
        .bind(filter.status_str())
        .bind(filter.like_pattern())
        .bind(i64::from(limit))
        .fetch(&self.db, user_row)
        .map(|user| user.map_err(RepoError::from))
        .boxed()
    }
}

#[async_trait]
impl RefreshTokenRepo for SqlStore {
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), RepoError> {
        query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token_hash)
        .bind(token.family_id)
        .bind(token.user_id)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, RepoError> {
        let mut tx = self.db.begin().await?;
        // Claim the token: only one caller can flip used_at from NULL (a
        // row lock on PostgreSQL, the database's write lock on SQLite); a
        // concurrent second use finds it used.
        let claimed = query(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL \
             RETURNING family_id, user_id, expires_at",
        )
        .bind(now)
        .bind(presented)
        .fetch_optional(&mut tx, |row| {
            Ok((
                row.get::<Uuid>("family_id")?,
                row.get::<Uuid>("user_id")?,
                row.get::<DateTime<Utc>>("expires_at")?,
            ))
        })
        .await?;

        let outcome = if let Some((family_id, user_id, expires_at)) = claimed {
            if expires_at <= now {
                Rotation::Expired
            } else {
                query(
                    "INSERT INTO refresh_tokens \
                     (token_hash, family_id, user_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(next_hash)
                .bind(family_id)
                .bind(user_id)
                .bind(now)
                .bind(next_expires_at)
                .execute(&mut tx)
                .await?;
                Rotation::Rotated { user_id, family_id }
            }
        } else {
            let existing = query(
                "SELECT family_id, used_at IS NOT NULL AS used FROM refresh_tokens \
                 WHERE token_hash = $1",
            )
            .bind(presented)
            .fetch_optional(&mut tx, |row| {
                Ok((row.get::<Uuid>("family_id")?, row.get::<bool>("used")?))
            })
            .await?;
            match existing {
                None => Rotation::Unknown,
                Some((family_id, used)) => {
                    query(
                        "UPDATE refresh_tokens SET revoked_at = $1 \
                         WHERE family_id = $2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(family_id)
                    .execute(&mut tx)
                    .await?;
                    if used {
                        Rotation::Reused { family_id }
                    } else {
                        Rotation::Revoked
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
        )
        .bind(now)
        .bind(presented)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        Ok(query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&self.db)
        .await?)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), RepoError> {
        Ok(self.db.ping().await?)
    }

    fn backend(&self) -> &'static str {
        self.db.backend().as_str()
    }
}

#[cfg(test)]
mod tests {
    use shop_storage::CacheBounds;
    use shop_testkit::{fresh_postgres_database, rows_read_by_generic_plan};

    use super::{LIST_USERS, LIST_USERS_IN_STATUS};
    use crate::repo::{ConnectOptions, connect};

    /// A page of users after a cursor deep in the table reads about a page
    /// of rows from `users` in the plan PostgreSQL keeps for the statement
    /// (generic, from the sixth run on), with and without a status, not
    /// every user before or after the cursor.
    #[tokio::test]
    async fn a_page_of_users_after_a_cursor_reads_a_page_on_postgres() {
        let url = fresh_postgres_database("users_page").await;
        connect(&url, ConnectOptions::new(1, None), CacheBounds::OFF)
            .await
            .expect("connect and migrate");
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO users (id, email, username, password_hash, first_name, last_name, \
             status, roles, created_at, updated_at) \
             SELECT gen_random_uuid(), 'user-' || n || '@example.com', 'user-' || n, 'x', \
             'First', 'Last', 'active', 'customer', now(), now() \
             FROM generate_series(1, 20000) AS n",
        )
        .execute(&admin)
        .await
        .unwrap();
        let (cursor,): (uuid::Uuid,) =
            sqlx::query_as("SELECT id FROM users ORDER BY id OFFSET 14999 LIMIT 1")
                .fetch_one(&admin)
                .await
                .unwrap();
        let all = rows_read_by_generic_plan(
            &url,
            LIST_USERS,
            "uuid, int8",
            &format!("'{cursor}', 20"),
            "users",
        )
        .await;
        let active = rows_read_by_generic_plan(
            &url,
            LIST_USERS_IN_STATUS,
            "text, uuid, int8",
            &format!("'active', '{cursor}', 20"),
            "users",
        )
        .await;
        assert_eq!(
            (all, active),
            (20, 20),
            "rows read for the page after the 15,000th of 20,000 users"
        );
    }
}
