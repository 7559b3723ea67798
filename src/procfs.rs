//! What `/proc` says about a process: its resident memory (the
//! PassengerMemoryLimit check, `passenger-status`), its CPU time and its age.

use std::time::Duration;

use nix::unistd::{SysconfVar, sysconf};

/// The process's resident set size in KiB (`/proc/PID/statm`).
pub fn resident_kib(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = u64::try_from(sysconf(SysconfVar::PAGE_SIZE).ok().flatten()?).ok()?;
    Some(pages * page_size / 1024)
}

/// The CPU time (user + system) the process has used (`/proc/PID/stat`).
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let utime = stat_field(pid, 11)?;
    let stime = stat_field(pid, 12)?;
    ticks(utime + stime)
}

/// The process's real uid and gid (`/proc/PID/status`).
pub fn owner(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let first = |key: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// How long ago the process started (`/proc/PID/stat` against `/proc/uptime`).
pub fn age(pid: i32) -> Option<Duration> {
    let started = ticks(stat_field(pid, 19)?)?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(uptime).saturating_sub(started))
}

/// A numeric field of `/proc/PID/stat`, counted from the state (index 0).
/// The command name before it may hold spaces and parentheses, so the
/// fields start after the last ')'.
fn stat_field(pid: i32, index: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(index)?
        .parse()
        .ok()
}

/// Clock ticks as a duration.
fn ticks(n: u64) -> Option<Duration> {
    let hz = u64::try_from(sysconf(SysconfVar::CLK_TCK).ok().flatten()?).ok()?;
    Some(Duration::from_millis(n * 1000 / hz.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id() as i32;
        assert!(resident_kib(me).is_some_and(|kib| kib > 0));
        // Burn a little CPU so the count cannot stay at zero ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_time(me).is_some_and(|t| t > Duration::ZERO));
        // This test process started at most a few minutes ago, not never.
        let age = age(me).unwrap();
        assert!(age < Duration::from_secs(3600), "{age:?}");
        assert_eq!(resident_kib(-1), None);
        let (uid, gid) = owner(me).unwrap();
        assert_eq!(uid, nix::unistd::getuid().as_raw());
        assert_eq!(gid, nix::unistd::getgid().as_raw());
    }
}
