//! Background work a service runs beside its server (sweepers, outbox
//! workers): spawned on the runtime and stopped when the service stops.

use std::future::Future;

/// A task that is aborted when this handle is dropped, so that it ends
/// with the `run` function that started it.
#[derive(Debug)]
pub struct BackgroundTask(tokio::task::JoinHandle<()>);

impl BackgroundTask {
    /// Spawns `work`.
    pub fn spawn(work: impl Future<Output = ()> + Send + 'static) -> BackgroundTask {
        BackgroundTask(tokio::spawn(work))
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
}
