//! Where the CPU went while measuring, from Linux's `/proc`: each CPU's
//! busy and stolen share (`/proc/stat`) and the CPU time of the server
//! processes named with `--server-process` (`/proc/<pid>/stat`). Taken
//! at the start and the end of the measured phase, so that the sign-ups
//! and the warm-up before it are not in the figures and a server's CPU
//! per request can be read off them.

use std::{collections::BTreeMap, time::Instant};

use serde::Serialize;

use crate::rss;

/// How one CPU spent the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuShare {
    /// Share of the time it ran anything (user, system, interrupts).
    pub busy: f64,
    /// Share of the time the hypervisor gave it to another guest.
    pub steal: f64,
}

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// Per CPU: busy, steal and all jiffies.
    cpus: BTreeMap<usize, (u64, u64, u64)>,
    /// Per named process: its CPU seconds so far.
    processes: BTreeMap<String, f64>,
}

impl Snapshot {
    /// Reads the counters now; what `/proc` does not say (another OS, a
    /// process that has exited) is left out.
    pub fn take(processes: &[(String, u32)]) -> Snapshot {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Snapshot {
            at: Instant::now(),
            cpus: cpu_times(&stat),
            processes: processes
                .iter()
                .filter_map(|(name, pid)| Some((name.clone(), rss::cpu_seconds_of(*pid)?)))
                .collect(),
        }
    }

    /// Each CPU's share of busy and stolen time since `earlier`.
    pub fn cpus_since(&self, earlier: &Snapshot) -> BTreeMap<String, CpuShare> {
        self.cpus
            .iter()
            .filter_map(|(cpu, &(busy, steal, total))| {
                let &(busy0, steal0, total0) = earlier.cpus.get(cpu)?;
                let total = total.checked_sub(total0).filter(|&t| t > 0)? as f64;
                let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / total;
                Some((
                    cpu.to_string(),
                    CpuShare {
                        busy: round(share(busy, busy0), 3),
                        steal: round(share(steal, steal0), 4),
                    },
                ))
            })
            .collect()
    }

    /// Each named process's CPU seconds per second since `earlier`.
    pub fn processes_since(&self, earlier: &Snapshot) -> BTreeMap<String, f64> {
        let seconds = (self.at - earlier.at).as_secs_f64().max(f64::EPSILON);
        self.processes
            .iter()
            .filter_map(|(name, now)| {
                let then = earlier.processes.get(name)?;
                Some((name.clone(), round((now - then) / seconds, 3)))
            })
            .collect()
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// Per CPU, (busy, steal, total) jiffies from the text of `/proc/stat`.
fn cpu_times(stat: &str) -> BTreeMap<usize, (u64, u64, u64)> {
    stat.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let cpu = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            // user nice system idle iowait irq softirq steal (guest time is
            // already in user).
            let v: Vec<u64> = fields
                .take(8)
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
                return None;
            };
            let busy = user + nice + system + irq + softirq;
            Some((cpu, (busy, steal, busy + idle + iowait + steal)))
        })
        .collect()
}

/// Parses `NAME=PID` (`--server-process`).
pub fn parse_named_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{text:?}: {pid:?} is not a process id"))?;
    if name.is_empty() {
        return Err(format!("{text:?}: the name is empty"));
    }
    Ok((name.to_owned(), pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_from_the_difference_of_two_readings() {
        let before = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                      cpu0 5 0 5 50 0 0 0 0 0 0\n\
                      cpu1 5 0 5 50 0 0 0 0 0 0\n";
        // cpu0: 60 of 100 jiffies busy, 10 stolen; cpu1: idle throughout.
        let after = "cpu  70 0 10 200 0 0 0 10 0 0\n\
                     cpu0 55 0 15 80 0 0 0 10 0 0\n\
                     cpu1 5 0 5 150 0 0 0 0 0 0\n";
        let snapshot = |text: &str| Snapshot {
            at: Instant::now(),
            cpus: cpu_times(text),
            processes: BTreeMap::new(),
        };
        let shares = snapshot(after).cpus_since(&snapshot(before));
        assert_eq!(shares.len(), 2, "the total line is not a CPU");
        assert_eq!(
            shares["0"],
            CpuShare {
                busy: 0.6,
                steal: 0.1
            }
        );
        assert_eq!(
            shares["1"],
            CpuShare {
                busy: 0.0,
                steal: 0.0
            }
        );
    }

    #[test]
    fn a_busy_process_is_seen_busy() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let me = [("me".to_owned(), std::process::id())];
        let before = Snapshot::take(&me);
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let after = Snapshot::take(&me);
        let used = after.processes_since(&before)["me"];
        assert!(used > 0.0, "{used} CPU seconds per second while spinning");
        assert!(
            !after.cpus_since(&before).is_empty(),
            "no CPU in /proc/stat"
        );
    }

    #[test]
    fn named_pids_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_named_pid("user-service=4242"),
            Ok(("user-service".to_owned(), 4242))
        );
        assert!(
            parse_named_pid("user-service")
                .unwrap_err()
                .contains("NAME=PID")
        );
        assert!(
            parse_named_pid("x=abc")
                .unwrap_err()
                .contains("not a process id")
        );
        assert!(parse_named_pid("=12").unwrap_err().contains("empty"));
    }
}
