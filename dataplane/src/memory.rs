//! Process-wide memory settings shared by the server and the load generator.

use std::io;

/// Turns transparent huge pages (THP) off for this process (`PR_SET_THP_DISABLE`), for the
/// memory it faults in from then on: call it first thing in `main`. Child processes would
/// inherit the setting; neither binary starts any.
///
/// Where the kernel's THP mode is `always`, or `madvise` (mimalloc advises its arenas), the
/// allocator's memory comes in 2 MiB pages, each resident as a whole however little of it
/// is in use, and a peer's many small allocations spread over several. With THP off a server
/// at 1,000 players of a 1.5 Mbps stream held 127 MB instead of 151 MB, and an idle player
/// added 99 KiB of RSS instead of 115, with no more CPU per forwarded packet (BENCHMARKS.md,
/// "Transparent huge pages off").
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this
    // process's memory map; it reads and writes no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`).
pub fn transparent_huge_pages_disabled() -> io::Result<bool> {
    // SAFETY: as above; PR_GET_THP_DISABLE only reads the flag.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_for_the_process_once_disabled() {
        // The flag is per process and other tests do not depend on it.
        disable_transparent_huge_pages().expect("prctl(PR_SET_THP_DISABLE)");
        assert!(transparent_huge_pages_disabled().expect("prctl(PR_GET_THP_DISABLE)"));
    }
}
