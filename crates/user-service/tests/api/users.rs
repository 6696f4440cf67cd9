//! UserService over gRPC: sign-up, reads, partial updates, soft deletes,
//! listing, and who may do what.

use shop_proto::user::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, Role, RoleSet,
    UpdateUserRequest, UserStatus, get_user_request::Identifier,
};
use tonic::{Code, Request};

use crate::helpers::{Backend, PASSWORD, TestApp, authed, violated_fields};

fn sign_up_request(username: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: format!("{username}@example.com"),
        username: username.into(),
        password: PASSWORD.into(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
    }
}

fn get_by_id(id: &str) -> GetUserRequest {
    GetUserRequest {
        identifier: Some(Identifier::UserId(id.into())),
    }
}

#[tokio::test]
async fn sign_up_creates_an_active_customer() {
    let app = TestApp::spawn().await;
    let user = app
        .users
        .clone()
        .create_user(CreateUserRequest {
            email: "Ada@Example.com".into(),
            ..sign_up_request("Ada")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.username, "ada");
    assert_eq!(user.status, UserStatus::Active as i32);
    assert_eq!(user.roles, vec![Role::Customer as i32]);
    let id = uuid::Uuid::parse_str(&user.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert!(user.created_at.is_some() && user.updated_at.is_some());
}

#[tokio::test]
async fn sign_up_reports_every_invalid_field_at_once() {
    let app = TestApp::spawn().await;
    let status = app
        .users
        .clone()
        .create_user(CreateUserRequest {
            email: "not-an-email".into(),
            username: "x".into(),
            password: "short".into(),
            first_name: " ".into(),
            last_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["email", "username", "password", "first_name", "last_name"]
    );
}

#[tokio::test]
async fn passwords_over_72_bytes_are_refused_not_truncated() {
    let app = TestApp::spawn().await;
    let status = app
        .users
        .clone()
        .create_user(CreateUserRequest {
            password: "p".repeat(73),
            ..sign_up_request("longpass")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["password"]);
    assert!(
        status.message().contains("72 bytes"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn taken_email_or_username_is_already_exists() {
    let app = TestApp::spawn().await;
    app.sign_up("grace").await;
    let mut users = app.users.clone();

    let same_email = users
        .create_user(CreateUserRequest {
            email: "GRACE@example.com".into(),
            ..sign_up_request("other")
        })
        .await
        .unwrap_err();
    assert_eq!(same_email.code(), Code::AlreadyExists);

    let same_username = users
        .create_user(CreateUserRequest {
            email: "new@example.com".into(),
            ..sign_up_request("Grace")
        })
        .await
        .unwrap_err();
    assert_eq!(same_username.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn users_get_themselves_by_id_email_or_username() {
    let app = TestApp::spawn().await;
    let (user, token) = app.customer("linus").await;
    let mut users = app.users.clone();
    for identifier in [
        Identifier::UserId(user.id.clone()),
        Identifier::Email("Linus@Example.com".into()),
        Identifier::Username("LINUS".into()),
    ] {
        let got = users
            .get_user(authed(
                GetUserRequest {
                    identifier: Some(identifier),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, user);
    }
}

#[tokio::test]
async fn get_user_needs_an_identifier_and_a_token() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("ken").await;
    let mut users = app.users.clone();

    let none = users
        .get_user(authed(GetUserRequest { identifier: None }, &token))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&none), ["identifier"]);

    let bad_id = users
        .get_user(authed(get_by_id("42"), &token))
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad_id), ["user_id"]);

    let anonymous = users
        .get_user(Request::new(get_by_id(&uuid::Uuid::now_v7().to_string())))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn another_users_data_is_not_found_but_admins_see_it() {
    let app = TestApp::spawn().await;
    let (alice, _) = app.customer("alice").await;
    let (_, bob_token) = app.customer("bob").await;
    let mut users = app.users.clone();

    let probes = [
        Identifier::UserId(alice.id.clone()),
        Identifier::Email(alice.email.clone()),
        Identifier::Username(alice.username.clone()),
        Identifier::UserId(uuid::Uuid::now_v7().to_string()),
    ];
    for identifier in probes {
        let status = users
            .get_user(authed(
                GetUserRequest {
                    identifier: Some(identifier),
                },
                &bob_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "user not found");
    }

    let update = users
        .update_user(authed(
            UpdateUserRequest {
                user_id: alice.id.clone(),
                bio: Some("pwned".into()),
                ..Default::default()
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound);

    let delete = users
        .delete_user(authed(
            DeleteUserRequest {
                user_id: alice.id.clone(),
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(delete.code(), Code::NotFound);

    let admin = app.admin_token().await;
    let seen = users
        .get_user(authed(get_by_id(&alice.id), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.bio, "", "bob's update must not have landed");
}

#[tokio::test]
async fn update_changes_only_the_fields_that_are_set() {
    let app = TestApp::spawn().await;
    let (user, token) = app.customer("margaret").await;
    let mut users = app.users.clone();

    let updated = users
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                first_name: Some("Maggie".into()),
                bio: Some("  Apollo guidance  ".into()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.first_name, "Maggie");
    assert_eq!(updated.bio, "Apollo guidance");
    assert_eq!(updated.last_name, user.last_name);
    assert_eq!(updated.username, user.username);
    assert_eq!(updated.created_at, user.created_at);
    let seconds = |u: &shop_proto::user::v1::User| {
        let t = u.updated_at.unwrap();
        (t.seconds, t.nanos)
    };
    assert!(seconds(&updated) > seconds(&user));

    let renamed = users
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                username: Some("Hamilton".into()),
                bio: Some(String::new()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.username, "hamilton");
    assert_eq!(renamed.bio, "", "an empty bio clears it");
    assert_eq!(renamed.first_name, "Maggie");
}

#[tokio::test]
async fn update_validates_every_field() {
    let app = TestApp::spawn().await;
    let (user, token) = app.customer("edsger").await;
    let status = app
        .users
        .clone()
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                username: Some("9lives".into()),
                first_name: Some(String::new()),
                bio: Some("x".repeat(501)),
                status: Some(UserStatus::Deleted as i32),
                roles: Some(RoleSet {
                    roles: vec![Role::Unspecified as i32],
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["username", "first_name", "bio", "status", "roles.roles[0]"]
    );
}

#[tokio::test]
async fn a_taken_username_is_already_exists_on_update() {
    let app = TestApp::spawn().await;
    app.sign_up("taken").await;
    let (user, token) = app.customer("renamer").await;
    let status = app
        .users
        .clone()
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id,
                username: Some("taken".into()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn only_admins_change_status_and_roles() {
    let app = TestApp::spawn().await;
    let (user, token) = app.customer("barbara").await;
    let mut users = app.users.clone();

    for request in [
        UpdateUserRequest {
            user_id: user.id.clone(),
            status: Some(UserStatus::Suspended as i32),
            ..Default::default()
        },
        UpdateUserRequest {
            user_id: user.id.clone(),
            roles: Some(RoleSet {
                roles: vec![Role::Admin as i32],
            }),
            ..Default::default()
        },
    ] {
        let status = users
            .update_user(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }

    let admin = app.admin_token().await;
    let promoted = users
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                roles: Some(RoleSet {
                    roles: vec![
                        Role::Customer as i32,
                        Role::Admin as i32,
                        Role::Admin as i32,
                    ],
                }),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.roles, [Role::Customer as i32, Role::Admin as i32]);

    let suspended = users
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                status: Some(UserStatus::Suspended as i32),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.status, UserStatus::Suspended as i32);
}

#[tokio::test]
async fn delete_is_soft_and_ends_the_account() {
    let app = TestApp::spawn().await;
    let (user, _) = app.customer("dennis").await;
    let tokens = app.login("dennis", PASSWORD).await;
    let mut users = app.users.clone();

    users
        .delete_user(authed(
            DeleteUserRequest {
                user_id: user.id.clone(),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap();

    let admin = app.admin_token().await;
    let gone = users
        .get_user(authed(get_by_id(&user.id), &admin))
        .await
        .unwrap_err();
    assert_eq!(
        gone.code(),
        Code::NotFound,
        "deleted users are not found, even by admins"
    );

    let again = users
        .delete_user(authed(
            DeleteUserRequest {
                user_id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // Soft: the row is still there for admins who ask for deleted users.
    let deleted = users
        .list_users(authed(
            ListUsersRequest {
                status: UserStatus::Deleted as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.users.len(), 1);
    assert_eq!(deleted.users[0].id, user.id);

    // The account can no longer log in or refresh.
    let login = app
        .auth
        .clone()
        .login(shop_proto::auth::v1::LoginRequest {
            identifier: "dennis".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::Unauthenticated);
    let refresh = app
        .auth
        .clone()
        .refresh_token(shop_proto::auth::v1::RefreshTokenRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn list_users_is_for_admins_only() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("eve").await;
    let mut users = app.users.clone();
    let customer = users
        .list_users(authed(ListUsersRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(customer.code(), Code::PermissionDenied);
    let anonymous = users
        .list_users(Request::new(ListUsersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

async fn pages_through_every_user(app: &TestApp) {
    for i in 0..7 {
        app.sign_up(&format!("pager{i}")).await;
    }
    let admin = app.admin_token().await;
    let mut users = app.users.clone();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = users
            .list_users(authed(
                ListUsersRequest {
                    page_size: 3,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert_eq!(page.total_size, 8, "7 users and the bootstrap admin");
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "oldest first, no duplicates");
}

#[tokio::test]
async fn list_users_pages_through_everyone_once() {
    let app = TestApp::spawn().await;
    pages_through_every_user(&app).await;
}

#[tokio::test]
async fn list_users_pages_through_everyone_once_on_postgres() {
    let app = TestApp::spawn_on(Backend::Postgres, &[]).await;
    pages_through_every_user(&app).await;
}

#[tokio::test]
async fn list_users_refuses_forged_garbled_and_foreign_page_tokens() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.sign_up(&format!("tok{i}")).await;
    }
    let admin = app.admin_token().await;
    let mut users = app.users.clone();
    let first = users
        .list_users(authed(
            ListUsersRequest {
                page_size: 1,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());

    let mut forged = first.next_page_token.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();

    let attempts = [
        ("garbled", "%%%not-a-token%%%".to_owned(), String::new()),
        ("forged", forged, String::new()),
        (
            "other filters",
            first.next_page_token.clone(),
            "tok".to_owned(),
        ),
    ];
    for (what, page_token, search) in attempts {
        let status = users
            .list_users(authed(
                ListUsersRequest {
                    page_size: 1,
                    page_token,
                    search,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(violated_fields(&status), ["page_token"], "{what}");
    }
}

#[tokio::test]
async fn list_users_filters_by_search_and_status_and_clamps_page_size() {
    // 100+ sign-ups from one address: past the default per-address quota.
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &["--credential-calls-per-address-per-minute", "1000"],
    )
    .await;
    for name in ["findme1", "findme2", "other"] {
        app.sign_up(name).await;
    }
    let admin = app.admin_token().await;
    let mut users = app.users.clone();

    let found = users
        .list_users(authed(
            ListUsersRequest {
                search: "FINDME".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.total_size, 2);
    assert!(found.users.iter().all(|u| u.username.starts_with("findme")));

    let wildcard = users
        .list_users(authed(
            ListUsersRequest {
                search: "%".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wildcard.total_size, 0, "'%' is a literal, not a wildcard");

    let suspended = users
        .list_users(authed(
            ListUsersRequest {
                status: UserStatus::Suspended as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.total_size, 0);

    let bad = users
        .list_users(authed(
            ListUsersRequest {
                page_size: -1,
                search: "s".repeat(101),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["page_size", "search"]);

    for i in 0..100 {
        app.sign_up(&format!("bulk{i:03}")).await;
    }
    let clamped = users
        .list_users(authed(
            ListUsersRequest {
                page_size: 1000,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clamped.users.len(), 100);
    assert_eq!(clamped.total_size, 104);
    assert!(!clamped.next_page_token.is_empty());

    let default = users
        .list_users(authed(ListUsersRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.users.len(), 50);
}
