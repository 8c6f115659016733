//! Process limits. Every player costs the loadgen two descriptors (its peer's own UDP socket
//! and its signalling TCP connection), so 2,000 players need more than the usual soft limit
//! of 1,024 open files.

/// Descriptors per player: the peer's UDP socket and the WebSocket's TCP connection.
pub const FDS_PER_PLAYER: u64 = 2;
/// Descriptors the process needs besides its players (runtime, io_uring, core sockets).
pub const FDS_BASE: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to what `players` need (up to the hard limit); returns the
/// soft limit now in force, and whether it is enough.
pub fn raise_nofile(players: usize) -> std::io::Result<(u64, bool)> {
    let need = FDS_BASE + FDS_PER_PLAYER * players as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < need && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: need.max(limit.rlim_cur).min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((limit.rlim_cur, limit.rlim_cur >= need))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_up_to_what_is_needed() {
        let (soft, enough) = raise_nofile(10).unwrap();
        assert!(soft >= FDS_BASE || !enough);
    }
}
