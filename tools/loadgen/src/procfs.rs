//! What /proc says about a process: CPU time (user + system) and resident memory. The server's
//! CPU per forwarded packet is the difference of two samples divided by the packets it sent.

use std::time::Instant;

/// One reading of a process's counters.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU time, in microseconds (clock-tick resolution).
    pub cpu_us: u64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Why a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {pid} is not running (reading /proc/{pid}/{file}: {source})")]
    Missing {
        pid: u32,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format { pid: u32, file: &'static str },
}

/// Samples process `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> Result<ProcSample, ProcError> {
    let at = Instant::now();
    let (dir, pid_num) = match pid {
        Some(p) => (p.to_string(), p),
        None => ("self".to_owned(), std::process::id()),
    };
    let read = |file: &'static str| {
        std::fs::read_to_string(format!("/proc/{dir}/{file}")).map_err(|source| {
            ProcError::Missing {
                pid: pid_num,
                file,
                source,
            }
        })
    };
    let stat = read("stat")?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or(ProcError::Format {
        pid: pid_num,
        file: "stat",
    })?;
    let status = read("status")?;
    let rss_kib = parse_status_kib(&status, "VmRSS:").ok_or(ProcError::Format {
        pid: pid_num,
        file: "status",
    })?;
    Ok(ProcSample {
        at,
        cpu_us: ticks * 1_000_000 / clock_ticks_per_second(),
        rss_bytes: rss_kib * 1024,
    })
}

/// CPU used between two samples, in microseconds, and as a share of one core (percent).
pub fn cpu_between(a: &ProcSample, b: &ProcSample) -> (u64, f64) {
    let used = b.cpu_us.saturating_sub(a.cpu_us);
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    let pct = if wall > 0.0 {
        used as f64 / 1e6 / wall * 100.0
    } else {
        0.0
    };
    (used, pct)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat, in clock ticks. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "1234 (rc core) 0) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    5 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn status_rss() {
        let status = "Name:\trelaycast\nVmPeak:\t  9000 kB\nVmRSS:\t  4321 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(4321));
    }

    #[test]
    fn this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(sample(Some(u32::MAX - 1)).is_err());
    }
}
