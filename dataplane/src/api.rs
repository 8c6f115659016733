//! The data plane's contract with whoever drives it (the server's control plane, the relay,
//! the protocol client, the load generator): commands in, events out, both plain data.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::ids::{CoreId, PeerId, StreamId};
use crate::media::{Continuity, StreamMedia};
use crate::synth::{GeneratorStats, ProbeReport, SynthConfig};

/// How a data plane is laid out and how its peers behave.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// Number of cores (executors), each with its own UDP socket.
    pub cores: usize,
    /// Pin core `n` to CPU `n % cpus` (the server); unpinned for clients sharing a machine.
    pub pin: bool,
    /// Address the shared media sockets bind to.
    pub bind: IpAddr,
    /// Core `n` binds `media_port_base + n`; 0 picks ephemeral ports.
    pub media_port_base: u16,
    /// Addresses advertised as host candidates in answers (public IP, or interface addresses).
    pub candidate_ips: Vec<IpAddr>,
    /// A peer that has not connected (ICE + DTLS) within this time fails.
    pub connect_timeout: Duration,
    /// A receiving peer (publisher) that gets no RTP for this long fails.
    pub rtp_timeout: Duration,
    /// A connected peer whose ICE stays disconnected this long fails.
    pub ice_disconnect_grace: Duration,
    /// Keyframe requests towards one publisher are coalesced to at most one per interval
    /// while the last one is not answered by a keyframe.
    pub keyframe_min_interval: Duration,
    /// The interval once the last request was answered by a keyframe (shorter, so a player
    /// joining soon after another gets its own keyframe quickly; above the 300 ms within
    /// which Chrome's encoder ignores a repeated request).
    pub keyframe_answered_interval: Duration,
    /// New peers beyond this count on one core are refused.
    pub max_peers_per_core: usize,
    /// SO_RCVBUF / SO_SNDBUF of media sockets.
    pub socket_buffer: usize,
    /// Capacity of each cross-core ring, in packets.
    pub ring_capacity: usize,
    /// A quiet core (little media forwarded, every peer connected) reads its sockets and
    /// fires its timers on a 100 ms grid, to spare wake-ups (the server). Off for clients
    /// (tests, the load generator): their peers generate and measure media without
    /// forwarding any, and a measuring instrument must not wait.
    pub quiet_batching: bool,
    /// Media sockets get kernel receive timestamps (`SO_TIMESTAMPNS`), and a probe (a
    /// measuring player) takes a packet's latency up to its arrival at the socket, leaving
    /// out the time the packet then waited for its core. On for clients (tests, the load
    /// generator), whose many players share a core; off for the server, which measures none.
    pub arrival_timestamps: bool,
    /// Read the sockets of offering peers (clients' players, relays) on a sweep every this
    /// long (one `epoll_wait` per core), instead of one readiness wait per socket. Each
    /// socket's readiness wait is an io_uring poll, and each datagram arriving while one is
    /// armed makes the sender's CPU interrupt this one to run it: on loopback the server
    /// pays that, once per burst per player socket. A load generator with thousands of
    /// sockets sweeps (with `arrival_timestamps`, the latency it measures is unchanged);
    /// `None` (the server, whose relays must not wait, and the tests' clients) waits per
    /// socket.
    pub read_sweep: Option<Duration>,
    /// Players' media is sealed and sent by relaycast itself, with the SRTP keys of the
    /// player's DTLS handshake, instead of through the player's str0m `Rtc` packet by packet
    /// (see `direct`). str0m keeps ICE, DTLS, RTCP and a packet a second per track for its
    /// sender reports. Off: every packet goes through str0m, as before.
    pub direct_egress: bool,
    /// A peer that fails keeps answering [`Command::Query`] with its last report until it is
    /// closed ([`Command::Close`]), so a measuring client can still count what a player
    /// dropped by the server received and missed. On for clients (the load generator closes
    /// each peer it drops); off for the server, which closes no failed peer.
    pub keep_failed_reports: bool,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            cores: 1,
            pin: false,
            bind: IpAddr::from([127, 0, 0, 1]),
            media_port_base: 0,
            candidate_ips: Vec::new(),
            connect_timeout: Duration::from_secs(15),
            rtp_timeout: Duration::from_secs(10),
            ice_disconnect_grace: Duration::from_secs(5),
            keyframe_min_interval: Duration::from_millis(500),
            keyframe_answered_interval: Duration::from_millis(350),
            max_peers_per_core: 20_000,
            quiet_batching: false,
            arrival_timestamps: true,
            read_sweep: None,
            direct_egress: true,
            keep_failed_reports: false,
            socket_buffer: 4 << 20,
            ring_capacity: 4096,
        }
    }
}

