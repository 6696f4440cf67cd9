//! The log's writer: callers append their formatted lines to one shared
//! buffer, and a thread of its own writes the buffer out with one `write`,
//! at most once per flush delay.
//!
//! Why not a channel to a writer thread (tracing-appender's non-blocking
//! writer): that wakes the thread for every line, so a call arriving alone
//! pays a wake-up, a context switch and a `write` for its access line,
//! about 20 µs of a 2-core VM's CPU at 2,000 calls/s against 6 µs at
//! 20,000. Here only the first line into an empty buffer wakes the thread;
//! the thread then waits out the flush delay, so that the lines which
//! follow share its `write`.
//!
//! Nothing is dropped while the process runs: a caller that finds the
//! buffer full waits for the thread to take it. A process killed outright
//! loses at most the lines of one flush delay; dropping the
//! [`WriterGuard`] writes out everything queued.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

/// Where log lines are appended; give it to the `fmt` layer as its writer.
#[derive(Clone)]
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
}

/// Owns the writer thread: dropping it writes out what is queued and
/// stops the thread. Lines appended after that are dropped.
pub(crate) struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread: the first line into an empty buffer, a
    /// buffer past half full, or closing.
    wake_writer: Condvar,
    /// Wakes callers waiting for room: the thread took the buffer.
    drained: Condvar,
    /// Bytes queued past which callers wait; the thread stops waiting out
    /// the delay at half of it.
    limit: usize,
}

struct State {
    lines: Vec<u8>,
    /// The writer thread waits on `wake_writer` (idle or delaying).
    writer_waiting: bool,
    closed: bool,
}

/// Starts the writer thread, named `name`, writing to `out`.
pub(crate) fn spawn<W: Write + Send + 'static>(
    name: &str,
    out: W,
    flush_delay: Duration,
    limit: usize,
) -> io::Result<(LogWriter, WriterGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lines: Vec::new(),
            writer_waiting: false,
            closed: false,
        }),
        wake_writer: Condvar::new(),
        drained: Condvar::new(),
        limit: limit.max(2),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || write_out(&shared, out, flush_delay))?
    };
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        WriterGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer thread: waits for a first line, waits out the delay (or
/// until the buffer is half full, or closing), swaps the buffer for an
/// empty one and writes it; until closed and empty.
fn write_out<W: Write>(shared: &Shared, mut out: W, flush_delay: Duration) {
    // The buffer the lines were written from, reused as the next one.
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.lines.is_empty() && !state.closed {
            state = wait(shared, state, None);
        }
        if state.lines.is_empty() {
            break;
        }
        let deadline = Instant::now() + flush_delay;
        while !state.closed && state.lines.len() < shared.limit / 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = wait(shared, state, Some(left));
        }
        std::mem::swap(&mut state.lines, &mut batch);
        drop(state);
        shared.drained.notify_all();
        // Nowhere to report a failed write to; the next batch tries again.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        batch.shrink_to(KEPT_CAPACITY);
    }
    let _ = out.flush();
}

/// Capacity a buffer keeps after a burst has been written out.
const KEPT_CAPACITY: usize = 256 * 1024;

fn wait<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, State> {
    state.writer_waiting = true;
    let mut state = match timeout {
        None => shared
            .wake_writer
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner),
        Some(timeout) => {
            shared
                .wake_writer
                .wait_timeout(state, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
    };
    state.writer_waiting = false;
    state
}

impl io::Write for &LogWriter {
    /// Appends `buf` whole: the `fmt` layer hands over one line per call,
    /// so lines from different threads never interleave.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        while state.lines.len() >= shared.limit && !state.closed {
            state = shared
                .drained
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return Ok(buf.len());
        }
        let before = state.lines.len();
        state.lines.extend_from_slice(buf);
        let half = shared.limit / 2;
        let wake = before == 0 || (before < half && state.lines.len() >= half);
        if wake && state.writer_waiting {
            drop(state);
            shared.wake_writer.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> &'a LogWriter {
        self
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_one();
        self.shared.drained.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// An output that records each `write` it is given.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorded {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }

        /// Waits (up to 10 s) until something has been written.
        fn wait_for_a_write(&self) -> Vec<Vec<u8>> {
            let give_up = Instant::now() + Duration::from_secs(10);
            while Instant::now() < give_up {
                let writes = self.writes();
                if !writes.is_empty() {
                    return writes;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("nothing was written within 10 s");
        }
    }

    fn line(writer: &LogWriter, text: &str) {
        (&mut &*writer).write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_wait_out_the_delay_and_share_one_write_which_closing_makes_at_once() {
        let out = Recorded::default();
        let (writer, guard) = spawn("test-log", out.clone(), Duration::from_secs(600), 1 << 20)
            .expect("thread starts");
        for i in 0..100 {
            line(&writer, &format!("line {i}\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(out.writes().is_empty(), "written before the delay ran out");

        drop(guard);
        let writes = out.writes();
        assert_eq!(writes.len(), 1, "one write for the whole batch");
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(writes[0].clone()).unwrap(), expected);

        line(&writer, "after closing\n");
        assert_eq!(out.writes().len(), 1, "nothing is written after closing");
    }

    #[test]
    fn without_a_delay_a_line_is_written_as_soon_as_the_thread_wakes() {
        let out = Recorded::default();
        let (writer, _guard) =
            spawn("test-log", out.clone(), Duration::ZERO, 1 << 20).expect("thread starts");
        line(&writer, "alone\n");
        assert_eq!(out.wait_for_a_write(), vec![b"alone\n".to_vec()]);
    }

    #[test]
    fn a_buffer_half_full_is_written_without_waiting_out_the_delay() {
        let out = Recorded::default();
        let (writer, _guard) =
            spawn("test-log", out.clone(), Duration::from_secs(600), 100).expect("thread starts");
        line(&writer, "first\n");
        line(&writer, &format!("{}\n", "x".repeat(60)));
        let written: usize = out.wait_for_a_write().iter().map(Vec::len).sum();
        assert_eq!(written, 6 + 61);
    }

    #[test]
    fn callers_past_the_limit_wait_and_no_line_is_lost_or_torn() {
        const THREADS: usize = 4;
        const LINES: usize = 2_000;
        let out = Recorded::default();
        // A limit of a few lines, so callers keep finding the buffer full.
        let (writer, guard) =
            spawn("test-log", out.clone(), Duration::from_millis(1), 256).expect("thread starts");
        let (done, finished) = mpsc::channel();
        for t in 0..THREADS {
            let writer = writer.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..LINES {
                    line(&writer, &format!("thread {t} line {i:05}\n"));
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..THREADS {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("callers are never stuck waiting for room");
        }
        drop(guard);

        let all: Vec<u8> = out.writes().concat();
        let text = String::from_utf8(all).unwrap();
        let mut next = [0usize; THREADS];
        for l in text.lines() {
            let words: Vec<&str> = l.split(' ').collect();
            assert_eq!(words.len(), 4, "torn line {l:?}");
            let t: usize = words[1].parse().unwrap();
            let i: usize = words[3].parse().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines out of order or lost");
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
        assert!(out.writes().len() > 1, "a 256-byte limit makes many writes");
    }
}
