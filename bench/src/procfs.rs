//! What the kernel says about processes, threads and the machine, read from
//! `/proc`: per-thread CPU time (`schedstat`, nanoseconds, kernel work
//! included) and context switches, resident memory, per-CPU time split
//! (softirq included), UDP socket memory, and the machine's description.
//!
//! Leaves out: hardware counters (`perf` may be missing or forbidden; the
//! instruction counts come from callgrind instead, see [`crate::cgrind`]).

use std::path::Path;

use mediagw_dataplane::net::monotonic_now;
use mediagw_dataplane::units::Nanos;
use serde::Serialize;

/// The harness's clock: CLOCK_MONOTONIC, the clock the dataplane converts
/// kernel receive timestamps to.
pub fn now() -> Nanos {
    monotonic_now()
}

/// The calling thread's id (from `/proc/thread-self`).
pub fn current_tid() -> Option<i32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// One thread's CPU time and context switches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ThreadCpu {
    /// Thread id.
    pub tid: i32,
    /// Its name (`comm`).
    pub name: String,
    /// Time on a CPU, ns (user and kernel, from `schedstat`).
    pub cpu_ns: u64,
    /// Voluntary context switches: the thread slept and was woken.
    pub voluntary: u64,
    /// Involuntary context switches: preempted.
    pub involuntary: u64,
}

impl ThreadCpu {
    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            tid: self.tid,
            name: self.name.clone(),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time and switches of thread `tid` of process `pid`.
pub fn thread_cpu(pid: u32, tid: i32) -> Option<ThreadCpu> {
    let dir = format!("/proc/{pid}/task/{tid}");
    let sched = read(format!("{dir}/schedstat"))?;
    let cpu_ns = sched.split_whitespace().next()?.parse().ok()?;
    let status = read(format!("{dir}/status"))?;
    Some(ThreadCpu {
        tid,
        name: read(format!("{dir}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu_ns,
        voluntary: status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0),
        involuntary: status_field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0),
    })
}

/// Every thread of `pid`.
pub fn threads(pid: u32) -> Vec<ThreadCpu> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<ThreadCpu> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| thread_cpu(pid, tid))
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// Threads of `pid` whose name starts with `prefix`.
pub fn threads_named(pid: u32, prefix: &str) -> Vec<ThreadCpu> {
    threads(pid)
        .into_iter()
        .filter(|t| t.name.starts_with(prefix))
        .collect()
}

/// Sum of CPU time over `threads`, and of their switches.
pub fn total(threads: &[ThreadCpu]) -> ThreadCpu {
    let mut t = ThreadCpu::default();
    for x in threads {
        t.cpu_ns += x.cpu_ns;
        t.voluntary += x.voluntary;
        t.involuntary += x.involuntary;
    }
    t
}

/// CPU time of every thread of the process, ns (utime + stime from
/// `/proc/PID/stat`, clock ticks: 10 ms resolution).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = read(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: split after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Resident memory of `pid`, bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = read(format!("/proc/{pid}/status"))?;
    status_field(&status, "VmRSS:").map(|kb| kb * 1024)
}

/// One CPU's time split, in clock ticks (`/proc/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuTimes {
    /// User (with nice).
    pub user: u64,
    /// Kernel, outside interrupts.
    pub system: u64,
    /// Idle (with iowait).
    pub idle: u64,
    /// Hard interrupts.
    pub irq: u64,
    /// Soft interrupts: on loopback, the receive path of every datagram.
    pub softirq: u64,
    /// Stolen by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    /// `self - earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    /// Ticks in all states.
    pub fn sum(&self) -> u64 {
        self.user + self.system + self.idle + self.irq + self.softirq + self.steal
    }

    /// Share of the time spent busy (not idle, not stolen), 0..=1.
    pub fn busy_share(&self) -> f64 {
        let s = self.sum();
        if s == 0 {
            return 0.0;
        }
        (s - self.idle - self.steal) as f64 / s as f64
    }

    /// Share of the time in softirq, 0..=1.
    pub fn softirq_share(&self) -> f64 {
        let s = self.sum();
        if s == 0 {
            return 0.0;
        }
        self.softirq as f64 / s as f64
    }
}

/// Per-CPU time splits, CPU 0 first.
pub fn cpu_times() -> Vec<CpuTimes> {
    let Some(stat) = read("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let g = |i: usize| v.get(i).copied().unwrap_or(0);
            CpuTimes {
                user: g(0) + g(1),
                system: g(2),
                idle: g(3) + g(4),
                irq: g(5),
                softirq: g(6),
                steal: g(7),
            }
        })
        .collect()
}

/// Pages of memory held by UDP sockets machine-wide (`/proc/net/sockstat`).
pub fn udp_mem_pages() -> Option<u64> {
    let s = read("/proc/net/sockstat")?;
    let line = s.lines().find(|l| l.starts_with("UDP:"))?;
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Microseconds, since boot, during which some runnable task waited for a
/// CPU (`/proc/pressure/cpu`, "some" total): its growth over a window,
/// divided by the window, is the share of time the machine was contended.
pub fn cpu_pressure_us() -> Option<u64> {
    let s = read("/proc/pressure/cpu")?;
    let line = s.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    read("/proc/loadavg")
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs (`nproc`).
    pub nproc: usize,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPU model name.
    pub cpu_model: String,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Clock source of the kernel (tsc, kvm-clock, ...).
    pub clocksource: String,
    /// Host name.
    pub hostname: String,
}

impl Machine {
    /// Reads it from `/proc` and `/sys`.
    pub fn probe() -> Self {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_kb = read("/proc/meminfo")
            .and_then(|m| status_field(&m, "MemTotal:"))
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu_model,
            mem_mib: mem_kb / 1024,
            clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            hostname: read("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// Now as UTC `YYYY-MM-DD HH:MM:SS`, for reports.
pub fn utc_now() -> String {
    #[allow(clippy::disallowed_methods)] // a driver: the report's date
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    utc_string(secs)
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS` (proleptic Gregorian).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_string(0), "1970-01-01 00:00:00");
        assert_eq!(utc_string(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_string(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn this_thread_is_visible() {
        let tid = current_tid().expect("tid");
        let me = thread_cpu(std::process::id(), tid).expect("own thread");
        assert_eq!(me.tid, tid);
        // Burn some CPU: the counter must move.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let later = thread_cpu(std::process::id(), tid).expect("own thread");
        assert!(later.cpu_ns > me.cpu_ns);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(!cpu_times().is_empty());
    }
}
