//! `quiet::tracing_off` (in a process of its own: it sets the global
//! subscriber) leaves every span and event disabled, and counts as a set
//! subscriber, which is what keeps `tracing`'s `log` bridge out of the way.

#[test]
fn tracing_off_sets_a_subscriber_that_enables_nothing() {
    assert!(!tracing::dispatcher::has_been_set());
    shop_loadgen::quiet::tracing_off();
    assert!(tracing::dispatcher::has_been_set());
    assert!(tracing::error_span!("anything").is_disabled());
    assert!(!tracing::enabled!(tracing::Level::ERROR));
    // A second call keeps the first subscriber rather than failing.
    shop_loadgen::quiet::tracing_off();
    assert!(tracing::dispatcher::has_been_set());
}
