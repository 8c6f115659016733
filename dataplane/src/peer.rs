//! One peer connection: a str0m `Rtc` in RTP mode plus what relaycast does with its media
//! (ingest into a stream, egress from a stream, synthetic generation, measurement). SDP is
//! applied here, on the core that owns the peer. [`Peer::drive`] is the one function that
//! drains an `Rtc` after every mutation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::rtcp::{Nack, Rtcp};
use str0m::rtp::{Extension, ExtensionMap, RawPacket, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input, Output, Rtc, RtcConfig};
use str0m::{RtcError, error::SdpError};

use crate::api::{DataPlaneConfig, LinkStats, PeerFailure, PeerReport, Role};
use crate::direct::{self, ExtIds, HeaderFields, KeySlot, MAX_HEADER, MidBytes};
use crate::ids::{CoreId, PeerId, StreamId};
use crate::media::{
    Continuity, MediaExt, MediaPacket, StreamMedia, TrackRewriter, choose_ingest_codecs,
    offered_kinds, video_resolution,
};
use crate::srtp::SrtpSender;
use crate::synth::{Generator, Probe, SynthConfig, SynthPacket, VideoCodec, unix_micros};
use crate::udp::{Datagram, SendBatch};

/// What happened inside a peer that the core must act on.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up.
    Connected,
    /// A packet of the ingested stream, already in the stream's sequence space.
    Media(MediaPacket),
    /// The remote (a player) asked for a keyframe.
    KeyframeRequest(KeyframeRequestKind),
    /// NACKed packets since the last report: `received` from the remote (a player asking for
    /// retransmissions), `sent` to it (this peer asking a publisher).
    Nacks { received: u64, sent: u64 },
    /// A keyframe of the ingested video began (VP8 and H264, where its header is read).
    Keyframe,
    /// The ingested video's picture size changed (read from a keyframe).
    Resolution { width: u32, height: u32 },
    /// The remote (a player on the direct egress path) NACKed these video packets, given in
    /// the stream's sequence space: the core resends them from its history.
    Resend(Vec<u64>),
}

/// Everything a new peer needs from its core.
pub struct PeerSetup<'a> {
    pub core: CoreId,
    pub now: Instant,
    pub config: &'a DataPlaneConfig,
    pub cert: &'a DtlsCert,
    /// Host candidates: the shared socket's advertised addresses for server peers, the
    /// dedicated socket's addresses for client peers.
    pub candidates: &'a [SocketAddr],
}

/// Turns str0m's statistics events into a peer's [`LinkStats`]. Every interval str0m
/// reports the peer as a whole first, then each media line: the interval starts from the
/// peer's own figures and the media lines refine them (the worst loss, the latest RTT).
#[derive(Debug, Default)]
struct LinkMeter {
    stats: LinkStats,
    /// When the last peer statistics came, and the byte totals (received, sent) then.
    last_bytes: Option<(Instant, u64, u64)>,
}

impl LinkMeter {
    fn on_peer(
        &mut self,
        at: Instant,
        (rx, tx): (u64, u64),
        rtt: Option<std::time::Duration>,
        losses: [Option<f32>; 2],
    ) {
        if let Some((last_at, last_rx, last_tx)) = self.last_bytes {
            let secs = at.saturating_duration_since(last_at).as_secs_f64();
            if secs > 0.0 {
                let rate = |now: u64, last: u64| {
                    (now.saturating_sub(last) as f64 * 8.0 / secs).round() as u64
                };
                self.stats.bitrate_in = rate(rx, last_rx);
                self.stats.bitrate_out = rate(tx, last_tx);
                // Reported from the second statistics on, when a rate exists.
                self.stats.at = Some(at);
            }
        }
        self.last_bytes = Some((at, rx, tx));
        self.stats.rtt = rtt.or(self.stats.rtt);
        self.stats.loss = None;
        for loss in losses {
            self.on_media(None, loss);
        }
    }

    fn on_media(&mut self, rtt: Option<std::time::Duration>, loss: Option<f32>) {
        if rtt.is_some() {
            self.stats.rtt = rtt;
        }
        if let Some(loss) = loss.filter(|l| l.is_finite()) {
            let loss = loss.clamp(0.0, 1.0);
            self.stats.loss = Some(self.stats.loss.map_or(loss, |l| l.max(loss)));
        }
    }
}

pub struct Peer {
    pub id: PeerId,
    rtc: Rtc,
    kind: PeerKind,
    /// A client-side peer (offerer) owns a dedicated socket; a server-side one shares the
    /// core's socket.
    pub dedicated: bool,
    /// Listed by its core to be driven at the end of the current batch (so a peer written
    /// to several times in one batch is listed once).
    pub listed: bool,
    /// The instant the core's timer heap holds for this peer, if any: kept by the core
    /// beside the heap, so that re-arming a peer for a later instant, as every drive does,
    /// costs no lookup in the heap's map.
    pub armed: Option<Instant>,
    core: CoreId,
    created: Instant,
    connected_at: Option<Instant>,
    ice_lost_since: Option<Instant>,
    remote_closed_at: Option<Instant>,
    last_media: Instant,
    rtc_deadline: Instant,
    /// Kernel arrival time of the datagram being received (see [`Peer::receive`]).
    rx_arrival_unix_micros: Option<u64>,
    pending: Option<SdpPendingOffer>,
    mids: Vec<(Mid, MediaKind)>,
    limits: Limits,
    local: Option<SocketAddr>,
    /// Where str0m sends DTLS and SRTP (its ICE-nominated pair: source, destination), which
    /// the direct egress path sends to as well.
    media_path: Option<(SocketAddr, SocketAddr)>,
    /// The SRTP keys of this peer's DTLS handshake, once done (see `direct`).
    keys: Arc<KeySlot>,
    /// Bytes sent on the direct egress path, which str0m's statistics do not count.
    direct_bytes: u64,
    /// NACK totals str0m last reported, per (mid, egress), to turn them into increments.
    nack_totals: Vec<(Mid, bool, u64)>,
    link: LinkMeter,
}

/// How often str0m reports a peer's statistics (NACK counts for the metrics).
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Copy)]
struct Limits {
    connect: std::time::Duration,
    rtp: std::time::Duration,
    ice_grace: std::time::Duration,
}

// Egress is the largest and by far the most common kind (every player), and a `Peer` is
// boxed by its core already: boxing it again would only add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum PeerKind {
    Ingest(Ingest),
    Egress(Egress),
    Generate(Box<Generate>),
    Probe(Box<Probe>),
}

struct Ingest {
    stream: StreamId,
    previous: Continuity,
    tracks: Vec<IngestTrack>,
}

struct IngestTrack {
    mid: Mid,
    kind: MediaKind,
    pt: Pt,
    codec: Codec,
    rewriter: TrackRewriter,
    /// The last picture size a keyframe announced (video).
    resolution: Option<(u32, u32)>,
}

struct Egress {
    stream: StreamId,
    media: StreamMedia,
    audio: Option<EgressTrack>,
    video: Option<EgressTrack>,
    direct: DirectState,
}

/// Whether a player's packets take the direct egress path, decided at its first packet.
enum DirectState {
    Undecided,
    /// Every packet goes through str0m (disabled, or something the path needs is missing).
    Off,
    On(Box<Direct>),
}

struct Direct {
    srtp: SrtpSender,
    /// Written since the last drive, sealed and queued in order by the next one (so that a
    /// player's packets stay together in the send queue, for GSO).
    pending: Vec<Pending>,
    /// Scratch for an RTX payload (the original sequence number, then the payload).
    rtx_payload: Vec<u8>,
}

struct Pending {
    packet: MediaPacket,
    /// The player's sequence number for it.
    seq: u64,
    /// A retransmission asked for by a NACK.
    resend: bool,
    /// Its sealed length, set by the drive that sends it (0: it does not take the direct path).
    len: usize,
    /// Bytes of RTP padding it gets (see [`gso_padding`]).
    padding: u8,
}

impl Pending {
    fn new(packet: &MediaPacket, seq: u64, resend: bool) -> Pending {
        Pending {
            packet: packet.clone(),
            seq,
            resend,
            len: 0,
            padding: 0,
        }
    }
}

/// The most RTP padding a player's packet gets so that a run of its packets of sizes this
/// close leaves as one GSO message, whose datagrams must all have one size but the last,
/// which may be shorter. libwebrtc splits a frame into packets one byte apart in size, the
/// larger ones last, and a header extension on some of them adds a few bytes more.
const MAX_GSO_PADDING: usize = 16;

