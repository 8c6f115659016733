//! Process-wide settings shared by the server and the load generator: resource limits, the
//! CPUs to pin to, whether to colour the log.

use std::io;
use std::io::IsTerminal;

/// Log lines are coloured only for a person at a terminal: a file, a pipe or the journal gets
/// plain text, and `NO_COLOR` (any value but empty) turns colours off everywhere.
pub fn colour_logs() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A resource limit before and after [`raise_open_files`] or [`raise_locked_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit, the most the soft one can be raised to without privilege.
    pub hard: u64,
}

/// Raises the soft open-file limit to `want`, or to the hard limit with `None`; never above
/// the hard limit, never lower than it was. Every signalling connection, and every peer of
/// the load generator, holds a descriptor, and the usual soft limit of 1,024 would stop a
/// server at about a thousand players (connections then wait unaccepted). Raising the soft
/// limit to the hard one needs no privilege; the hard one is the operator's (`ulimit -Hn`,
/// `LimitNOFILE=` in a systemd unit).
pub fn raise_open_files(want: Option<u64>) -> io::Result<Limit> {
    raise(libc::RLIMIT_NOFILE, want)
}

/// Raises the soft locked-memory limit to the hard one: each core's io_uring registers
/// buffers that count against it (`ulimit -l`, `LimitMEMLOCK=` in a systemd unit).
pub fn raise_locked_memory() -> io::Result<Limit> {
    raise(libc::RLIMIT_MEMLOCK, None)
}

fn raise(resource: libc::__rlimit_resource_t, want: Option<u64>) -> io::Result<Limit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let target = want.unwrap_or(limit.rlim_max).min(limit.rlim_max);
    if target > before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising a soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(resource, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(Limit {
        before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a container's cpuset
/// left it), in order. The data plane pins its cores to these: CPU numbers counted from 0
/// would put a server started with `taskset -c 2,3` on CPUs 0 and 1.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity writes into the set
    // we own, of the size we pass.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
    // SAFETY: CPU_ISSET reads a bit of the set we own, below CPU_SETSIZE.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_what_is_asked_and_no_further_than_the_hard_one() {
        // No other test of this crate changes the open-file limit (under `cargo test` they
        // share a process), and it only ever goes up.
        let now = raise_open_files(Some(0)).unwrap();
        assert_eq!(now.soft, now.before, "a lower want changes nothing");
        let asked = (now.soft + 1).min(now.hard);
        let raised = raise_open_files(Some(asked)).unwrap();
        assert_eq!(raised.soft, asked);
        let all = raise_open_files(None).unwrap();
        assert_eq!(all.soft, all.hard);
        let beyond = raise_open_files(Some(u64::MAX)).unwrap();
        assert_eq!(beyond.soft, beyond.hard);
    }

    #[test]
    fn the_allowed_cpus_include_the_one_running_this() {
        let cpus = allowed_cpus().unwrap();
        // SAFETY: sched_getcpu takes no arguments.
        let here = unsafe { libc::sched_getcpu() };
        assert!(
            cpus.contains(&usize::try_from(here).unwrap()),
            "{cpus:?} {here}"
        );
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn locked_memory_goes_up_to_the_hard_limit() {
        let limit = raise_locked_memory().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.soft >= limit.before);
    }
}
