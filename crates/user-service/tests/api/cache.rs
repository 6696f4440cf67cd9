//! The cache of users by id across replicas: two stores on one database
//! (two replicas), one suspends a user the other has cached.

use std::time::{Duration, Instant};

use chrono::{SubsecRound as _, Utc};
use shop_testkit::Backend;
use user_service::{
    domain::{UserPatch, UserStatus},
    repo::{ConnectOptions, Store, UserCache, UserKey, connect},
};

use crate::repo_suite::new_user;

async fn replica(url: &str, max_age: Duration) -> std::sync::Arc<dyn Store> {
    let cache = UserCache {
        capacity: 100,
        max_age,
    };
    connect(url, ConnectOptions::new(2, None), cache)
        .await
        .expect("connect")
}

/// Suspends a user through `writer` that `reader` has cached; how long
/// until `reader` sees it (panics after `within`).
async fn suspension_seen_after(reader: &dyn Store, writer: &dyn Store, within: Duration) {
    let user = writer.create_user(&new_user("cached")).await.unwrap();
    let cached = reader
        .find_user(UserKey::Id(user.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cached.status, UserStatus::Active);
    let suspend = UserPatch {
        status: Some(UserStatus::Suspended),
        ..UserPatch::default()
    };
    writer
        .update_user(user.id, &suspend, Utc::now().trunc_subsecs(6))
        .await
        .unwrap()
        .unwrap();
    // The writer's own cache never shows the old row.
    let written = writer.find_user(UserKey::Id(user.id)).await.unwrap();
    assert_eq!(written.unwrap().status, UserStatus::Suspended);

    let suspended_at = Instant::now();
    loop {
        let seen = reader.find_user(UserKey::Id(user.id)).await.unwrap();
        if seen.unwrap().status == UserStatus::Suspended {
            return;
        }
        assert!(
            suspended_at.elapsed() < within,
            "the other replica still serves the active user after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn on_postgres_a_change_reaches_the_other_replicas_cache_by_notification() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Postgres
        .database_url("users_cache", dir.path())
        .await;
    // Entries would live a minute: only the notification can explain the
    // other replica seeing the change within seconds.
    let (reader, writer) = (
        replica(&url, Duration::from_secs(60)).await,
        replica(&url, Duration::from_secs(60)).await,
    );
    suspension_seen_after(&*reader, &*writer, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn without_notifications_a_cached_user_is_never_older_than_the_max_age() {
    // Two SQLite stores on one file share no notices (SQLite's are
    // in-process, per store): only the entry's age limits staleness.
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite
        .database_url("users_cache", dir.path())
        .await;
    let max_age = Duration::from_millis(300);
    let (reader, writer) = (replica(&url, max_age).await, replica(&url, max_age).await);
    // The bound, plus time for the polling reads themselves.
    suspension_seen_after(&*reader, &*writer, max_age + Duration::from_secs(2)).await;
}
