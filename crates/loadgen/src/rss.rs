//! Resident memory of a process, from `/proc/<pid>/status` (Linux).

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
}
