//! Conversions between the proto messages and the domain types.

use chrono::{DateTime, Utc};
use shop_auth::Role;
use shop_proto::user::v1 as pb;
use uuid::Uuid;

use crate::domain::{User, UserStatus};

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// `user` as its message, its text moved rather than copied: GetUser
/// answers from an owned copy on every call.
pub(crate) fn user_into_proto(user: User) -> pb::User {
    pb::User {
        id: uuid_text(user.id),
        email: user.email,
        username: user.username,
        first_name: user.first_name,
        last_name: user.last_name,
        bio: user.bio,
        status: status_to_proto(user.status) as i32,
        roles: user
            .roles
            .iter()
            .map(|r| role_to_proto(*r) as i32)
            .collect(),
        created_at: Some(timestamp(user.created_at)),
        updated_at: Some(timestamp(user.updated_at)),
    }
}

pub(crate) fn user_to_proto(user: &User) -> pb::User {
    user_into_proto(user.clone())
}

/// The hyphenated lower-case text of `id`, without `core::fmt`.
pub(crate) fn uuid_text(id: Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

pub(crate) fn status_to_proto(status: UserStatus) -> pb::UserStatus {
    match status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Inactive => pb::UserStatus::Inactive,
        UserStatus::Suspended => pb::UserStatus::Suspended,
        UserStatus::Deleted => pb::UserStatus::Deleted,
    }
}

/// `Ok(None)` for UNSPECIFIED.
pub(crate) fn status_from_proto(value: i32) -> Result<Option<UserStatus>, String> {
    match pb::UserStatus::try_from(value) {
        Ok(pb::UserStatus::Unspecified) => Ok(None),
        Ok(pb::UserStatus::Active) => Ok(Some(UserStatus::Active)),
        Ok(pb::UserStatus::Inactive) => Ok(Some(UserStatus::Inactive)),
        Ok(pb::UserStatus::Suspended) => Ok(Some(UserStatus::Suspended)),
        Ok(pb::UserStatus::Deleted) => Ok(Some(UserStatus::Deleted)),
        Err(_) => Err(format!("{value} is not a UserStatus")),
    }
}

pub(crate) fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Customer => pb::Role::Customer,
        Role::Admin => pb::Role::Admin,
        // Only in service tokens, never on an account.
        Role::Service => pb::Role::Unspecified,
    }
}

pub(crate) fn role_from_proto(value: i32) -> Result<Role, String> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Customer) => Ok(Role::Customer),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Unspecified) => Err("must not be ROLE_UNSPECIFIED".into()),
        Err(_) => Err(format!("{value} is not a Role")),
    }
}

pub(crate) fn parse_id(raw: &str) -> Result<Uuid, String> {
    if raw.is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(raw).map_err(|_| "is not a valid UUID".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_s_text_is_its_display() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::now_v7(), Uuid::new_v4()] {
            assert_eq!(uuid_text(id), id.to_string());
        }
    }
}
