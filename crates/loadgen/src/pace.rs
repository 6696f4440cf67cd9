//! The open loop's clock. Latency in an open loop is measured from when a
//! request was due, so the generator's own lateness is in every figure:
//! tokio's timer rounds each wait up to its next millisecond tick, which
//! released requests in bursts once a millisecond and added about a
//! millisecond to every latency (a bare tonic server answering in
//! microseconds measured at p50 1.3 ms). A thread of its own sleeps to
//! the due times instead, to within the OS timer's slack (tens of
//! microseconds) and a quantum, and hands them to the runtime as they
//! come.

use std::{
    thread,
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// Due times `interval` apart from a start, each given out once it has
/// come. A caller that falls behind (every request slot taken, say) finds
/// the overdue ones at once when it catches up, each with its own due
/// time, so that its lateness still counts in their latency.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    interval_nanos: u64,
    /// How many due times have come, as the pacer thread last said.
    released: watch::Receiver<u64>,
    /// How many have been given out.
    taken: u64,
}

impl Schedule {
    /// Starts the pacer thread: the first due time is `start`. It wakes at
    /// most once per `quantum` and hands over every due time that has
    /// come by then: a wake-up of the runtime per request, and requests
    /// written one at a time, would cost the generator nearly as much as
    /// the requests themselves (at 27,000/s: 0.83 of its core with no
    /// quantum, 0.72 at 100 µs, 0.48 at 500 µs). The thread ends when the
    /// schedule is dropped.
    pub fn start(start: Instant, interval: Duration, quantum: Duration) -> Schedule {
        let interval_nanos = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let (tx, released) = watch::channel(0);
        thread::Builder::new()
            .name("loadgen-pacer".into())
            .spawn(move || {
                let (mut count, mut woke) = (0u64, start);
                loop {
                    let next = due(start, interval_nanos, count).max(woke + quantum);
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                    woke = Instant::now();
                    let since = woke.saturating_duration_since(start).as_nanos();
                    let come =
                        u64::try_from(since / u128::from(interval_nanos)).unwrap_or(u64::MAX);
                    count = come.saturating_add(1).max(count + 1);
                    if tx.send(count).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the pacer thread");
        Schedule {
            start,
            interval_nanos,
            released,
            taken: 0,
        }
    }

    /// The next due time, once it has come.
    pub async fn next(&mut self) -> Instant {
        while self.taken >= *self.released.borrow_and_update() {
            self.released
                .changed()
                .await
                .expect("the pacer thread runs until the schedule is dropped");
        }
        self.taken += 1;
        due(self.start, self.interval_nanos, self.taken - 1)
    }
}

/// The `k`th due time.
fn due(start: Instant, interval_nanos: u64, k: u64) -> Instant {
    start + Duration::from_nanos(interval_nanos.saturating_mul(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn due_times_are_evenly_spaced_and_never_given_out_early() {
        for quantum in [Duration::ZERO, Duration::from_millis(2)] {
            let start = Instant::now() + Duration::from_millis(5);
            let interval = Duration::from_micros(250);
            let mut schedule = Schedule::start(start, interval, quantum);
            for k in 0..200u32 {
                let due = schedule.next().await;
                assert_eq!(due, start + interval * k, "quantum {quantum:?}");
                assert!(
                    Instant::now() >= due,
                    "due time {k} given out early (quantum {quantum:?})"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_caller_that_falls_behind_keeps_each_requests_own_due_time() {
        let start = Instant::now();
        let interval = Duration::from_millis(1);
        let mut schedule = Schedule::start(start, interval, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Overdue when taken, yet not moved to when they were taken: the
        // caller's lateness stays in the latency measured from them.
        for k in 0..20u32 {
            assert_eq!(schedule.next().await, start + interval * k);
        }
    }
}
