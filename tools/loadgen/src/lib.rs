//! relaycast-loadgen: the traffic generator. Real WebRTC publishers and players (ICE, DTLS,
//! SRTP through the data plane's own client peers) driven over WCS signalling by the
//! project's protocol client.
//!
//! - [`cli`]: subcommands and options;
//! - [`scenario`]: publish, play, fanout, relay-chain and soak, each ending in a [`Summary`];
//! - [`fleet`]: joining players at a rate, reading their reports, window totals;
//! - [`summary`]: the figures and the JSON schema;
//! - [`procfs`]: the server's CPU and memory from /proc;
//! - [`rest`]: REST calls (relay set-up);
//! - [`progress`]: the live progress line;
//! - [`limits`]: the file-descriptor limit (one UDP socket and one TCP connection per peer).

pub mod cli;
pub mod fleet;
pub mod limits;
pub mod procfs;
pub mod progress;
pub mod rest;
pub mod scenario;
pub mod summary;

pub use scenario::RunError;
pub use summary::Summary;
