//! relaycast's benchmarks.
//!
//! - [`limit`]: the machine's physical limit for forwarding (sendto, sendmmsg, UDP GSO,
//!   AES-GCM and AES-CM+HMAC-SHA1 seals, loopback latency), shared by the criterion bench
//!   and the fan-out driver so ratios compare figures from the same run;
//! - [`pair`]: subscribers wired in memory (egress peer <-> probe peer) for the forwarding
//!   micro-benchmark;
//! - [`report`]: BENCHMARKS.md tables and PNG plots from a fan-out run;
//! - `src/bin/fanout.rs`: the fan-out driver (builds, starts servers, ramps the loadgen);
//! - `benches/*.rs`: criterion benches (forward, demux, signalling, limit).

pub mod limit;
pub mod pair;
pub mod report;
