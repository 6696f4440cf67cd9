//! Why the generator and the bare server install a subscriber that records
//! nothing.
//!
//! h2, hyper and tonic open and enter `tracing` spans on every frame they
//! handle. In a process without a subscriber those spans are disabled, but
//! the workspace builds `tracing` with its `log` feature (sqlx turns it on,
//! and features are shared by everything built together), and with that
//! feature a span checks the `log` crate's level on every enter and exit
//! as long as no subscriber has been set. Measured on the bare server
//! (`scripts/bench.sh --profile=bare`), that was about 5% of its CPU per
//! call: a yardstick slower than plain tonic, which flatters every ratio
//! set against it, and a generator dearer per call. Setting
//! [`NoSubscriber`](tracing::subscriber::NoSubscriber) as the global
//! default makes every callsite "never" once, which is what a tonic
//! program without `log` pays.

/// Sets a global `tracing` subscriber that is interested in nothing. Call
/// it first in `main`; it does nothing when one is already set.
pub fn tracing_off() {
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new());
}
