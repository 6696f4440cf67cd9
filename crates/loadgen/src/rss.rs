//! Resident memory of a process, from `/proc/<pid>/status`, and the CPU
//! time of the load generator or another process, from `/proc/.../stat`
//! (Linux).

/// The resident set size of `pid` in KiB, or `None` where `/proc` does not
/// say (another OS, a process that exited).
pub fn resident_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The most `pid` has been resident since it started (its high-water
/// mark), in KiB: what a short burst of allocation left, even once freed.
pub fn peak_resident_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The CPU time this process has used so far (user + system, every
/// thread), from `/proc/self/stat` (Linux; `None` elsewhere). The kernel
/// reports it in USER_HZ ticks, which Linux fixes at 100 per second.
pub fn own_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

/// The CPU time process `pid` has used so far, as [`own_cpu_seconds`].
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. follow; utime and stime are fields 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The CPUs this process may run on (its affinity: one under `taskset -c 1`).
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_resident_memory_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            let kib = resident_kib(std::process::id()).expect("VmRSS");
            assert!(kib > 100, "{kib} KiB");
            let peak = peak_resident_kib(std::process::id()).expect("VmHWM");
            assert!(peak >= kib, "peak {peak} KiB, now {kib} KiB");
        }
    }

    #[test]
    fn our_own_cpu_time_grows_as_we_compute() {
        if cfg!(target_os = "linux") {
            let before = own_cpu_seconds().expect("utime and stime");
            let started = std::time::Instant::now();
            let mut x = 0u64;
            while own_cpu_seconds().expect("readable") < before + 0.05 {
                for i in 0..100_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "CPU time did not grow"
                );
            }
            assert!(usable_cpus() >= 1);
        }
    }
}
