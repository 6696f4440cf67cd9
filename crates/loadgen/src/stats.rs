//! Latency histograms and status counts per method.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tonic::Code;

/// Longest latency a histogram records exactly (longer ones saturate):
/// one minute, in microseconds.
const MAX_MICROS: u64 = 60_000_000;

/// What one method did.
#[derive(Debug, Clone)]
pub struct MethodStats {
    /// Latency of every call, in microseconds.
    pub latency: Histogram<u64>,
    /// Calls per status code name (`OK`, `UNAVAILABLE`, ...).
    pub codes: BTreeMap<String, u64>,
}

/// An empty latency histogram, in microseconds up to [`MAX_MICROS`].
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid bounds")
}

impl MethodStats {
    fn new() -> MethodStats {
        MethodStats {
            latency: latency_histogram(),
            codes: BTreeMap::new(),
        }
    }

    /// Calls answered OK.
    pub fn ok(&self) -> u64 {
        self.codes.get("OK").copied().unwrap_or(0)
    }

    /// Every call.
    pub fn count(&self) -> u64 {
        self.codes.values().sum()
    }
}

/// Everything recorded during a run, shared by the callers.
#[derive(Debug, Default)]
pub struct Recorder {
    methods: Mutex<BTreeMap<&'static str, MethodStats>>,
    calls: AtomicU64,
    errors: AtomicU64,
    send_lag: Mutex<Option<Histogram<u64>>>,
}

/// The status code name as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Recorder {
    /// Records one call of `method` that ended with `code` after `latency`.
    pub fn record(&self, method: &'static str, code: Code, latency: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if code != Code::Ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut methods = self.methods.lock().expect("stats lock");
        let stats = methods.entry(method).or_insert_with(MethodStats::new);
        stats.latency.saturating_record(micros.max(1));
        let name = code_name(code);
        match stats.codes.get_mut(name) {
            Some(count) => *count += 1,
            None => {
                stats.codes.insert(name.to_owned(), 1);
            }
        }
    }

    /// Records how long after it was due an open-loop request was issued:
    /// the generator's own share of that request's latency.
    pub fn record_send_lag(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.send_lag
            .lock()
            .expect("stats lock")
            .get_or_insert_with(latency_histogram)
            .saturating_record(micros.max(1));
    }

    /// How late open-loop requests were issued, in microseconds (`None`
    /// in a closed loop).
    pub fn send_lag(&self) -> Option<Histogram<u64>> {
        self.send_lag.lock().expect("stats lock").clone()
    }

    /// Calls recorded so far (for the progress bar).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls that did not end OK so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// A copy of what was recorded.
    pub fn snapshot(&self) -> BTreeMap<&'static str, MethodStats> {
        self.methods.lock().expect("stats lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_codes_are_kept_per_method() {
        let recorder = Recorder::default();
        for ms in 1..=100 {
            recorder.record("GetUser", Code::Ok, Duration::from_millis(ms));
        }
        recorder.record("GetUser", Code::Unavailable, Duration::from_millis(5));
        recorder.record("CreateOrder", Code::Ok, Duration::from_micros(300));
        let snapshot = recorder.snapshot();
        let get_user = &snapshot["GetUser"];
        assert_eq!(get_user.count(), 101);
        assert_eq!(get_user.ok(), 100);
        assert_eq!(get_user.codes["UNAVAILABLE"], 1);
        let p50 = get_user.latency.value_at_quantile(0.5);
        assert!((49_000..=51_100).contains(&p50), "p50 {p50} µs");
        assert!(get_user.latency.max() >= 99_900);
        assert_eq!(snapshot["CreateOrder"].count(), 1);
        assert_eq!((recorder.calls(), recorder.errors()), (102, 1));
    }
}