/// Sets the RTP padding of packets queued in this order to one player, from their sealed
/// lengths: each run of packets whose lengths are within [`MAX_GSO_PADDING`] of each other
/// is padded to the run's largest, except the run's last packet, which GSO lets be
/// shorter. A packet of length 0 (not sealed here) ends a run.
fn gso_padding(pending: &mut [Pending]) {
    let mut start = 0;
    while start < pending.len() {
        let first = pending[start].len;
        pending[start].padding = 0;
        if first == 0 {
            start += 1;
            continue;
        }
        let (mut lo, mut hi, mut end) = (first, first, start + 1);
        while let Some(next) = pending.get(end).map(|p| p.len).filter(|l| *l > 0) {
            let (l, h) = (lo.min(next), hi.max(next));
            if h - l > MAX_GSO_PADDING {
                break;
            }
            (lo, hi, end) = (l, h, end + 1);
        }
        for p in &mut pending[start..end - 1] {
            p.padding = (hi - p.len) as u8;
        }
        pending[end - 1].padding = 0;
        start = end;
    }
}

/// Bytes an RTX packet puts before the original payload: its sequence number (RFC 4588).
const RTX_OSN_LEN: usize = 2;

/// How often a track's packet goes through str0m instead of the direct path, so its sender
/// reports map RTP time to wall-clock time from a recent packet (a player synchronises audio
/// and video with them).
const SENDER_REPORT_REFRESH: Duration = Duration::from_secs(1);

struct EgressTrack {
    ssrc: Ssrc,
    pt: Pt,
    /// Added to the stream's sequence number to get this subscriber's, fixed by the first
    /// packet it receives so every subscriber starts below 2^16 (no ROC signalling needed).
    seq_offset: Option<i64>,
    /// Its media line's mid, for the header extension.
    mid: MidBytes,
    /// The header extension ids the remote accepted; None if one needs the two-byte form.
    ext_ids: Option<ExtIds>,
    /// The RTX stream's SSRC and payload type, when negotiated, and its next sequence number.
    rtx: Option<(Ssrc, Pt)>,
    rtx_seq: u64,
    /// The highest sequence number written to the player.
    last_seq: u64,
    /// When the next packet goes through str0m (direct path only).
    str0m_due: Option<Instant>,
}

impl EgressTrack {
    /// Whether a packet of this track sent now goes through str0m: the first fresh one once
    /// [`SENDER_REPORT_REFRESH`] has passed (resends never do).
    fn str0m_turn(&self, resend: bool, now: Instant) -> bool {
        !resend && self.str0m_due.is_none_or(|due| now >= due)
    }

    /// The RTP header of `packet` on the direct path, with the payload type, SSRC and
    /// sequence number it is sent under (the track's, or its RTX stream's for a resend).
    fn header_fields(
        &self,
        packet: &MediaPacket,
        pt: Pt,
        ssrc: Ssrc,
        seq: u64,
    ) -> HeaderFields<'_> {
        HeaderFields {
            pt: *pt,
            marker: packet.marker,
            seq: seq as u16,
            ts: packet.ts,
            ssrc: *ssrc,
            mid: Some(self.mid.as_slice()),
            ext: packet.ext,
        }
    }
}

struct Generate {
    generator: Generator,
    audio: Option<GenTrack>,
    video: Option<GenTrack>,
    scratch: Vec<SynthPacket>,
}

struct GenTrack {
    ssrc: Ssrc,
    pt: Pt,
    seq: u64,
}

