//! Background work a service runs beside its server (sweepers, outbox
//! workers): spawned on the runtime and stopped when the service stops.

use std::{future::Future, time::Duration};

/// A task that is aborted when this handle is dropped, so that it ends
/// with the `run` function that started it.
#[derive(Debug)]
pub struct BackgroundTask(tokio::task::JoinHandle<()>);

impl BackgroundTask {
    /// Spawns `work`.
    pub fn spawn(work: impl Future<Output = ()> + Send + 'static) -> BackgroundTask {
        BackgroundTask(tokio::spawn(work))
    }

    /// Waits up to `within` for the work to end by itself, and aborts it
    /// after that. True when it ended in time (a panic counts as ended).
    pub async fn finish(mut self, within: Duration) -> bool {
        tokio::time::timeout(within, &mut self.0).await.is_ok()
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_stops_the_work() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let task = BackgroundTask::spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(task);
        // The sender went with the aborted task.
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_waits_for_the_work_then_aborts_it() {
        let done = BackgroundTask::spawn(tokio::time::sleep(Duration::from_secs(1)));
        assert!(done.finish(Duration::from_secs(2)).await);

        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let stuck = BackgroundTask::spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        assert!(!stuck.finish(Duration::from_secs(2)).await);
        assert!(rx.recv().await.is_none(), "aborted after the wait");
    }
}