/// What a peer connection does with media.
#[derive(Debug)]
pub enum Role {
    /// Receives a stream from its remote end and feeds the router: a browser publisher, or a
    /// pull relay. `continuity` carries where the stream's sequence numbers and timestamps
    /// left off, so a replacement source (relay reconnect) continues them.
    Ingest {
        stream: StreamId,
        continuity: Continuity,
    },
    /// Subscribes to a stream and sends it to its remote end: a player, or a push relay.
    /// `home` is the core whose router holds the stream's source.
    Egress {
        stream: StreamId,
        home: CoreId,
        media: StreamMedia,
        /// A relay feeding another server (a push relay here, or a pull relay's player on
        /// the origin): served before the core's players.
        relay: bool,
    },
    /// Sends synthetic media (the protocol client and the load generator).
    Generate(SynthConfig),
    /// Receives and measures media (the protocol client and the load generator).
    Probe,
}

/// A request to one core.
#[derive(Debug)]
pub enum Command {
    /// Build a server-side peer (ICE-lite, shared socket) from a remote offer; answers with
    /// [`Event::Sdp`] carrying the answer, or [`Event::Failed`].
    Accept {
        peer: PeerId,
        offer: String,
        role: Role,
    },
    /// Build a client-side peer (full ICE, controlling, its own socket) and make an offer;
    /// answers with [`Event::Sdp`] carrying the offer, or [`Event::Failed`].
    Offer { peer: PeerId, role: Role },
    /// Apply the remote answer to a peer built by [`Command::Offer`]; answers with
    /// [`Event::Negotiated`] or [`Event::Failed`].
    Answer { peer: PeerId, answer: String },
    /// Close a peer; answers with [`Event::Closed`].
    Close { peer: PeerId },
    /// Ask a stream's source for a keyframe (coalesced with other requests).
    RequestKeyframe { stream: StreamId },
    /// Report on one peer (probe and generator statistics).
    Query {
        peer: PeerId,
        reply: oneshot::Sender<Option<PeerReport>>,
    },
    /// Stop the core: every peer is dropped.
    Shutdown,
}

/// What a core reports back.
#[derive(Debug)]
pub enum Event {
    /// The local SDP of a new peer: the answer after [`Command::Accept`], the offer after
    /// [`Command::Offer`]. `media` is what the peer will carry.
    Sdp {
        peer: PeerId,
        sdp: String,
        media: StreamMedia,
    },
    /// The remote answer was applied; `media` is what was negotiated.
    Negotiated { peer: PeerId, media: StreamMedia },
    /// ICE and DTLS are up: media flows.
    Connected { peer: PeerId },
    /// The peer failed and is gone. For an ingest peer, where its stream left off.
    Failed {
        peer: PeerId,
        reason: PeerFailure,
        continuity: Option<Continuity>,
    },
    /// An ingest peer's video picture size, read from a keyframe: sent first and whenever
    /// it changes.
    Resolution {
        peer: PeerId,
        width: u32,
        height: u32,
    },
    /// The peer was closed on request. For an ingest peer, where its stream left off.
    Closed {
        peer: PeerId,
        continuity: Option<Continuity>,
    },
}

/// Why a peer failed. The control plane maps these to WCS's `info` strings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerFailure {
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("no common codecs")]
    NoCommonCodecs,
    #[error("ICE did not connect in time")]
    IceTimeout,
    #[error("ICE connection lost")]
    IceKeepAlive,
    #[error("DTLS failed: {0}")]
    Dtls(String),
    #[error("DTLS fingerprint mismatch")]
    DtlsFingerprint,
    #[error("no RTP received in time")]
    RtpActivity,
    #[error("too many peers on this core")]
    PeerLimit,
    #[error("socket error: {0}")]
    Socket(String),
    #[error("unknown peer")]
    UnknownPeer,
    #[error("internal error: {0}")]
    Internal(String),
}

/// A snapshot of one peer, for the protocol client and the load generator.
#[derive(Clone, Debug)]
pub struct PeerReport {
    pub peer: PeerId,
    pub core: CoreId,
    pub connected: bool,
    pub connected_at: Option<Instant>,
    /// The local address of the peer's socket and its selected remote, once known.
    pub local: Option<SocketAddr>,
    pub probe: Option<ProbeReport>,
    /// The probe's latency histogram (microseconds), to merge across peers.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
    pub generator: Option<GeneratorStats>,
    /// What RTCP and str0m's statistics say about the peer's link (relay metrics).
    pub link: LinkStats,
}

/// A peer's link as str0m last measured it (refreshed every 2 s once media flows).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkStats {
    /// Round-trip time from the last RTCP report that carried one (receiver reports for
    /// what this peer sends, XR DLRR or TWCC feedback for what it receives).
    pub rtt: Option<Duration>,
    /// Fraction of packets lost (0..1): what the remote reported losing of this peer's media
    /// and what this peer saw lost of the remote's, whichever is worse.
    pub loss: Option<f32>,
    /// Bits per second received and sent over the last statistics interval, every byte on
    /// the wire (RTP, RTCP, STUN, DTLS).
    pub bitrate_in: u64,
    pub bitrate_out: u64,
    /// When these figures were last refreshed.
    pub at: Option<Instant>,
}