impl Peer {
    /// A server-side peer answering `offer`: the answer SDP and what the peer carries.
    pub fn accept(
        id: PeerId,
        offer: &str,
        role: Role,
        setup: &PeerSetup<'_>,
    ) -> Result<(Peer, String, StreamMedia), PeerFailure> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(bad_sdp)?;
        let (mut config, kind) = match role {
            Role::Ingest { stream, continuity } => {
                let media = choose_ingest_codecs(&offer);
                if media.is_empty() {
                    return Err(PeerFailure::NoCommonCodecs);
                }
                let ingest = Ingest {
                    stream,
                    previous: continuity,
                    tracks: Vec::new(),
                };
                (codecs_config(&media), PeerKind::Ingest(ingest))
            }
            Role::Egress {
                stream,
                home: _,
                media,
                relay: _,
            } => {
                let (wants_audio, wants_video) = offered_kinds(&offer);
                let audio = media.audio.filter(|_| wants_audio);
                let video = media.video.filter(|_| wants_video);
                if audio.is_none() && video.is_none() {
                    return Err(PeerFailure::NoCommonCodecs);
                }
                let egress = Egress {
                    stream,
                    media,
                    audio: None,
                    video: None,
                    direct: DirectState::Undecided,
                };
                (
                    without_twcc(codecs_config(&StreamMedia { audio, video })),
                    PeerKind::Egress(egress),
                )
            }
            Role::Generate(_) | Role::Probe => {
                return Err(PeerFailure::Internal(
                    "generator and probe peers make offers, they do not answer".into(),
                ));
            }
        };
        config = config.set_ice_lite(true);
        let mut peer = Peer::build(id, config, kind, false, setup);
        peer.mids = offer
            .media_lines
            .iter()
            .filter(|l| !l.disabled)
            .filter_map(|l| line_kind(&l.rtp_params()).map(|k| (l.mid(), k)))
            .collect();
        let answer = peer
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(rtc_sdp_failure)?;
        let media = peer.bind_tracks()?;
        Ok((peer, one_media_stream(&answer.to_sdp_string()), media))
    }

    /// A client-side peer making an offer (generator, probe, or relay).
    pub fn offer(
        id: PeerId,
        role: Role,
        setup: &PeerSetup<'_>,
    ) -> Result<(Peer, String, StreamMedia), PeerFailure> {
        let (config, kind, direction, media) = match role {
            Role::Generate(synth) => {
                let media = synth_media(&synth);
                let generate = Generate {
                    generator: Generator::new(synth, setup.now),
                    audio: None,
                    video: None,
                    scratch: Vec::new(),
                };
                let kind = PeerKind::Generate(Box::new(generate));
                (codecs_config(&media), kind, Direction::SendOnly, media)
            }
            Role::Probe => (
                receive_all_config(),
                PeerKind::Probe(Box::default()),
                Direction::RecvOnly,
                StreamMedia::default(),
            ),
            Role::Ingest { stream, continuity } => {
                let ingest = Ingest {
                    stream,
                    previous: continuity,
                    tracks: Vec::new(),
                };
                (
                    receive_all_config(),
                    PeerKind::Ingest(ingest),
                    Direction::RecvOnly,
                    StreamMedia::default(),
                )
            }
            Role::Egress {
                stream,
                home: _,
                media,
                relay: _,
            } => {
                let egress = Egress {
                    stream,
                    media,
                    audio: None,
                    video: None,
                    direct: DirectState::Undecided,
                };
                (
                    without_twcc(codecs_config(&media)),
                    PeerKind::Egress(egress),
                    Direction::SendOnly,
                    media,
                )
            }
        };
        let mut peer = Peer::build(id, config, kind, true, setup);
        let mut api = peer.rtc.sdp_api();
        let mut mids = Vec::new();
        let kinds: &[MediaKind] = match (&peer.kind, direction) {
            (_, Direction::RecvOnly) => &[MediaKind::Audio, MediaKind::Video],
            _ => match (media.audio.is_some(), media.video.is_some()) {
                (true, true) => &[MediaKind::Audio, MediaKind::Video],
                (true, false) => &[MediaKind::Audio],
                (false, true) => &[MediaKind::Video],
                (false, false) => return Err(PeerFailure::NoCommonCodecs),
            },
        };
        for kind in kinds {
            let mid = api.add_media(*kind, direction, None, None, None);
            mids.push((mid, *kind));
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(PeerFailure::Internal("no changes to offer".into()));
        };
        peer.mids = mids;
        peer.pending = Some(pending);
        Ok((peer, one_media_stream(&offer.to_sdp_string()), media))
    }

    /// Applies the remote answer to an offering peer; returns what was negotiated.
    pub fn apply_answer(&mut self, answer: &str) -> Result<StreamMedia, PeerFailure> {
        let Some(pending) = self.pending.take() else {
            return Err(PeerFailure::Internal("no offer is pending".into()));
        };
        let answer = SdpAnswer::from_sdp_string(answer).map_err(bad_sdp)?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(rtc_sdp_failure)?;
        self.bind_tracks()
    }

    /// Feeds one received datagram. Malformed input is dropped, never fatal: a forged packet
    /// from a peer's address must not end its session. Returns false if it was dropped.
    /// The datagram's kernel arrival time, where the socket reports it, is what a probe
    /// measures the latency of the RTP it carries to, in the [`Peer::drive`] that follows.
    pub fn receive(&mut self, now: Instant, datagram: Datagram<'_>) -> Result<bool, PeerFailure> {
        let Ok(receive) = Receive::new(
            Protocol::Udp,
            datagram.source,
            datagram.destination,
            datagram.payload,
        ) else {
            return Ok(false);
        };
        match self.rtc.handle_input(Input::Receive(now, receive)) {
            Ok(()) => {
                self.rx_arrival_unix_micros = datagram.arrival_unix_micros;
                Ok(true)
            }
            Err(RtcError::Dtls(e)) => Err(dtls_failure(&e.to_string())),
            Err(e) => {
                tracing::debug!(peer = %self.id, error = %e, "dropped input");
                Ok(false)
            }
        }
    }

    /// Drains the `Rtc` until it asks for a timeout: transmits go to `tx`, what the core must
    /// act on goes to `events`.
    pub fn drive(
        &mut self,
        now: Instant,
        tx: &mut SendBatch,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), PeerFailure> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_deadline = t;
                    self.rx_arrival_unix_micros = None;
                    return Ok(());
                }
                Ok(Output::Transmit(t)) => {
                    if self.local.is_none() {
                        self.local = Some(t.source);
                    }
                    // DTLS (first byte 20-63) and SRTP/SRTCP (128-191) go to the nominated
                    // pair; STUN answers go wherever a check came from (RFC 7983).
                    if matches!(t.contents.first(), Some(20..=63 | 128..=191)) {
                        self.media_path = Some((t.source, t.destination));
                    }
                    tx.push(t.destination, Some(t.source.ip()), t.contents.into());
                }
                Ok(Output::Event(e)) => self.on_rtc_event(e, now, events),
                Err(RtcError::Dtls(e)) => return Err(dtls_failure(&e.to_string())),
                Err(e) => return Err(PeerFailure::Internal(e.to_string())),
            }
        }
    }

    /// Advances time: the peer's own deadlines, then str0m's, then a generator's frames.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        tx: &mut SendBatch,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), PeerFailure> {
        self.check_deadlines(now)?;
        self.send_direct(now, tx, events)?;
        if now >= self.rtc_deadline {
            self.rtc
                .handle_input(Input::Timeout(now))
                .map_err(|e| PeerFailure::Internal(e.to_string()))?;
            self.drive(now, tx, events)?;
        }
        self.generate(now, tx, events)
    }

    /// ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// The next instant this peer must be woken at.
    pub fn deadline(&self) -> Instant {
        let mut d = self.rtc_deadline;
        if let PeerKind::Egress(Egress {
            direct: DirectState::On(direct),
            ..
        }) = &self.kind
            && !direct.pending.is_empty()
        {
            // Packets to seal: due now (any instant in the past does).
            d = d.min(self.created);
        }
        match self.connected_at {
            None => d = d.min(self.created + self.limits.connect),
            Some(_) => {
                if let PeerKind::Ingest(_) = self.kind {
                    d = d.min(self.last_media + self.limits.rtp);
                }
                if let PeerKind::Generate(g) = &self.kind {
                    d = d.min(g.generator.next_deadline());
                }
            }
        }
        if let Some(since) = self.ice_lost_since {
            d = d.min(since + self.limits.ice_grace);
        }
        if let Some(at) = self.remote_closed_at {
            d = d.min(at + CLOSE_GRACE);
        }
        d
    }

    /// Writes one stream packet to an egress peer; true if it was written. On the direct path
    /// the packet is sealed and queued by the peer's next drive; otherwise str0m hands it out
    /// (RTP header, SRTP) on its next timeout. Either is now: the caller drives the peer once
    /// at the end of its batch (`on_timeout`), however many packets it wrote.
    pub fn write_media(&mut self, packet: &MediaPacket, now: Instant) -> bool {
        if self.connected_at.is_none() {
            return false;
        }
        if let PeerKind::Egress(Egress {
            direct: DirectState::Undecided,
            ..
        }) = &self.kind
        {
            self.decide_direct();
        }
        let PeerKind::Egress(egress) = &mut self.kind else {
            return false;
        };
        let track = match packet.kind {
            MediaKind::Audio => egress.audio.as_mut(),
            MediaKind::Video => egress.video.as_mut(),
        };
        let Some(track) = track else {
            return false;
        };
        let offset = *track
            .seq_offset
            .get_or_insert_with(|| fastrand::i64(1_000..30_000) - packet.seq as i64);
        let seq = packet.seq as i64 + offset;
        if seq < 0 {
            return false;
        }
        let seq = seq as u64;
        track.last_seq = track.last_seq.max(seq);
        if let DirectState::On(direct) = &mut egress.direct {
            direct.pending.push(Pending::new(packet, seq, false));
            return true;
        }
        let (ssrc, pt) = (track.ssrc, track.pt);
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&ssrc) else {
            return false;
        };
        let write = RtpWrite::new(pt, seq.into(), packet.ts, packet.arrival, {
            packet.payload.clone()
        })
        .marker(packet.marker)
        .ext_vals(packet.ext.to_values())
        .nackable(packet.kind == MediaKind::Video);
        stream.write_rtp(write);
        // What str0m's poll_output would now answer: a timeout that is already due.
        self.rtc_deadline = self.rtc_deadline.min(now);
        true
    }

    /// Queues a retransmission of a stream packet this player NACKed (direct path only);
    /// true if queued, and the caller drives the peer as after `write_media`.
    pub fn resend(&mut self, packet: &MediaPacket) -> bool {
        let PeerKind::Egress(Egress {
            video: Some(track),
            direct: DirectState::On(direct),
            ..
        }) = &mut self.kind
        else {
            return false;
        };
        let Some(offset) = track.seq_offset else {
            return false;
        };
        let seq = packet.seq as i64 + offset;
        if seq < 0 || packet.kind != MediaKind::Video {
            return false;
        }
        direct.pending.push(Pending::new(packet, seq as u64, true));
        true
    }

    /// Whether this player's packets can take the direct path: enabled, the DTLS keys
    /// captured, the nominated pair known, and every track's header extensions writable.
    fn decide_direct(&mut self) {
        let PeerKind::Egress(egress) = &mut self.kind else {
            return;
        };
        let keys = self.keys.get();
        let tracks_ok = [&egress.audio, &egress.video]
            .into_iter()
            .flatten()
            .all(|t| t.ext_ids.is_some());
        let srtp = keys.and_then(|k| SrtpSender::new(k.profile, &k.material, k.client));
        egress.direct = match (srtp, self.media_path, tracks_ok) {
            (Some(srtp), Some(_), true) => {
                tracing::debug!(peer = %self.id, profile = ?keys.map(|k| k.profile), "direct egress");
                DirectState::On(Box::new(Direct {
                    srtp,
                    pending: Vec::new(),
                    rtx_payload: Vec::new(),
                }))
            }
            (srtp, path, tracks_ok) => {
                if keys.is_some() || path.is_some() {
                    tracing::debug!(
                        peer = %self.id,
                        keys = keys.is_some(),
                        srtp = srtp.is_some(),
                        path = path.is_some(),
                        tracks_ok,
                        "egress through str0m"
                    );
                }
                DirectState::Off
            }
        };
    }

    /// Seals and queues the packets written since the last drive (direct path), in order.
    /// Every [`SENDER_REPORT_REFRESH`] a track's packet goes through str0m instead, and str0m
    /// is driven at once so the packet keeps its place.
    fn send_direct(
        &mut self,
        now: Instant,
        tx: &mut SendBatch,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), PeerFailure> {
        let PeerKind::Egress(Egress {
            direct: DirectState::On(direct),
            ..
        }) = &mut self.kind
        else {
            return Ok(());
        };
        if direct.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut direct.pending);
        self.plan_padding(now, &mut pending);
        let mut result = Ok(());
        for item in pending.drain(..) {
            if result.is_ok() {
                result = self.send_one(&item, now, tx, events);
            }
        }
        if let PeerKind::Egress(Egress {
            direct: DirectState::On(direct),
            ..
        }) = &mut self.kind
        {
            // Keep the buffer (and its capacity) unless more was written meanwhile.
            if direct.pending.is_empty() {
                direct.pending = pending;
            }
        }
        result
    }

    /// Sets the sealed length of each queued packet as [`Peer::send_one`] will seal it, then
    /// its padding ([`gso_padding`]).
    fn plan_padding(&self, now: Instant, pending: &mut [Pending]) {
        let PeerKind::Egress(Egress {
            audio,
            video,
            direct: DirectState::On(direct),
            ..
        }) = &self.kind
        else {
            return;
        };
        let overhead = direct.srtp.overhead();
        // A track's first fresh packet once its refresh is due goes through str0m.
        let due = |t: &Option<EgressTrack>| t.as_ref().is_some_and(|t| t.str0m_turn(false, now));
        let mut through_str0m = [due(audio), due(video)];
        let mut header = [0u8; MAX_HEADER];
        for item in pending.iter_mut() {
            let packet = &item.packet;
            let (track, k) = match packet.kind {
                MediaKind::Audio => (audio.as_ref(), 0),
                MediaKind::Video => (video.as_ref(), 1),
            };
            item.len = 0;
            let Some(track) = track else { continue };
            if !item.resend && through_str0m[k] {
                through_str0m[k] = false;
                continue;
            }
            let Some(ids) = track.ext_ids else { continue };
            // The header's length does not depend on the payload type, SSRC or number.
            let fields = track.header_fields(packet, track.pt, track.ssrc, 0);
            let osn = if item.resend && track.rtx.is_some() {
                RTX_OSN_LEN
            } else {
                0
            };
            let n = direct::write_header(&mut header, &ids, &fields);
            item.len = n + osn + packet.payload.len() + overhead;
        }
        gso_padding(pending);
    }

    fn send_one(
        &mut self,
        item: &Pending,
        now: Instant,
        tx: &mut SendBatch,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), PeerFailure> {
        let Some((source, destination)) = self.media_path else {
            return Ok(());
        };
        let PeerKind::Egress(Egress {
            audio,
            video,
            direct: DirectState::On(direct),
            ..
        }) = &mut self.kind
        else {
            return Ok(());
        };
        let packet = &item.packet;
        let Some(track) = (match packet.kind {
            MediaKind::Audio => audio.as_mut(),
            MediaKind::Video => video.as_mut(),
        }) else {
            return Ok(());
        };
        if track.str0m_turn(item.resend, now) {
            track.str0m_due = Some(now + SENDER_REPORT_REFRESH);
            let (ssrc, pt) = (track.ssrc, track.pt);
            if let Some(stream) = self.rtc.direct_api().stream_tx(&ssrc) {
                let write = RtpWrite::new(
                    pt,
                    item.seq.into(),
                    packet.ts,
                    packet.arrival,
                    packet.payload.to_vec(),
                )
                .marker(packet.marker)
                .ext_vals(packet.ext.to_values())
                // Resends come from the core's history, never from str0m's (whose RTX
                // sequence numbers would collide with relaycast's).
                .nackable(false);
                stream.write_rtp(write);
                self.rtc
                    .handle_input(Input::Timeout(now))
                    .map_err(|e| PeerFailure::Internal(e.to_string()))?;
                return self.drive(now, tx, events);
            }
            return Ok(());
        }
        let Some(ids) = track.ext_ids else {
            return Ok(());
        };
        let mut header = [0u8; MAX_HEADER];
        let (ssrc, pt, seq, payload): (Ssrc, Pt, u64, &[u8]) = match (item.resend, track.rtx) {
            (true, Some((rtx_ssrc, rtx_pt))) => {
                // RFC 4588: the original sequence number (RTX_OSN_LEN bytes), then the
                // original payload.
                direct.rtx_payload.clear();
                direct
                    .rtx_payload
                    .extend_from_slice(&(item.seq as u16).to_be_bytes());
                direct.rtx_payload.extend_from_slice(&packet.payload);
                let seq = track.rtx_seq;
                track.rtx_seq += 1;
                (rtx_ssrc, rtx_pt, seq, &direct.rtx_payload)
            }
            // Without RTX a resend is the packet itself.
            _ => (track.ssrc, track.pt, item.seq, &packet.payload),
        };
        let fields = track.header_fields(packet, pt, ssrc, seq);
        let n = direct::write_header(&mut header, &ids, &fields);
        let mut out = tx.buffer();
        direct
            .srtp
            .protect_rtp_padded(&header[..n], payload, item.padding, *ssrc, seq, &mut out);
        if out.is_empty() {
            // The crypto backend refused it (aws-lc-rs does not for packet sizes).
            return Ok(());
        }
        self.direct_bytes += out.len() as u64;
        tx.push(destination, Some(source.ip()), out);
        if item.padding > 0 {
            tx.note_padded();
        }
        Ok(())
    }

    /// A player's NACK, on the direct path: the stream packets it names, for the core.
    fn on_nack(&mut self, nack: &Nack, events: &mut Vec<PeerEvent>) {
        let PeerKind::Egress(Egress {
            video: Some(track),
            direct: DirectState::On(_),
            ..
        }) = &self.kind
        else {
            return;
        };
        let Some(offset) = track.seq_offset else {
            return;
        };
        if nack.ssrc != track.ssrc {
            return;
        }
        let seqs: Vec<u64> = nack
            .reports
            .iter()
            .flat_map(|e| direct::nacked(e.pid, e.blp))
            .map(|s| direct::widen_seq(track.last_seq, s) as i64 - offset)
            .filter(|s| *s >= 0)
            .map(|s| s as u64)
            .collect();
        if !seqs.is_empty() {
            events.push(PeerEvent::Resend(seqs));
        }
    }

    /// Asks an ingest peer's remote for a keyframe.
    pub fn request_keyframe(
        &mut self,
        kind: KeyframeRequestKind,
        now: Instant,
        tx: &mut SendBatch,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), PeerFailure> {
        let PeerKind::Ingest(ingest) = &self.kind else {
            return Ok(());
        };
        let Some(track) = ingest.tracks.iter().find(|t| t.kind == MediaKind::Video) else {
            return Ok(());
        };
        let mid = track.mid;
        {
            let mut api = self.rtc.direct_api();
            let Some(rx) = api.stream_rx_by_mid(mid, None) else {
                return Ok(());
            };
            rx.request_keyframe(kind);
        }
        self.drive(now, tx, events)
    }

    /// The stream this peer feeds (ingest) or reads (egress).
    pub fn stream(&self) -> Option<StreamId> {
        match &self.kind {
            PeerKind::Ingest(i) => Some(i.stream),
            PeerKind::Egress(e) => Some(e.stream),
            _ => None,
        }
    }

    /// Whether the peer feeds a stream.
    pub fn is_ingest(&self) -> bool {
        matches!(self.kind, PeerKind::Ingest(_))
    }

    /// The local ICE username fragment, for demultiplexing STUN.
    pub fn ice_ufrag(&mut self) -> String {
        self.rtc.direct_api().local_ice_credentials().ufrag
    }

    /// Where an ingest peer's stream left off.
    pub fn continuity(&self) -> Option<Continuity> {
        let PeerKind::Ingest(ingest) = &self.kind else {
            return None;
        };
        let mut c = ingest.previous;
        for t in &ingest.tracks {
            let end = t.rewriter.end();
            match t.kind {
                MediaKind::Audio => c.audio = end.or(c.audio),
                MediaKind::Video => c.video = end.or(c.video),
            }
        }
        Some(c)
    }

    /// Statistics for the protocol client and the load generator.
    pub fn report(&self) -> PeerReport {
        let (probe, latency) = match &self.kind {
            PeerKind::Probe(p) => (Some(p.report()), Some(p.latency_histogram().clone())),
            _ => (None, None),
        };
        let generator = match &self.kind {
            PeerKind::Generate(g) => Some(g.generator.stats()),
            _ => None,
        };
        PeerReport {
            peer: self.id,
            core: self.core,
            connected: self.connected_at.is_some(),
            connected_at: self.connected_at,
            local: self.local,
            probe,
            latency,
            generator,
            link: self.link.stats,
        }
    }

    /// Starts closing: str0m sends what it must (RTCP BYE, DTLS close_notify).
    pub fn close(&mut self, now: Instant, tx: &mut SendBatch, events: &mut Vec<PeerEvent>) {
        if self.rtc.close().is_ok() {
            let _ = self.drive(now, tx, events);
        }
    }

    fn build(
        id: PeerId,
        config: RtcConfig,
        mut kind: PeerKind,
        dedicated: bool,
        setup: &PeerSetup<'_>,
    ) -> Peer {
        // A player on the direct path: its NACKs reach relaycast as str0m's raw RTCP events
        // (the player's RTCP is light: reports and feedback, a few packets a second).
        let direct = setup.config.direct_egress && matches!(kind, PeerKind::Egress(_));
        if let PeerKind::Egress(egress) = &mut kind
            && !direct
        {
            egress.direct = DirectState::Off;
        }
        let config = config
            .set_rtp_mode(true)
            .set_stats_interval(Some(STATS_INTERVAL))
            .set_dtls_cert(setup.cert.clone())
            .enable_raw_packets(direct);
        let (mut rtc, keys) = direct::build_rtc(config, setup.now);
        for addr in setup.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "unusable host candidate"),
            }
        }
        Peer {
            id,
            rtc,
            kind,
            dedicated,
            core: setup.core,
            created: setup.now,
            connected_at: None,
            ice_lost_since: None,
            remote_closed_at: None,
            last_media: setup.now,
            rtc_deadline: setup.now,
            rx_arrival_unix_micros: None,
            listed: false,
            armed: None,
            pending: None,
            mids: Vec::new(),
            limits: Limits {
                connect: setup.config.connect_timeout,
                rtp: setup.config.rtp_timeout,
                ice_grace: setup.config.ice_disconnect_grace,
            },
            local: None,
            media_path: None,
            keys,
            direct_bytes: 0,
            nack_totals: Vec::new(),
            link: LinkMeter::default(),
        }
    }

    /// After negotiation: which mid, SSRC and payload type each track uses, and what media
    /// the peer carries as negotiated.
    fn bind_tracks(&mut self) -> Result<StreamMedia, PeerFailure> {
        let mut negotiated = StreamMedia::default();
        for (mid, kind) in self.mids.clone() {
            let Some(params) = self.negotiated_params(mid) else {
                continue;
            };
            match kind {
                MediaKind::Audio => negotiated.audio = Some(params),
                MediaKind::Video => negotiated.video = Some(params),
            }
            let ssrc = self
                .rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc());
            let pt = params.pt();
            match &mut self.kind {
                PeerKind::Ingest(ingest) => {
                    let previous = match kind {
                        MediaKind::Audio => ingest.previous.audio,
                        MediaKind::Video => ingest.previous.video,
                    };
                    let clock = params.spec().clock_rate.get();
                    ingest.tracks.push(IngestTrack {
                        mid,
                        kind,
                        pt,
                        codec: params.spec().codec,
                        rewriter: TrackRewriter::new(clock, previous),
                        resolution: None,
                    });
                }
                PeerKind::Egress(egress) => {
                    let Some(ssrc) = ssrc else { continue };
                    if kind == MediaKind::Video
                        && let Some(stream) = self.rtc.direct_api().stream_tx(&ssrc)
                    {
                        stream.set_rtx_cache(
                            RESEND_HISTORY_PACKETS,
                            RESEND_HISTORY,
                            Some(RTX_RATIO_CAP),
                        );
                    }
                    let rtx_ssrc = self.rtc.direct_api().stream_tx(&ssrc).and_then(|s| s.rtx());
                    let ext_ids = self
                        .rtc
                        .media(mid)
                        .and_then(|m| ExtIds::from_map(m.remote_extmap()));
                    let track = EgressTrack {
                        ssrc,
                        pt,
                        seq_offset: None,
                        mid: MidBytes::new(&mid),
                        ext_ids,
                        rtx: rtx_ssrc.zip(params.resend()),
                        rtx_seq: fastrand::u64(1_000..30_000),
                        last_seq: 0,
                        str0m_due: None,
                    };
                    match kind {
                        MediaKind::Audio => egress.audio = Some(track),
                        MediaKind::Video => egress.video = Some(track),
                    }
                }
                PeerKind::Generate(generate) => {
                    let Some(ssrc) = ssrc else { continue };
                    let track = GenTrack { ssrc, pt, seq: 0 };
                    match kind {
                        MediaKind::Audio => generate.audio = Some(track),
                        MediaKind::Video => generate.video = Some(track),
                    }
                }
                PeerKind::Probe(_) => {}
            }
        }
        if negotiated.is_empty() {
            return Err(PeerFailure::NoCommonCodecs);
        }
        if let PeerKind::Egress(egress) = &self.kind {
            let stream = egress.media;
            let wanted_video = stream.video.is_some() && negotiated.video.is_none();
            let wanted_audio = stream.audio.is_some() && negotiated.audio.is_none();
            let asked_video = self.mids.iter().any(|(_, k)| *k == MediaKind::Video);
            let asked_audio = self.mids.iter().any(|(_, k)| *k == MediaKind::Audio);
            if (wanted_video && asked_video) || (wanted_audio && asked_audio) {
                return Err(PeerFailure::NoCommonCodecs);
            }
        }
        Ok(negotiated)
    }

    /// The codec parameters (with the payload type in use on the wire) of one media line:
    /// the first of our configured codecs that the remote accepted for it.
    fn negotiated_params(&self, mid: Mid) -> Option<PayloadParams> {
        let media = self.rtc.media(mid)?;
        let kind = media.kind();
        let remote = media.remote_pts();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| p.spec().codec.is_audio() == (kind == MediaKind::Audio))
            .filter(|p| is_media_codec(p.spec().codec))
            .find(|p| remote.contains(&p.pt()))
            .copied()
    }

    fn on_rtc_event(&mut self, e: RtcEvent, now: Instant, events: &mut Vec<PeerEvent>) {
        match e {
            RtcEvent::Connected if self.connected_at.is_none() => {
                self.connected_at = Some(now);
                self.last_media = now;
                events.push(PeerEvent::Connected);
            }
            RtcEvent::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => {
                    self.ice_lost_since.get_or_insert(now);
                }
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    self.ice_lost_since = None;
                }
                _ => {}
            },
            RtcEvent::RtpPacket(packet) => self.on_rtp(packet, now, events),
            RtcEvent::KeyframeRequest(req) => match &mut self.kind {
                PeerKind::Egress(_) => events.push(PeerEvent::KeyframeRequest(req.kind)),
                PeerKind::Generate(g) => g.generator.request_keyframe(),
                _ => {}
            },
            RtcEvent::Closed => {
                self.remote_closed_at.get_or_insert(now);
            }
            RtcEvent::MediaEgressStats(stats) => {
                self.count_nacks(stats.mid, true, stats.nacks, events);
                self.link.on_media(stats.rtt, stats.loss);
            }
            RtcEvent::MediaIngressStats(stats) => {
                self.count_nacks(stats.mid, false, stats.nacks, events);
                self.link.on_media(stats.rtt, stats.loss);
            }
            RtcEvent::RawPacket(raw) => {
                if let RawPacket::RtcpRx(Rtcp::Nack(nack)) = &*raw {
                    self.on_nack(nack, events);
                }
            }
            RtcEvent::PeerStats(stats) => self.link.on_peer(
                stats.timestamp,
                (stats.peer_bytes_rx, stats.peer_bytes_tx + self.direct_bytes),
                stats.rtt,
                [stats.egress_loss_fraction, stats.ingress_loss_fraction],
            ),
            _ => {}
        }
    }

    /// Turns str0m's running NACK total of one media line into an increment.
    fn count_nacks(&mut self, mid: Mid, egress: bool, total: u64, events: &mut Vec<PeerEvent>) {
        let last = match self
            .nack_totals
            .iter_mut()
            .find(|(m, e, _)| *m == mid && *e == egress)
        {
            Some((_, _, last)) => last,
            None => {
                self.nack_totals.push((mid, egress, 0));
                &mut self.nack_totals.last_mut().expect("just pushed").2
            }
        };
        let delta = total.saturating_sub(*last);
        *last = total.max(*last);
        if delta > 0 {
            let (received, sent) = if egress { (delta, 0) } else { (0, delta) };
            events.push(PeerEvent::Nacks { received, sent });
        }
    }

    fn on_rtp(&mut self, packet: RtpPacket, now: Instant, events: &mut Vec<PeerEvent>) {
        match &mut self.kind {
            PeerKind::Ingest(ingest) => {
                let pt = packet.header.payload_type;
                let Some(track) = ingest.tracks.iter_mut().find(|t| t.pt == pt) else {
                    return;
                };
                if packet.payload.is_empty() {
                    return;
                }
                self.last_media = now;
                let ssrc = *packet.header.ssrc;
                let (seq, ts) =
                    track
                        .rewriter
                        .rewrite(ssrc, *packet.seq_no, packet.header.timestamp, now);
                if track.kind == MediaKind::Video
                    && let Some(size) = video_resolution(track.codec, &packet.payload)
                {
                    // Only a keyframe's first packet announces the picture size.
                    events.push(PeerEvent::Keyframe);
                    if track.resolution != Some(size) {
                        track.resolution = Some(size);
                        events.push(PeerEvent::Resolution {
                            width: size.0,
                            height: size.1,
                        });
                    }
                }
                events.push(PeerEvent::Media(MediaPacket {
                    kind: track.kind,
                    seq,
                    ts,
                    marker: packet.header.marker,
                    ext: MediaExt::from_values(&packet.header.ext_vals),
                    payload: packet.payload,
                    arrival: now,
                }));
            }
            PeerKind::Probe(probe) => {
                probe.on_packet(
                    *packet.header.ssrc,
                    packet.header.sequence_number,
                    &packet.payload,
                    self.rx_arrival_unix_micros.unwrap_or_else(unix_micros),
                    now,
                );
            }
            _ => {}
        }
    }

    fn check_deadlines(&mut self, now: Instant) -> Result<(), PeerFailure> {
        match self.connected_at {
            None if now >= self.created + self.limits.connect => {
                return Err(PeerFailure::IceTimeout);
            }
            Some(_) if self.is_ingest() && now >= self.last_media + self.limits.rtp => {
                return Err(PeerFailure::RtpActivity);
            }
            _ => {}
        }
        if let Some(since) = self.ice_lost_since
            && now >= since + self.limits.ice_grace
        {
            return Err(PeerFailure::IceKeepAlive);
        }
        if let Some(at) = self.remote_closed_at
            && now >= at + CLOSE_GRACE
        {
            return Err(PeerFailure::Dtls("closed by the remote".into()));
        }
        Ok(())
    }

    fn generate(
        &mut self,
        now: Instant,
        tx: &mut SendBatch,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), PeerFailure> {
        if self.connected_at.is_none() {
            return Ok(());
        }
        let PeerKind::Generate(g) = &mut self.kind else {
            return Ok(());
        };
        if now < g.generator.next_deadline() {
            return Ok(());
        }
        let mut packets = std::mem::take(&mut g.scratch);
        g.generator.poll(now, unix_micros(), &mut packets);
        let mut result = Ok(());
        for packet in packets.drain(..) {
            let PeerKind::Generate(g) = &mut self.kind else {
                break;
            };
            let track = match packet.kind {
                crate::synth::Kind::Audio => g.audio.as_mut(),
                crate::synth::Kind::Video => g.video.as_mut(),
            };
            let Some(track) = track else { continue };
            let (ssrc, pt, seq) = (track.ssrc, track.pt, track.seq);
            track.seq += 1;
            let video = packet.kind == crate::synth::Kind::Video;
            {
                let mut api = self.rtc.direct_api();
                let Some(stream) = api.stream_tx(&ssrc) else {
                    continue;
                };
                let write = RtpWrite::new(pt, seq.into(), packet.rtp_time, now, packet.payload)
                    .marker(packet.marker)
                    .nackable(video);
                stream.write_rtp(write);
            }
            if let Err(e) = self.drive(now, tx, events) {
                result = Err(e);
                break;
            }
        }
        if let PeerKind::Generate(g) = &mut self.kind {
            g.scratch = packets;
        }
        result
    }
}

