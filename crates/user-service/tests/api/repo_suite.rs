//! One repository suite, run against SQLite and PostgreSQL: every check is
//! written once and instantiated per backend by the test kit's
//! `repo_suite!`.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound as _, Utc};
use shop_auth::Role;
use user_service::{
    domain::{Email, NewUser, PersonName, UserFilter, UserPatch, UserStatus, Username},
    repo::{
        ConnectOptions, NewRefreshToken, RepoError, Rotation, Store, UniqueField, UserCache,
        UserKey, connect,
    },
};
use uuid::Uuid;

use shop_testkit::Backend;

/// A store on a fresh, migrated database on `backend`.
async fn store(backend: Backend) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("users", dir.path()).await;
    // Through the cache, as the service runs it: every check also shows
    // that a cached read never hides a write made through the store.
    let cache = UserCache {
        capacity: 1000,
        max_age: std::time::Duration::from_secs(60),
    };
    let store = connect(&url, ConnectOptions::new(5, None), cache)
        .await
        .expect("connect and migrate");
    (store, dir)
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(crate) fn new_user(name: &str) -> NewUser {
    NewUser {
        id: Uuid::now_v7(),
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        username: Username::parse(name).unwrap(),
        password_hash: "$2b$04$hash".into(),
        first_name: PersonName::parse("First").unwrap(),
        last_name: PersonName::parse(name).unwrap(),
        roles: vec![Role::Customer],
        status: UserStatus::Active,
        now: now(),
    }
}

fn refresh(user_id: Uuid, family_id: Uuid, hash: &str, ttl: Duration) -> NewRefreshToken {
    let now = now();
    NewRefreshToken {
        token_hash: hash.into(),
        family_id,
        user_id,
        created_at: now,
        expires_at: now + ttl,
    }
}

