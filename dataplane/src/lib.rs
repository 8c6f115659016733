//! relaycast's data plane: one glommio executor per core, each owning a UDP socket and the
//! str0m peer connections placed on it, forwarding RTP without locks.
//!
//! How a datagram flows:
//! - [`core`] reads the socket in batches and asks [`demux`] which peer owns each datagram
//!   (by source address, or by ICE username for a STUN request from a new address);
//! - [`peer`] feeds it to that peer's str0m `Rtc`, which decrypts it once; an ingest peer
//!   turns RTP into a [`media::MediaPacket`] in its stream's sequence space;
//! - [`router`] says who subscribes to the stream: this core's egress peers get the packet
//!   directly (each re-encrypts for its remote: [`direct`] writes the header and [`srtp`]
//!   seals it with the keys of the peer's DTLS handshake, without a pass through str0m),
//!   other cores get it through [`mesh`]'s lock-free rings, carrying the shared payload
//!   without a copy;
//! - [`udp`] sends everything queued with one `sendmmsg` per batch.
//!
//! [`timers`] wakes only the peers that are due; [`api`] is the contract with the control
//! plane (commands in, events out); [`synth`] makes and measures synthetic media for the
//! protocol client and the load generator. See docs/threading.md.

pub mod api;
pub mod core;
pub mod demux;
pub mod direct;
pub mod ids;
pub mod media;
pub mod memory;
pub mod mesh;
pub mod peer;
pub mod process;
pub mod router;
pub mod srtp;
pub mod synth;
pub mod timers;
pub mod udp;

pub use api::{Command, DataPlaneConfig, Event, LinkStats, PeerFailure, PeerReport, Role};
pub use core::{CoreCounters, CoreStopped, DataPlane, StartError};
pub use ids::{CoreId, PeerId, StreamId};
pub use media::{Continuity, StreamMedia};
