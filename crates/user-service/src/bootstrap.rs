//! Creating the first admin at start-up from `BOOTSTRAP_ADMIN_EMAIL` and
//! `BOOTSTRAP_ADMIN_PASSWORD`, so that a fresh deployment has someone who
//! can call admin-only RPCs.

use chrono::{SubsecRound as _, Utc};
use shop_auth::{Password, PasswordHasher, Role};
use uuid::Uuid;

use crate::{
    ConfigError,
    domain::{Email, NewUser, PersonName, UserStatus, Username},
    repo::{RepoError, Store, UserKey},
};

/// Ensures an admin account with `email` exists: creates it with
/// `password` and `username`. The bootstrap creates, it never promotes: an
/// existing account that is not an admin is left as it is (a demoted
/// admin stays demoted) when another active admin exists, and the service
/// refuses to start when none does (sign-up is public, so whoever signed up
/// with the address first would otherwise become admin). The password of
/// an existing account is never changed.
pub(crate) async fn ensure_admin(
    store: &dyn Store,
    hasher: &PasswordHasher,
    email: &str,
    password: &str,
    username: &str,
) -> anyhow::Result<()> {
    let email =
        Email::parse(email).map_err(|e| ConfigError(format!("BOOTSTRAP_ADMIN_EMAIL {e}")))?;
    let now = Utc::now().trunc_subsecs(6);

    if let Some(user) = store.find_user(UserKey::Email(&email)).await? {
        if user.status == UserStatus::Deleted {
            tracing::warn!(user_id = %user.id, "bootstrap admin account is deleted; not restoring it");
            return Ok(());
        }
        if user.roles.contains(&Role::Admin) {
            return Ok(());
        }
        if store.count_active_admins().await? > 0 {
            tracing::warn!(
                user_id = %user.id,
                "the BOOTSTRAP_ADMIN_EMAIL account is not an admin (demoted, or signed up \
                 by someone); the bootstrap never promotes an account, leaving it as it is"
            );
            return Ok(());
        }
        return Err(ConfigError(
            "BOOTSTRAP_ADMIN_EMAIL belongs to an existing account that is not an admin, and \
             there is no active admin: the bootstrap creates an admin account, it never \
             promotes one (whoever signed up with the address would become admin). Set \
             BOOTSTRAP_ADMIN_EMAIL to an address that has no account yet"
                .into(),
        )
        .into());
    }

    let password = Password::parse(password)
        .map_err(|e| ConfigError(format!("BOOTSTRAP_ADMIN_PASSWORD {e}")))?;
    let username = Username::parse(username)
        .map_err(|e| ConfigError(format!("BOOTSTRAP_ADMIN_USERNAME {e}")))?;
    let new = NewUser {
        id: Uuid::now_v7(),
        email,
        username,
        password_hash: hasher.hash_queued(&password).await?,
        first_name: PersonName::parse("Bootstrap").expect("valid literal"),
        last_name: PersonName::parse("Admin").expect("valid literal"),
        roles: vec![Role::Customer, Role::Admin],
        status: UserStatus::Active,
        now,
    };
    match store.create_user(&new).await {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "bootstrap admin created");
            Ok(())
        }
        Err(RepoError::Conflict(_)) => Err(ConfigError(format!(
            "BOOTSTRAP_ADMIN_USERNAME {:?} is taken by another account",
            new.username.as_str()
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}
