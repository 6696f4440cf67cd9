//! Closed-loop and open-loop load with a stop condition, a warm-up that is
//! not recorded, and a live progress bar.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{sync::Semaphore, time::Instant};
use tonic::Code;

use crate::{pace::Schedule, stats::Recorder};

/// How requests are issued.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `concurrency` callers, each waiting for its answer before the next.
    Closed {
        /// Callers.
        concurrency: usize,
    },
    /// Requests due at fixed intervals whatever the answers.
    Open {
        /// Requests per second.
        rate: f64,
        /// Most requests in flight.
        max_in_flight: usize,
        /// Shortest time between two wake-ups of the pacer.
        quantum: Duration,
    },
}

/// When a phase ends: whichever of the two comes first.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Time.
    pub duration: Duration,
    /// Requests issued.
    pub requests: Option<u64>,
}

/// The outcome of one request: which method, which status.
pub type Outcome = (&'static str, Code);

/// Runs `op` (given a sequence number) under `mode` until `bounds`, and
/// records every outcome in `recorder`, with latency from the request's
/// start (closed loop) or from when it was due (open loop; `recorder` also
/// gets how late each request was issued). `progress` shows a live bar.
pub async fn run<F, Fut>(
    mode: Mode,
    bounds: Bounds,
    op: F,
    recorder: Arc<Recorder>,
    progress: bool,
) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + bounds.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(progress, bounds);
    let ticker = {
        let (bar, recorder) = (bar.clone(), Arc::clone(&recorder));
        tokio::spawn(async move {
            let mut last = (Instant::now(), recorder.calls());
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = (Instant::now(), recorder.calls());
                let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
                bar.set_message(format!("{rate:>8.0} req/s  {} errors", recorder.errors()));
                match bounds.requests {
                    Some(_) => bar.set_position(now.1),
                    None => bar.set_position((now.0 - started).as_secs()),
                }
                last = now;
            }
        })
    };
    // Takes the next sequence number, or None when the phase is over.
    let next = {
        let issued = Arc::clone(&issued);
        move || {
            if Instant::now() >= deadline {
                return None;
            }
            let seq = issued.fetch_add(1, Ordering::Relaxed);
            match bounds.requests {
                Some(max) if seq >= max => None,
                _ => Some(seq),
            }
        }
    };

    match mode {
        Mode::Closed { concurrency } => {
            let callers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (op, next, recorder) = (op.clone(), next.clone(), Arc::clone(&recorder));
                    tokio::spawn(async move {
                        while let Some(seq) = next() {
                            let sent = Instant::now();
                            let (method, code) = op(seq).await;
                            recorder.record(method, code, sent.elapsed());
                        }
                    })
                })
                .collect();
            for caller in callers {
                let _ = caller.await;
            }
        }
        Mode::Open {
            rate,
            max_in_flight,
            quantum,
        } => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let slots = Arc::new(Semaphore::new(max_in_flight));
            let mut schedule = Schedule::start(started.into_std(), interval, quantum);
            // The requests are spawned from a task of the runtime, not
            // from the thread that waits for `run`: a spawn from outside
            // the runtime wakes a worker across threads, one more context
            // switch per request.
            let issuer = {
                let (slots, recorder) = (Arc::clone(&slots), Arc::clone(&recorder));
                tokio::spawn(async move {
                    while let Some(seq) = next() {
                        let intended = Instant::from_std(schedule.next().await);
                        // Taken here, not in the task, so that the final wait below
                        // sees every request that was issued.
                        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                            break;
                        };
                        recorder.record_send_lag(intended.elapsed());
                        let (op, recorder) = (op.clone(), Arc::clone(&recorder));
                        tokio::spawn(async move {
                            let _slot = slot;
                            let (method, code) = op(seq).await;
                            recorder.record(method, code, intended.elapsed());
                        });
                    }
                })
            };
            issuer.await.expect("the open loop's issuer does not panic");
            // Wait for the requests still in flight.
            let _ = slots
                .acquire_many(u32::try_from(max_in_flight).unwrap_or(u32::MAX))
                .await;
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    started.elapsed()
}

fn progress_bar(show: bool, bounds: Bounds) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (length, unit) = match bounds.requests {
        Some(requests) => (requests, "requests"),
        None => (bounds.duration.as_secs().max(1), "s"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}"
        ))
        .expect("valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_stops_at_the_request_budget() {
        let recorder = Arc::new(Recorder::default());
        let seen = Arc::new(AtomicU64::new(0));
        let op = {
            let seen = Arc::clone(&seen);
            move |_| {
                seen.fetch_add(1, Ordering::Relaxed);
                async { ("Test", Code::Ok) }
            }
        };
        let bounds = Bounds {
            duration: Duration::from_secs(60),
            requests: Some(500),
        };
        run(
            Mode::Closed { concurrency: 8 },
            bounds,
            op,
            Arc::clone(&recorder),
            false,
        )
        .await;
        assert_eq!(seen.load(Ordering::Relaxed), 500);
        assert_eq!(recorder.snapshot()["Test"].count(), 500);
        assert!(recorder.send_lag().is_none(), "a closed loop is never late");
    }

    #[tokio::test]
    async fn open_loop_counts_latency_from_when_a_request_was_due() {
        // A server that handles one request at a time, 20 ms each, offered
        // 100 requests per second: requests queue, and their latency must
        // grow with the queue instead of staying at 20 ms.
        let recorder = Arc::new(Recorder::default());
        let server = Arc::new(tokio::sync::Mutex::new(()));
        let op = move |_| {
            let server = Arc::clone(&server);
            async move {
                let _busy = server.lock().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                ("Slow", Code::Ok)
            }
        };
        let bounds = Bounds {
            duration: Duration::from_secs(60),
            requests: Some(30),
        };
        let mode = Mode::Open {
            rate: 100.0,
            max_in_flight: 1_000,
            quantum: Duration::from_micros(100),
        };
        run(mode, bounds, op, Arc::clone(&recorder), false).await;
        let stats = &recorder.snapshot()["Slow"];
        assert_eq!(stats.count(), 30);
        let send_lag = recorder
            .send_lag()
            .expect("an open loop records its lateness");
        assert_eq!(send_lag.len(), 30);
        // The 30th was due at 290 ms and served at about 600 ms.
        let max_ms = stats.latency.max() / 1_000;
        assert!(max_ms >= 250, "max latency {max_ms} ms hides the queue");
    }
}