/// Puts every track of an SDP in one media stream: str0m picks a random stream id per `m=`
/// line when the remote gave none (a browser's recvonly offer), and a browser then hands the
/// page one `MediaStream` per track. The official SDK attaches `event.streams[0]` of each
/// track to its `<video>`, so the last track would win and audio would be lost (and lip sync
/// needs audio and video in one stream). The first stream id found is used for all tracks.
fn one_media_stream(sdp: &str) -> String {
    let stream_of = |line: &str| -> Option<(usize, usize)> {
        // `a=msid:<stream> <track>` or `a=ssrc:<n> msid:<stream> <track>`.
        let start = line.find("msid:")? + "msid:".len();
        let len = line[start..].find(' ')?;
        Some((start, start + len))
    };
    let Some(first) = sdp
        .lines()
        .find_map(|l| stream_of(l).map(|(a, b)| l[a..b].to_owned()))
    else {
        return sdp.to_owned();
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        match stream_of(line) {
            Some((a, b)) if line.starts_with("a=msid:") || line.starts_with("a=ssrc:") => {
                out.push_str(&line[..a]);
                out.push_str(&first);
                out.push_str(&line[b..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// How long after a remote DTLS close_notify the peer is failed if no signalling closed it.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A config offering or accepting exactly the stream's codecs, with their payload types.
fn codecs_config(media: &StreamMedia) -> RtcConfig {
    let mut config = RtcConfig::new().clear_codecs();
    let codecs = config.codec_config();
    for p in [media.audio, media.video].into_iter().flatten() {
        let spec = p.spec();
        codecs.add_config(
            p.pt(),
            p.resend(),
            spec.codec,
            spec.clock_rate,
            spec.channels,
            spec.format,
        );
    }
    config
}

/// A sending peer's config without the transport-wide sequence number (TWCC): the server does
/// not estimate bandwidth towards its subscribers (it forwards what the publisher sends), so
/// numbering every packet and taking the subscriber's feedback (RTCP 10-20 times a second
/// per subscriber, each a datagram to decrypt) would be work for nothing. Publishers keep it:
/// their own bandwidth estimation runs on the server's feedback.
fn without_twcc(mut config: RtcConfig) -> RtcConfig {
    let mut exts = ExtensionMap::empty();
    for (id, ext) in config.extension_map().iter() {
        if *ext != Extension::TransportSequenceNumber {
            exts.set(id, ext.clone());
        }
    }
    config.set_extension_map(exts)
}

/// How long a subscriber's sent video stays available for resends. A player NACKs a lost
/// packet within a few round trips, and libwebrtc keeps its own sent packets for the larger
/// of 1 s and three round trips. str0m's default, 3 s and up to 2,000 packets, held about
/// 450 packets (some 540 KB) per player of a 1.5 Mbps stream.
pub const RESEND_HISTORY: Duration = Duration::from_secs(1);
/// The packet bound of that history: 1 s of a 9.6 Mbps stream of 1,200-byte packets.
pub const RESEND_HISTORY_PACKETS: usize = 1000;
/// str0m's default share of resends in what a stream sends, kept.
const RTX_RATIO_CAP: f32 = 0.15;

/// A config that can receive every codec the server forwards (probes, pull relays).
fn receive_all_config() -> RtcConfig {
    RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_g722(true, false)
        .enable_pcmu(true, false)
        .enable_pcma(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_vp9(true)
        .enable_av1(true)
}

/// The codecs a synthetic publisher offers.
fn synth_media(config: &SynthConfig) -> StreamMedia {
    let mut base = receive_all_config();
    let params = base.codec_config().params().to_vec();
    let find = |codec: Codec, check: &dyn Fn(&PayloadParams) -> bool| {
        params
            .iter()
            .find(|p| p.spec().codec == codec && check(p))
            .copied()
    };
    let audio = config.audio.then(|| find(Codec::Opus, &|_| true)).flatten();
    let video = match config.video {
        Some(VideoCodec::Vp8) => find(Codec::Vp8, &|_| true),
        Some(VideoCodec::H264) => find(Codec::H264, &|p| {
            let f = p.spec().format;
            f.packetization_mode == Some(1) && f.profile_level_id == Some(0x42e01f)
        }),
        None => None,
    };
    StreamMedia { audio, video }
}

fn line_kind(params: &[PayloadParams]) -> Option<MediaKind> {
    params.iter().find_map(|p| {
        let codec = p.spec().codec;
        if codec.is_audio() {
            Some(MediaKind::Audio)
        } else if codec.is_video() {
            Some(MediaKind::Video)
        } else {
            None
        }
    })
}

fn is_media_codec(codec: Codec) -> bool {
    !matches!(
        codec,
        Codec::Rtx | Codec::Red | Codec::Null | Codec::Unknown | Codec::Tele | Codec::CN
    )
}

fn bad_sdp(e: SdpError) -> PeerFailure {
    PeerFailure::BadSdp(e.to_string())
}

fn rtc_sdp_failure(e: RtcError) -> PeerFailure {
    match e {
        RtcError::RemoteSdp(msg) => PeerFailure::BadSdp(msg),
        RtcError::Sdp(e) => PeerFailure::BadSdp(e.to_string()),
        other => PeerFailure::BadSdp(other.to_string()),
    }
}

fn dtls_failure(message: &str) -> PeerFailure {
    if message.to_ascii_lowercase().contains("fingerprint") {
        PeerFailure::DtlsFingerprint
    } else {
        PeerFailure::Dtls(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server egress peer and a plain str0m player wired in memory (no sockets): what the
    /// server queues reaches the player unless `drop` says so, and the player's output
    /// reaches the server.
    struct Wire {
        server: Peer,
        player: Rtc,
        tx: SendBatch,
        now: Instant,
        server_addr: SocketAddr,
        player_addr: SocketAddr,
        /// Video packets the player got, by its sequence number (repairs unwrapped by str0m).
        received: Vec<u64>,
        /// Their payloads, in the same order.
        payloads: Vec<Vec<u8>>,
        events: Vec<PeerEvent>,
        /// (when, RTP time) of each video sender report the player got.
        reports: Vec<(Instant, u32)>,
    }

    impl Wire {
        fn new(direct_egress: bool, audio: bool) -> Wire {
            let now = Instant::now();
            let server_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let player_addr: SocketAddr = "127.0.0.1:40001".parse().unwrap();
            let mut player = Rtc::builder()
                .set_rtp_mode(true)
                .clear_codecs()
                .enable_opus(true, false)
                .enable_vp8(true)
                .enable_raw_packets(true)
                .build(now);
            player.add_local_candidate(Candidate::host(player_addr, "udp").unwrap());
            let mut api = player.sdp_api();
            if audio {
                api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            }
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            let media = synth_media(&SynthConfig {
                audio,
                video: Some(VideoCodec::Vp8),
                ..SynthConfig::default()
            });
            assert!(media.video.unwrap().resend().is_some(), "VP8 with RTX");
            let config = DataPlaneConfig {
                direct_egress,
                ..DataPlaneConfig::default()
            };
            let cert = str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate()
                .unwrap();
            let setup = PeerSetup {
                core: CoreId(0),
                now,
                config: &config,
                cert: &cert,
                candidates: &[server_addr],
            };
            let role = Role::Egress {
                stream: StreamId(1),
                home: CoreId(0),
                media,
                relay: false,
            };
            let (server, answer, _) =
                Peer::accept(PeerId(1), &offer.to_sdp_string(), role, &setup).unwrap();
            player
                .sdp_api()
                .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
                .unwrap();
            Wire {
                server,
                player,
                tx: SendBatch::new(64),
                now,
                server_addr,
                player_addr,
                received: Vec::new(),
                payloads: Vec::new(),
                events: Vec::new(),
                reports: Vec::new(),
            }
        }

        /// One round: the server's timers and queue, then the player's output.
        fn round(&mut self, drop: &mut dyn FnMut(&[u8]) -> bool) {
            let now = self.now;
            if self.server.deadline() <= now {
                self.server
                    .on_timeout(now, &mut self.tx, &mut self.events)
                    .unwrap();
            }
            while let Some((to, payload)) = self.tx.pop_front() {
                assert_eq!(to, self.player_addr);
                if drop(&payload) {
                    continue;
                }
                let r = Receive::new(Protocol::Udp, self.server_addr, to, &payload).unwrap();
                self.player.handle_input(Input::Receive(now, r)).unwrap();
            }
            self.player.handle_input(Input::Timeout(now)).unwrap();
            self.poll();
        }

        /// The player's output: its datagrams to the server (which is driven), its events.
        /// In RTP mode str0m holds one received packet until this, so a caller that hands
        /// the player several datagrams polls after each.
        fn poll(&mut self) {
            let now = self.now;
            loop {
                match self.player.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let d = Datagram {
                            source: self.player_addr,
                            destination: self.server_addr,
                            payload: &t.contents,
                            truncated: false,
                            arrival_unix_micros: None,
                        };
                        self.server.receive(now, d).unwrap();
                        self.server
                            .drive(now, &mut self.tx, &mut self.events)
                            .unwrap();
                    }
                    Output::Event(RtcEvent::RtpPacket(p)) => {
                        if p.header.payload_type == self.video_pt() {
                            self.received.push(*p.seq_no);
                            self.payloads.push(p.payload.to_vec());
                        }
                    }
                    Output::Event(RtcEvent::RawPacket(raw)) => {
                        if let RawPacket::RtcpRx(Rtcp::SenderReport(sr)) = &*raw
                            && sr.sender_info.ssrc == self.video_ssrc()
                        {
                            let rtp = sr.sender_info.rtp_time.numer() as u32;
                            self.reports.push((now, rtp));
                        }
                    }
                    Output::Event(_) => {}
                }
            }
        }

        fn video_pt(&self) -> Pt {
            let PeerKind::Egress(e) = &self.server.kind else {
                unreachable!()
            };
            e.video.as_ref().unwrap().pt
        }

        fn video_ssrc(&self) -> Ssrc {
            let PeerKind::Egress(e) = &self.server.kind else {
                unreachable!()
            };
            e.video.as_ref().unwrap().ssrc
        }

        fn advance(&mut self, ms: u64) {
            self.now += Duration::from_millis(ms);
        }

        fn connect(&mut self) {
            for _ in 0..200 {
                self.round(&mut |_| false);
                if self.server.is_connected() && self.player.is_connected() {
                    return;
                }
                self.advance(5);
            }
            panic!("no connection");
        }
    }

    fn video_packet(seq: u64, now: Instant) -> MediaPacket {
        MediaPacket {
            kind: MediaKind::Video,
            seq,
            ts: 90 * seq as u32,
            marker: seq % 3 == 2,
            ext: MediaExt::default(),
            payload: std::sync::Arc::from(vec![(seq % 251) as u8; 900]),
            arrival: now,
        }
    }

    fn is_video(payload: &[u8], pt: Pt) -> bool {
        payload.len() > 12 && payload[0] >> 6 == 2 && payload[1] & 0x7f == *pt
    }

    #[test]
    fn a_player_on_the_direct_path_gets_every_packet_and_a_nacked_one_again() {
        let mut w = Wire::new(true, true);
        w.connect();
        let pt = w.video_pt();
        let mut history = crate::direct::ResendHistory::new(RESEND_HISTORY, 100);
        // 30 packets; the 10th video datagram on the wire is lost on the way.
        let mut video_seen = 0;
        let mut lost = None;
        for seq in 5_000..5_030u64 {
            let p = video_packet(seq, w.now);
            history.push(&p);
            assert!(w.server.write_media(&p, w.now));
            assert!(w.server.deadline() <= w.now, "due at once to send it");
            w.round(&mut |d| {
                if is_video(d, pt) {
                    video_seen += 1;
                    if video_seen == 10 {
                        lost = Some(u16::from_be_bytes([d[2], d[3]]));
                        return true;
                    }
                }
                false
            });
            w.advance(5);
        }
        let PeerKind::Egress(Egress {
            direct: DirectState::On(_),
            ..
        }) = &w.server.kind
        else {
            panic!("the direct path is on");
        };
        let lost = lost.expect("a datagram was dropped") as u64;
        assert_eq!(w.received.len(), 29, "all but the lost one");
        assert!(!w.received.iter().any(|s| *s as u16 as u64 == lost));
        // The player NACKs it; the server names the stream packet and resends it from the
        // history, as an RTX packet the player unwraps.
        let mut asked = Vec::new();
        for _ in 0..100 {
            w.round(&mut |_| false);
            for e in w.events.drain(..) {
                if let PeerEvent::Resend(seqs) = e {
                    asked.extend(seqs);
                }
            }
            if !asked.is_empty() {
                break;
            }
            w.advance(10);
        }
        assert_eq!(asked.len(), 1, "one packet NACKed: {asked:?}");
        let packet = history.get(asked[0]).expect("in the history");
        assert!(w.server.resend(packet));
        let mut rtx = 0;
        w.round(&mut |d| {
            if d.len() > 12 && d[0] >> 6 == 2 && d[1] & 0x7f != *pt {
                rtx += 1;
            }
            false
        });
        assert_eq!(rtx, 1, "sent on the RTX payload type");
        assert_eq!(w.received.len(), 30);
        assert!(w.received.iter().any(|s| *s as u16 as u64 == lost));
        // The player's sequence numbers run on without a gap.
        let mut got = w.received.clone();
        got.sort_unstable();
        assert!(got.windows(2).all(|p| p[1] == p[0] + 1), "{got:?}");
    }

    fn padding_of(lens: &[usize]) -> Vec<u8> {
        let now = Instant::now();
        let mut pending: Vec<Pending> = lens
            .iter()
            .map(|&len| Pending {
                len,
                padding: 99,
                ..Pending::new(&video_packet(1, now), 1, false)
            })
            .collect();
        gso_padding(&mut pending);
        pending.iter().map(|p| p.padding).collect()
    }

    #[test]
    fn runs_of_near_sizes_are_padded_to_one_size_but_their_last() {
        // libwebrtc's split: one byte apart, the larger last.
        assert_eq!(padding_of(&[1040, 1040, 1041, 1041]), [1, 1, 0, 0]);
        // Larger first: the shorter ones but the last are padded.
        assert_eq!(padding_of(&[1041, 1040, 1040]), [0, 1, 0]);
        // An audio packet before the frame, and a frame's short tail after it, end runs.
        assert_eq!(padding_of(&[220, 1040, 1041, 1041, 400]), [0, 1, 0, 0, 0]);
        // Further apart than MAX_GSO_PADDING: left as they are.
        assert_eq!(padding_of(&[1000, 1000 + MAX_GSO_PADDING + 1]), [0, 0]);
        assert_eq!(padding_of(&[1000, 1000 + MAX_GSO_PADDING]), [16, 0]);
        // A packet not sealed here (length 0) ends a run.
        assert_eq!(padding_of(&[1040, 0, 1040, 1041]), [0, 0, 1, 0]);
        assert_eq!(padding_of(&[]), Vec::<u8>::new());
        assert_eq!(padding_of(&[1200]), [0]);
    }

    #[test]
    fn a_frames_packets_leave_in_one_size_and_arrive_without_the_padding() {
        let mut w = Wire::new(true, false);
        w.connect();
        let pt = w.video_pt();
        // The track's first packet goes through str0m (for its sender reports).
        assert!(w.server.write_media(&video_packet(7_000, w.now), w.now));
        w.round(&mut |_| false);
        w.advance(5);
        // A frame split as libwebrtc splits one (payloads a byte apart, the larger last),
        // then the next frame's single short packet, written in one batch.
        let sizes = [1000, 1000, 1001, 1001, 1001, 300];
        for (i, len) in sizes.iter().enumerate() {
            let mut p = video_packet(7_001 + i as u64, w.now);
            p.payload = std::sync::Arc::from(vec![i as u8 + 1; *len]);
            assert!(w.server.write_media(&p, w.now));
        }
        assert!(w.server.deadline() <= w.now);
        w.server
            .on_timeout(w.now, &mut w.tx, &mut w.events)
            .unwrap();
        let mut wire = Vec::new();
        while let Some((to, d)) = w.tx.pop_front() {
            if is_video(&d, pt) {
                wire.push(d.len());
            }
            let r = Receive::new(Protocol::Udp, w.server_addr, to, &d).unwrap();
            w.player.handle_input(Input::Receive(w.now, r)).unwrap();
            w.poll();
        }
        assert_eq!(wire.len(), 6, "{wire:?}");
        // The frame's five datagrams have one size (one GSO message); the short one is not
        // padded.
        assert!(wire[..5].iter().all(|l| *l == wire[0]), "{wire:?}");
        assert!(wire[5] < wire[0] - 600, "{wire:?}");
        // str0m, as a player, drops the padding: every payload arrives as written.
        let got = &w.payloads[w.payloads.len() - 6..];
        for (i, (payload, len)) in got.iter().zip(sizes).enumerate() {
            assert_eq!(payload, &vec![i as u8 + 1; len], "packet {i}");
        }
    }

    #[test]
    fn sender_reports_map_the_streams_rtp_time_on_the_direct_path() {
        let mut w = Wire::new(true, false);
        w.connect();
        let t0 = w.now;
        let ts_at = |at: Instant| 7_000 + 90 * at.duration_since(t0).as_millis() as u32;
        // 6 s of 30 frames a second, each packet's timestamp on a 90 kHz clock from t0.
        for n in 0..180u64 {
            let mut p = video_packet(9_000 + n, w.now);
            p.ts = ts_at(w.now);
            assert!(w.server.write_media(&p, w.now));
            w.round(&mut |_| false);
            w.advance(33);
        }
        // str0m reports once a second or so; from the packets that went through it, once a
        // second, it tells the stream's RTP time at the report's own instant.
        assert!(w.reports.len() >= 3, "{:?}", w.reports);
        for (at, rtp) in &w.reports[1..] {
            let off = rtp.wrapping_sub(ts_at(*at)) as i32;
            assert!(off.abs() <= 90 * 34, "report at {at:?} is {off} ticks off");
        }
    }

    #[test]
    fn with_the_direct_path_off_str0m_sends_every_packet() {
        let mut w = Wire::new(false, false);
        w.connect();
        for seq in 100..110u64 {
            let p = video_packet(seq, w.now);
            assert!(w.server.write_media(&p, w.now));
            w.round(&mut |_| false);
            w.advance(5);
        }
        let PeerKind::Egress(Egress {
            direct: DirectState::Off,
            ..
        }) = &w.server.kind
        else {
            panic!("the direct path is off");
        };
        assert_eq!(w.received.len(), 10);
    }

    #[test]
    fn link_figures_from_str0m_statistics() {
        use std::time::Duration;
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = LinkMeter::default();
        // The first statistics give no rate yet: nothing is reported.
        m.on_peer(t0, (1_000, 2_000), None, [None, None]);
        assert_eq!(m.stats.at, None);
        // 2 s later: 250 kB in and 500 kB out are 1 and 2 Mbit/s.
        let t1 = t0 + Duration::from_secs(2);
        m.on_peer(t1, (251_000, 502_000), None, [Some(0.01), None]);
        m.on_media(Some(ms(12)), Some(0.05));
        m.on_media(None, Some(0.02));
        assert_eq!(m.stats.at, Some(t1));
        assert_eq!(
            (m.stats.bitrate_in, m.stats.bitrate_out),
            (1_000_000, 2_000_000)
        );
        assert_eq!(m.stats.rtt, Some(ms(12)));
        assert_eq!(m.stats.loss, Some(0.05), "the worst line wins");
        // Next interval: loss starts over, the last RTT stays until a new one, nonsense
        // fractions are ignored or clamped, and counters that went back give 0, not a wrap.
        let t2 = t1 + Duration::from_secs(2);
        m.on_peer(t2, (1, 502_000), None, [Some(f32::NAN), None]);
        assert_eq!(m.stats.loss, None);
        assert_eq!(m.stats.rtt, Some(ms(12)));
        assert_eq!((m.stats.bitrate_in, m.stats.bitrate_out), (0, 0));
        m.on_media(None, Some(7.0));
        assert_eq!(m.stats.loss, Some(1.0));
    }

    #[test]
    fn every_track_goes_in_one_media_stream() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=msid:AAA trackA\r\n\
                   a=ssrc:1 msid:AAA trackA\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=msid:BBB trackV\r\na=ssrc:2 cname:x\r\na=ssrc:2 msid:BBB trackV\r\n";
        let out = one_media_stream(sdp);
        assert!(!out.contains("BBB"), "{out}");
        assert!(out.contains("a=msid:AAA trackV\r\n"), "{out}");
        assert!(out.contains("a=ssrc:2 msid:AAA trackV\r\n"), "{out}");
        assert!(out.contains("a=ssrc:2 cname:x\r\n"), "{out}");
        assert_eq!(one_media_stream("v=0\r\n"), "v=0\r\n");
    }
}
