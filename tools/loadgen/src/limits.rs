//! Process limits. Every player costs the loadgen two descriptors (its peer's own UDP socket
//! and its signalling TCP connection), so 2,000 players need more than the usual soft limit
//! of 1,024 open files.

use relaycast_dataplane::process::raise_open_files;

/// Descriptors per player: the peer's UDP socket and the WebSocket's TCP connection.
pub const FDS_PER_PLAYER: u64 = 2;
/// Descriptors the process needs besides its players (runtime, io_uring, core sockets).
pub const FDS_BASE: u64 = 256;

/// Descriptors `players` need.
pub fn needed(players: usize) -> u64 {
    FDS_BASE + FDS_PER_PLAYER * players as u64
}

/// Raises the soft RLIMIT_NOFILE to what `players` need (up to the hard limit); returns the
/// soft limit now in force, and whether it is enough.
pub fn raise_nofile(players: usize) -> std::io::Result<(u64, bool)> {
    let need = needed(players);
    let limit = raise_open_files(Some(need))?;
    Ok((limit.soft, limit.soft >= need))
}
