//! Accepting TCP connections when accepts fail, chiefly because the process is out of file
//! descriptors (`EMFILE`): the pending connections wait in the listen backlog, and the loop
//! tries again a little later instead of spinning, with one log line for the streak of
//! failures instead of one per try.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The wait between a failed accept and the next try.
const RETRY: Duration = Duration::from_millis(50);
/// While accepts keep failing, one more line this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A listener of the signalling or REST server.
pub struct Listener {
    inner: TcpListener,
    /// `signalling` or `REST`, for the log.
    name: &'static str,
    failing: Option<Streak>,
}

/// Accepts failing since `since`: how many, and when the last line about them was logged.
struct Streak {
    since: Instant,
    failures: u64,
    reported: Instant,
}

impl Listener {
    pub fn new(inner: TcpListener, name: &'static str) -> Listener {
        Listener {
            inner,
            name,
            failing: None,
        }
    }

    /// The next connection; waits through failed accepts.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => {
                    if let Some(streak) = self.failing.take() {
                        tracing::info!(
                            listener = self.name,
                            failures = streak.failures,
                            after_ms = streak.since.elapsed().as_millis() as u64,
                            "accepting connections again"
                        );
                    }
                    return accepted;
                }
                Err(e) => {
                    let now = Instant::now();
                    match &mut self.failing {
                        None => {
                            tracing::warn!(
                                listener = self.name,
                                error = %e,
                                "accept failed: new connections wait until it succeeds \
                                 (for too many open files, raise the open-file limit)"
                            );
                            self.failing = Some(Streak {
                                since: now,
                                failures: 1,
                                reported: now,
                            });
                        }
                        Some(streak) => {
                            streak.failures += 1;
                            if now.duration_since(streak.reported) >= REPORT_EVERY {
                                tracing::warn!(
                                    listener = self.name,
                                    error = %e,
                                    failures = streak.failures,
                                    since_ms = now.duration_since(streak.since).as_millis() as u64,
                                    "accepts still failing"
                                );
                                streak.reported = now;
                            }
                        }
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
