//! Rebuilds this crate when a migration is added or changed: the migrations
//! are embedded at compile time (`shop_storage::migrations!`, sqlx's
//! `migrate!`), and cargo would not otherwise look in `migrations/`.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