pub(crate) async fn creates_and_finds_by_every_key(store: &dyn Store) {
    let new = new_user("ada");
    let created = store.create_user(&new).await.unwrap();
    assert_eq!(created.id, new.id);
    assert_eq!(created.created_at, new.now);
    for key in [
        UserKey::Id(new.id),
        UserKey::Email(&new.email),
        UserKey::Username(&new.username),
    ] {
        assert_eq!(store.find_user(key).await.unwrap().as_ref(), Some(&created));
    }
    assert!(
        store
            .find_user(UserKey::Id(Uuid::now_v7()))
            .await
            .unwrap()
            .is_none()
    );

    let by_email = store
        .find_credentials("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.password_hash, "$2b$04$hash");
    let by_username = store.find_credentials("ada").await.unwrap().unwrap();
    assert_eq!(by_username.user, created);
    assert!(store.find_credentials("nobody").await.unwrap().is_none());
}

pub(crate) async fn unique_fields_conflict_by_name(store: &dyn Store) {
    store.create_user(&new_user("grace")).await.unwrap();
    let mut same_email = new_user("other");
    same_email.email = Email::parse("grace@example.com").unwrap();
    assert!(matches!(
        store.create_user(&same_email).await,
        Err(RepoError::Conflict(UniqueField::Email))
    ));
    let mut same_username = new_user("grace");
    same_username.email = Email::parse("new@example.com").unwrap();
    assert!(matches!(
        store.create_user(&same_username).await,
        Err(RepoError::Conflict(UniqueField::Username))
    ));
}

pub(crate) async fn updates_only_set_fields_and_not_deleted_users(store: &dyn Store) {
    let user = store.create_user(&new_user("linus")).await.unwrap();
    let later = user.updated_at + Duration::seconds(1);
    let patch = UserPatch {
        first_name: Some(PersonName::parse("Linus B.").unwrap()),
        roles: Some(vec![Role::Customer, Role::Admin]),
        ..UserPatch::default()
    };
    let updated = store
        .update_user(user.id, &patch, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.first_name, "Linus B.");
    assert_eq!(updated.last_name, user.last_name);
    assert_eq!(updated.roles, [Role::Customer, Role::Admin]);
    assert_eq!(updated.updated_at, later);

    let taken = store.create_user(&new_user("taken")).await.unwrap();
    let rename = UserPatch {
        username: Some(Username::parse(&taken.username).unwrap()),
        ..UserPatch::default()
    };
    assert!(matches!(
        store.update_user(user.id, &rename, later).await,
        Err(RepoError::Conflict(UniqueField::Username))
    ));

    assert!(store.soft_delete_user(user.id, later).await.unwrap());
    assert!(
        store
            .update_user(user.id, &patch, later)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .update_user(Uuid::now_v7(), &patch, later)
            .await
            .unwrap()
            .is_none()
    );
}

pub(crate) async fn soft_delete_keeps_the_row_once(store: &dyn Store) {
    let user = store.create_user(&new_user("dennis")).await.unwrap();
    assert!(store.soft_delete_user(user.id, now()).await.unwrap());
    assert!(
        !store.soft_delete_user(user.id, now()).await.unwrap(),
        "second delete"
    );
    let row = store
        .find_user(UserKey::Id(user.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, UserStatus::Deleted);
    assert!(!store.soft_delete_user(Uuid::now_v7(), now()).await.unwrap());
}

pub(crate) async fn lists_in_id_order_with_filters_cursor_and_count(store: &dyn Store) {
    let mut ids = Vec::new();
    for name in ["u-one", "u-two", "u-three", "u-four", "special_50%"] {
        let mut user = new_user("placeholder");
        user.username = Username::parse(&name.replace('%', "p")).unwrap();
        user.email = Email::parse(&format!("{}@example.com", name.replace('%', "p"))).unwrap();
        if name == "special_50%" {
            user.last_name = PersonName::parse("Fifty 50% Off").unwrap();
        }
        ids.push(store.create_user(&user).await.unwrap().id);
    }
    store.soft_delete_user(ids[1], now()).await.unwrap();

    let all = UserFilter::default();
    assert_eq!(
        store.count_users(&all).await.unwrap(),
        4,
        "deleted users are left out"
    );
    let page1 = store.list_users(&all, None, 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    let page2 = store.list_users(&all, Some(ids[2]), 2).await.unwrap();
    assert_eq!(
        page2.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ids[3], ids[4]]
    );
    assert!(
        store
            .list_users(&all, Some(ids[4]), 2)
            .await
            .unwrap()
            .is_empty()
    );

    let deleted = UserFilter {
        status: Some(UserStatus::Deleted),
        search: None,
    };
    assert_eq!(store.count_users(&deleted).await.unwrap(), 1);
    assert_eq!(
        store.list_users(&deleted, None, 10).await.unwrap()[0].id,
        ids[1]
    );

    let search = |s: &str| UserFilter {
        status: None,
        search: Some(s.into()),
    };
    assert_eq!(
        store.count_users(&search("u-t")).await.unwrap(),
        1,
        "u-three; u-two is deleted"
    );
    assert_eq!(store.count_users(&search("50%")).await.unwrap(), 1);
    assert_eq!(
        store.count_users(&search("%")).await.unwrap(),
        1,
        "'%' matches literally"
    );
    assert_eq!(
        store.count_users(&search("_")).await.unwrap(),
        1,
        "'_' matches literally"
    );
    assert_eq!(
        store.count_users(&search("fifty")).await.unwrap(),
        1,
        "names match case-insensitively"
    );
    // A page of a search lists what its count counts: u-three for "u-t",
    // special_50% for the others.
    for (s, id) in [
        ("u-t", ids[2]),
        ("50%", ids[4]),
        ("%", ids[4]),
        ("_", ids[4]),
        ("fifty", ids[4]),
    ] {
        let listed = store.list_users(&search(s), None, 10).await.unwrap();
        assert_eq!(listed.iter().map(|u| u.id).collect::<Vec<_>>(), [id], "{s}");
    }
    let deleted_matching = UserFilter {
        status: Some(UserStatus::Deleted),
        search: Some("u-t".into()),
    };
    let listed = store.list_users(&deleted_matching, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ids[1]],
        "u-two, deleted"
    );
}

pub(crate) async fn refresh_tokens_rotate_once_and_reuse_revokes_the_family(store: &dyn Store) {
    let user = store.create_user(&new_user("rotor")).await.unwrap();
    let family = Uuid::now_v7();
    store
        .insert_refresh_token(&refresh(user.id, family, "h1", Duration::days(1)))
        .await
        .unwrap();

    let later = now() + Duration::days(2);
    assert_eq!(
        store
            .rotate_refresh_token("h1", "h2", later, now())
            .await
            .unwrap(),
        Rotation::Rotated {
            user_id: user.id,
            family_id: family
        }
    );
    assert_eq!(
        store
            .rotate_refresh_token("h1", "h3", later, now())
            .await
            .unwrap(),
        Rotation::Reused { family_id: family }
    );
    assert_eq!(
        store
            .rotate_refresh_token("h2", "h4", later, now())
            .await
            .unwrap(),
        Rotation::Revoked,
        "the family was revoked by the reuse"
    );
    assert_eq!(
        store
            .rotate_refresh_token("nope", "h5", later, now())
            .await
            .unwrap(),
        Rotation::Unknown
    );
}

pub(crate) async fn concurrent_rotations_of_one_token_let_exactly_one_win(store: &dyn Store) {
    let user = store.create_user(&new_user("racer")).await.unwrap();
    let family = Uuid::now_v7();
    store
        .insert_refresh_token(&refresh(user.id, family, "race", Duration::days(1)))
        .await
        .unwrap();
    let later = now() + Duration::days(1);
    let (a, b) = tokio::join!(
        store.rotate_refresh_token("race", "next-a", later, now()),
        store.rotate_refresh_token("race", "next-b", later, now()),
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, Rotation::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    assert!(
        outcomes.contains(&Rotation::Reused { family_id: family }),
        "{outcomes:?}"
    );
}

pub(crate) async fn expired_and_revoked_refresh_tokens_do_not_rotate(store: &dyn Store) {
    let user = store.create_user(&new_user("expiry")).await.unwrap();
    store
        .insert_refresh_token(&refresh(
            user.id,
            Uuid::now_v7(),
            "old",
            Duration::seconds(-1),
        ))
        .await
        .unwrap();
    let later = now() + Duration::days(1);
    assert_eq!(
        store
            .rotate_refresh_token("old", "x", later, now())
            .await
            .unwrap(),
        Rotation::Expired
    );

    store
        .insert_refresh_token(&refresh(user.id, Uuid::now_v7(), "s1", Duration::days(1)))
        .await
        .unwrap();
    store
        .insert_refresh_token(&refresh(user.id, Uuid::now_v7(), "s2", Duration::days(1)))
        .await
        .unwrap();
    store.revoke_refresh_family("s1", now()).await.unwrap();
    assert_eq!(
        store
            .rotate_refresh_token("s1", "y", later, now())
            .await
            .unwrap(),
        Rotation::Revoked
    );
    // "s2" and the consumed-but-expired "old" were not revoked yet.
    assert_eq!(
        store
            .revoke_user_refresh_tokens(user.id, now())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .rotate_refresh_token("s2", "z", later, now())
            .await
            .unwrap(),
        Rotation::Revoked
    );
}

pub(crate) async fn counts_active_admins_only(store: &dyn Store) {
    assert_eq!(store.count_active_admins().await.unwrap(), 0);
    let customer = store.create_user(&new_user("carol")).await.unwrap();
    let mut admin = new_user("adminette");
    admin.roles = vec![Role::Customer, Role::Admin];
    store.create_user(&admin).await.unwrap();
    let mut suspended = new_user("sus");
    suspended.roles = vec![Role::Admin];
    suspended.status = UserStatus::Suspended;
    store.create_user(&suspended).await.unwrap();
    // A name that contains "admin" is not the role.
    assert_eq!(customer.roles, [Role::Customer]);
    assert_eq!(store.count_active_admins().await.unwrap(), 1);
    let demote = UserPatch {
        roles: Some(vec![Role::Customer]),
        ..UserPatch::default()
    };
    store.update_user(admin.id, &demote, now()).await.unwrap();
    assert_eq!(store.count_active_admins().await.unwrap(), 0);
}

shop_testkit::repo_suite!(
    store;
    counts_active_admins_only,
    creates_and_finds_by_every_key,
    unique_fields_conflict_by_name,
    updates_only_set_fields_and_not_deleted_users,
    soft_delete_keeps_the_row_once,
    lists_in_id_order_with_filters_cursor_and_count,
    refresh_tokens_rotate_once_and_reuse_revokes_the_family,
    concurrent_rotations_of_one_token_let_exactly_one_win,
    expired_and_revoked_refresh_tokens_do_not_rotate,
);
