//! Sign-up, and reading and changing accounts on behalf of a caller.

use chrono::{SubsecRound as _, Utc};
use shop_auth::{Password, Principal, Role};
use uuid::Uuid;

use super::{Accounts, AppError, hashing_refused};
use crate::{
    activity::ActivityKind,
    domain::{Email, NewUser, PersonName, User, UserFilter, UserPatch, UserStatus, Username},
    repo::UserKey,
};

/// A sign-up whose fields are valid, before its password is hashed.
#[derive(Debug)]
pub struct SignUp {
    /// The email, lower-cased.
    pub email: Email,
    /// The username, lower-cased.
    pub username: Username,
    /// The password, within bcrypt's limits.
    pub password: Password,
    /// Given name.
    pub first_name: PersonName,
    /// Family name.
    pub last_name: PersonName,
}

impl Accounts {
    /// Creates a customer account for a caller at the address `from`
    /// (ALREADY_EXISTS when the email or the username is taken;
    /// RESOURCE_EXHAUSTED past the address's CreateUser quota or when
    /// every password hash is busy).
    pub async fn sign_up(&self, sign_up: SignUp, from: &str) -> Result<User, AppError> {
        self.check_address("CreateUser", from)?;
        let password_hash = self
            .hasher
            .hash(&sign_up.password, Self::deadline())
            .await
            .map_err(hashing_refused)?;
        self.create(&Self::account(sign_up, password_hash)).await
    }

    /// The account to store for `sign_up` in a bulk import: the password
    /// hashed when a hashing permit is free (waiting for one, since an
    /// admin's import should finish rather than fail).
    pub async fn new_user(&self, sign_up: SignUp) -> Result<NewUser, AppError> {
        let password_hash = self
            .hasher
            .hash_queued(&sign_up.password)
            .await
            .map_err(hashing_refused)?;
        Ok(Self::account(sign_up, password_hash))
    }

    fn account(sign_up: SignUp, password_hash: String) -> NewUser {
        NewUser {
            id: Uuid::now_v7(),
            email: sign_up.email,
            username: sign_up.username,
            password_hash,
            first_name: sign_up.first_name,
            last_name: sign_up.last_name,
            roles: vec![Role::Customer],
            status: UserStatus::Active,
            now: Utc::now().trunc_subsecs(6),
        }
    }

    /// Stores `new` and announces it.
    pub async fn create(&self, new: &NewUser) -> Result<User, AppError> {
        let user = self.store.create_user(new).await?;
        tracing::info!(user_id = %user.id, "user created");
        self.activity.publish(ActivityKind::Created, &user);
        Ok(user)
    }

    /// The user `key` names, if `caller` may see it (themselves, or
    /// anyone for an admin); NOT_FOUND for missing, deleted or not-yours.
    pub async fn get(&self, caller: &Principal, key: UserKey<'_>) -> Result<User, AppError> {
        self.store
            .find_user(key)
            .await?
            .filter(|user| {
                user.is_visible()
                    && caller.may_act_for(
                        user.id
                            .hyphenated()
                            .encode_lower(&mut Uuid::encode_buffer()),
                    )
            })
            .ok_or(AppError::NotFound("user"))
    }

    /// Whether `caller` may follow the activity of the user `id`.
    pub async fn may_watch(&self, caller: &Principal, id: Uuid) -> Result<bool, AppError> {
        Ok(caller.may_act_for(&id.to_string())
            && self
                .store
                .find_user(UserKey::Id(id))
                .await?
                .is_some_and(|u| u.is_visible()))
    }

    /// Applies `patch` to the user `id` on behalf of `caller`: only admins
    /// change status or roles; a disabled account loses its sessions.
    pub async fn update(
        &self,
        caller: &Principal,
        id: Uuid,
        patch: &UserPatch,
    ) -> Result<User, AppError> {
        if !caller.may_act_for(&id.to_string()) {
            return Err(AppError::NotFound("user"));
        }
        if (patch.status.is_some() || patch.roles.is_some()) && !caller.is_admin() {
            return Err(AppError::PermissionDenied(
                "only admins may change status or roles",
            ));
        }
        let now = Utc::now().trunc_subsecs(6);
        let user = self
            .store
            .update_user(id, patch, now)
            .await?
            .ok_or(AppError::NotFound("user"))?;
        if user.status != UserStatus::Active {
            // A disabled account keeps no session alive.
            self.store.revoke_user_refresh_tokens(id, now).await?;
        }
        tracing::info!(user_id = %id, by = %caller.user_id, "user updated");
        self.activity.publish(ActivityKind::Updated, &user);
        Ok(user)
    }

    /// Deletes (softly) the user `id` on behalf of `caller`, ending its
    /// sessions.
    pub async fn delete(&self, caller: &Principal, id: Uuid) -> Result<(), AppError> {
        if !caller.may_act_for(&id.to_string()) {
            return Err(AppError::NotFound("user"));
        }
        let now = Utc::now().trunc_subsecs(6);
        if !self.store.soft_delete_user(id, now).await? {
            return Err(AppError::NotFound("user"));
        }
        self.store.revoke_user_refresh_tokens(id, now).await?;
        tracing::info!(user_id = %id, by = %caller.user_id, "user deleted");
        if let Some(user) = self.store.find_user(UserKey::Id(id)).await? {
            self.activity.publish(ActivityKind::Deleted, &user);
        }
        Ok(())
    }

    /// Up to `limit` users `filter` selects, in id order, read from the
    /// database as the stream is polled (not collected first).
    pub fn stream_users(
        &self,
        filter: UserFilter,
        limit: u32,
    ) -> impl futures_util::Stream<Item = Result<User, AppError>> + Send + '_ {
        use futures_util::StreamExt as _;
        self.store
            .stream_users(filter, limit)
            .map(|row| row.map_err(AppError::from))
    }

    /// Up to `limit` users `filter` selects after the cursor `after`, and
    /// how many it selects in all.
    pub async fn list(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<(Vec<User>, u64), AppError> {
        let (users, total) = tokio::try_join!(
            self.store.list_users(filter, after, limit),
            self.store.count_users(filter)
        )?;
        Ok((users, total))
    }
}
