//! A configuration built from files and rebuilt when they change (checked
//! every interval, and at once on SIGHUP).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, SystemTime},
};

use crate::files::stamps;

type Build<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A configuration built from files, rebuilt when they change.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the configuration now (an error is a configuration error),
    /// and watches `files` every `interval` and on SIGHUP, on a background
    /// task that ends with the last handle.
    pub fn start(
        what: &'static str,
        files: Vec<PathBuf>,
        interval: Duration,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Arc<Reloading<T>>, String> {
        let stamped = stamps(&files);
        let config = build()?;
        let reloading = Arc::new(Reloading {
            what,
            files,
            build: Box::new(build),
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamped),
        });
        tokio::spawn(watch(Arc::downgrade(&reloading), interval));
        Ok(reloading)
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().expect("tls config lock"))
    }

    /// Rebuilds from the files; on failure keeps the current configuration.
    pub fn reload(&self, reason: &str) {
        let stamped = stamps(&self.files);
        match (self.build)() {
            Ok(config) => {
                *self.current.write().expect("tls config lock") = Arc::new(config);
                *self.stamps.lock().expect("stamps lock") = stamped;
                tracing::info!(what = self.what, reason, "TLS configuration reloaded");
            }
            Err(error) => tracing::error!(
                what = self.what,
                reason,
                %error,
                "TLS files do not load; keeping the current configuration"
            ),
        }
    }

    fn changed(&self) -> bool {
        *self.stamps.lock().expect("stamps lock") != stamps(&self.files)
    }
}

async fn watch<T: Send + Sync + 'static>(reloading: Weak<Reloading<T>>, interval: Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let reason = tokio::select! {
            _ = tokio::time::sleep(interval) => "files changed",
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        #[cfg(not(unix))]
        let reason = {
            tokio::time::sleep(interval).await;
            "files changed"
        };
        let Some(reloading) = reloading.upgrade() else {
            return;
        };
        if reason == "SIGHUP" || reloading.changed() {
            reloading.reload(reason);
        }
    }
}
