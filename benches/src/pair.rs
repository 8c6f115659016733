//! N subscribers of one stream, wired in memory: for each, a server-side egress peer (what a
//! core holds for a player) connected over ICE + DTLS to a client-side probe peer, by handing
//! datagrams between them with a virtual clock. The forwarding bench then drives the data
//! plane's own per-packet path: [`Peer::write_media`] on every egress peer, the peer's drive
//! that seals and queues the packet (the direct egress path's header and SRTP, or str0m's
//! with it off), then the core's batched send.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaycast_dataplane::direct::ResendHistory;
use relaycast_dataplane::media::MediaPacket;
use relaycast_dataplane::peer::{self, Peer, PeerEvent, PeerSetup};
use relaycast_dataplane::synth::SynthConfig;
use relaycast_dataplane::udp::{Datagram, FlushOutcome, SendBatch};
use relaycast_dataplane::{CoreId, DataPlaneConfig, PeerId, Role, StreamId};
use str0m::config::DtlsCert;
use str0m::media::MediaKind;

/// Payload of the forwarded video packet (a full packet of a 1.5 Mbps stream).
pub const PAYLOAD: usize = 1100;

/// One stream's subscribers on one core.
pub struct Subscribers {
    egress: Vec<Peer>,
    /// The client ends, kept alive (never read after the handshake).
    _probes: Vec<Peer>,
    /// The core's socket, and one real socket per subscriber address to absorb the sends.
    socket: UdpSocket,
    _sinks: Vec<UdpSocket>,
    tx: SendBatch,
    events: Vec<PeerEvent>,
    seq: u64,
    payload: Arc<[u8]>,
    /// The stream's recent video, as a core keeps it for the players' NACKs.
    history: ResendHistory,
}

impl Subscribers {
    /// Builds and connects `n` subscriber pairs.
    pub fn connect(n: usize) -> Result<Subscribers, String> {
        let config = DataPlaneConfig::default();
        let cert = certificate();
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let server_addr = socket.local_addr().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let server_candidates = [server_addr];
        let server_setup = PeerSetup {
            core: CoreId(0),
            now,
            config: &config,
            cert: &cert,
            candidates: &server_candidates,
        };
        // The stream's codecs, as a synthetic publisher offers them.
        let (_, _, media) = Peer::offer(
            PeerId(u64::MAX),
            Role::Generate(SynthConfig::default()),
            &server_setup,
        )
        .map_err(|e| e.to_string())?;

        let mut egress = Vec::with_capacity(n);
        let mut probes = Vec::with_capacity(n);
        let mut sinks = Vec::with_capacity(n);
        for i in 0..n {
            let sink = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let client_addr = sink.local_addr().map_err(|e| e.to_string())?;
            let client_candidates = [client_addr];
            let client_setup = PeerSetup {
                candidates: &client_candidates,
                ..server_setup
            };
            let (mut probe, offer, _) =
                Peer::offer(PeerId(2 * i as u64 + 1), Role::Probe, &client_setup)
                    .map_err(|e| e.to_string())?;
            let role = Role::Egress {
                stream: StreamId(1),
                home: CoreId(0),
                media,
                relay: false,
            };
            let (server, answer, _) =
                Peer::accept(PeerId(2 * i as u64 + 2), &offer, role, &server_setup)
                    .map_err(|e| e.to_string())?;
            probe.apply_answer(&answer).map_err(|e| e.to_string())?;
            let (server, probe) = handshake(server, server_addr, probe, client_addr, now)?;
            egress.push(server);
            probes.push(probe);
            sinks.push(sink);
        }
        Ok(Subscribers {
            egress,
            _probes: probes,
            socket,
            _sinks: sinks,
            tx: SendBatch::new(256),
            events: Vec::new(),
            seq: 0,
            payload: vec![0x42u8; PAYLOAD].into(),
            history: ResendHistory::new(peer::RESEND_HISTORY, peer::RESEND_HISTORY_PACKETS),
        })
    }

    pub fn len(&self) -> usize {
        self.egress.len()
    }

    pub fn is_empty(&self) -> bool {
        self.egress.is_empty()
    }

    /// Writes the next video packet of the stream to every subscriber (RTP + SRTP), leaving
    /// the sealed datagrams queued; returns how many are queued.
    pub fn forward(&mut self, now: Instant) -> usize {
        self.seq += 1;
        let packet = MediaPacket {
            kind: MediaKind::Video,
            seq: self.seq,
            ts: (self.seq * 3000) as u32,
            marker: true,
            ext: Default::default(),
            payload: Arc::clone(&self.payload),
            arrival: now,
        };
        // Once per packet, as a core does for its subscribers.
        self.history.push(&packet);
        for peer in &mut self.egress {
            peer.write_media(&packet, now);
            // A written packet is sealed when the peer is next driven (str0m's too, on its
            // next timeout); the core drives the peer at the end of the batch, so the bench
            // does too.
            if peer.deadline() <= now {
                let _ = peer.on_timeout(now, &mut self.tx, &mut self.events);
            }
        }
        self.events.clear();
        self.tx.len()
    }

    /// Drops the queued datagrams (the forward without the send).
    pub fn discard(&mut self) -> usize {
        let mut n = 0;
        while self.tx.pop_front().is_some() {
            n += 1;
        }
        n
    }

    /// Sends the queued datagrams as the core does (`sendmmsg` batches).
    pub fn flush(&mut self) -> FlushOutcome {
        let outcome = self.tx.flush(self.socket.as_raw_fd());
        // A full socket buffer leaves datagrams queued; drop them so every round is alike.
        self.discard();
        outcome
    }
}

/// Moves datagrams between the two ends, advancing a virtual clock, until both say
/// Connected.
fn handshake(
    mut server: Peer,
    server_addr: SocketAddr,
    mut client: Peer,
    client_addr: SocketAddr,
    start: Instant,
) -> Result<(Peer, Peer), String> {
    let (mut ctx, mut stx) = (SendBatch::new(16), SendBatch::new(16));
    let (mut cev, mut sev) = (Vec::new(), Vec::new());
    let (mut client_up, mut server_up) = (false, false);
    let mut now = start;
    for _ in 0..5_000 {
        if now >= client.deadline() {
            client
                .on_timeout(now, &mut ctx, &mut cev)
                .map_err(|e| format!("client: {e}"))?;
        }
        if now >= server.deadline() {
            server
                .on_timeout(now, &mut stx, &mut sev)
                .map_err(|e| format!("server: {e}"))?;
        }
        loop {
            let mut moved = false;
            while let Some((dst, data)) = ctx.pop_front() {
                moved = true;
                if dst == server_addr {
                    server
                        .receive(now, datagram(client_addr, dst, &data))
                        .map_err(|e| format!("server: {e}"))?;
                    server
                        .drive(now, &mut stx, &mut sev)
                        .map_err(|e| format!("server: {e}"))?;
                }
            }
            while let Some((dst, data)) = stx.pop_front() {
                moved = true;
                if dst == client_addr {
                    client
                        .receive(now, datagram(server_addr, dst, &data))
                        .map_err(|e| format!("client: {e}"))?;
                    client
                        .drive(now, &mut ctx, &mut cev)
                        .map_err(|e| format!("client: {e}"))?;
                }
            }
            if !moved {
                break;
            }
        }
        client_up |= cev.iter().any(|e| matches!(e, PeerEvent::Connected));
        server_up |= sev.iter().any(|e| matches!(e, PeerEvent::Connected));
        cev.clear();
        sev.clear();
        if client_up && server_up {
            return Ok((server, client));
        }
        now += Duration::from_millis(5);
    }
    Err(format!(
        "in-memory handshake did not complete (client {client_up}, server {server_up})"
    ))
}

fn certificate() -> DtlsCert {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("the crypto backend generates a DTLS certificate")
}

/// A datagram between the pair's in-memory addresses.
fn datagram<'a>(source: SocketAddr, destination: SocketAddr, payload: &'a [u8]) -> Datagram<'a> {
    Datagram {
        source,
        destination,
        payload,
        truncated: false,
        arrival_unix_micros: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_connect_and_forward_one_datagram_each() {
        let mut subs = Subscribers::connect(3).unwrap();
        let queued = subs.forward(Instant::now());
        assert_eq!(queued, 3, "one sealed datagram per subscriber");
        assert_eq!(subs.flush().sent(), 3);
    }

    /// A subscriber and its player in virtual time: forwards numbered video packets, carries
    /// datagrams both ways, and lets a test lose or hold some.
    struct Link {
        subs: Subscribers,
        server: SocketAddr,
        client: SocketAddr,
        now: Instant,
        player_tx: SendBatch,
        events: Vec<PeerEvent>,
    }

    impl Link {
        fn new() -> Link {
            let subs = Subscribers::connect(1).unwrap();
            let server = subs.socket.local_addr().unwrap();
            let client = subs._sinks[0].local_addr().unwrap();
            Link {
                subs,
                server,
                client,
                now: Instant::now(),
                player_tx: SendBatch::new(16),
                events: Vec::new(),
            }
        }

        /// Forwards video packet `seq`; the player gets it unless `lose`.
        fn forward(&mut self, seq: u64, lose: bool) {
            use relaycast_dataplane::synth::{Kind, Trailer, unix_micros};
            let mut payload = vec![0x42u8; 600];
            let trailer = Trailer {
                kind: Kind::Video,
                seq,
                sent_unix_micros: unix_micros(),
            };
            payload.extend_from_slice(&trailer.to_bytes());
            self.subs.payload = payload.into();
            self.subs.forward(self.now);
            if lose {
                while self.subs.tx.pop_front().is_some() {}
            } else {
                self.deliver_to_player();
            }
        }

        fn deliver_to_player(&mut self) {
            while let Some((destination, data)) = self.subs.tx.pop_front() {
                let player = &mut self.subs._probes[0];
                player
                    .receive(self.now, datagram(self.server, destination, &data))
                    .unwrap();
                player
                    .drive(self.now, &mut self.player_tx, &mut self.events)
                    .unwrap();
            }
        }

        /// Lets `by` pass for both ends; returns what the player sent meanwhile (its RTCP).
        fn advance(&mut self, by: Duration) -> Vec<Vec<u8>> {
            self.now += by;
            let now = self.now;
            let player = &mut self.subs._probes[0];
            if player.deadline() <= now {
                player
                    .on_timeout(now, &mut self.player_tx, &mut self.events)
                    .unwrap();
            }
            let server = &mut self.subs.egress[0];
            if server.deadline() <= now {
                server
                    .on_timeout(now, &mut self.subs.tx, &mut self.events)
                    .unwrap();
            }
            self.deliver_to_player();
            let mut sent = Vec::new();
            while let Some((_, data)) = self.player_tx.pop_front() {
                sent.push(data);
            }
            sent
        }

        /// Hands the player's datagrams to the server; the server answers at once.
        fn deliver_to_server(&mut self, datagrams: &[Vec<u8>]) {
            let server = &mut self.subs.egress[0];
            for data in datagrams {
                server
                    .receive(self.now, datagram(self.client, self.server, data))
                    .unwrap();
                server
                    .drive(self.now, &mut self.subs.tx, &mut self.events)
                    .unwrap();
            }
            // What the core does with a NACK on the direct path: resend from its history.
            for event in self.events.drain(..) {
                if let PeerEvent::Resend(seqs) = event {
                    for seq in seqs {
                        if let Some(packet) = self.subs.history.get(seq) {
                            server.resend(packet);
                        }
                    }
                }
            }
            if server.deadline() <= self.now {
                server
                    .on_timeout(self.now, &mut self.subs.tx, &mut self.events)
                    .unwrap();
            }
            self.deliver_to_player();
        }

        fn lost(&self) -> u64 {
            self.subs._probes[0].report().probe.unwrap().lost
        }
    }

    #[test]
    fn a_nack_is_answered_from_the_subscribers_recent_history_only() {
        // A packet lost on the way to the player is resent when the player asks in time.
        let mut link = Link::new();
        for seq in 0..6 {
            link.forward(seq, seq == 2);
        }
        assert_eq!(link.lost(), 1);
        let mut asked = Vec::new();
        for _ in 0..20 {
            asked.extend(link.advance(Duration::from_millis(10)));
        }
        assert!(!asked.is_empty(), "the player sent no RTCP (no NACK)");
        link.deliver_to_server(&asked);
        assert_eq!(link.lost(), 0, "the resend filled the gap");

        // A NACK that reaches the server after the resend history has moved on finds
        // nothing to resend.
        let mut link = Link::new();
        for seq in 0..6 {
            link.forward(seq, seq == 2);
        }
        let mut late = Vec::new();
        for _ in 0..20 {
            late.extend(link.advance(Duration::from_millis(10)));
        }
        assert!(!late.is_empty());
        link.advance(relaycast_dataplane::peer::RESEND_HISTORY + Duration::from_millis(300));
        // Sending goes on meanwhile, which ages the old packets out.
        link.forward(6, false);
        link.deliver_to_server(&late);
        assert_eq!(
            link.lost(),
            1,
            "a packet older than the history is not resent"
        );
    }

    #[test]
    fn a_probe_takes_latency_to_the_kernel_arrival_stamp_when_there_is_one() {
        use relaycast_dataplane::synth::{Kind, Trailer, unix_micros};
        let mut subs = Subscribers::connect(1).unwrap();
        let server = subs.socket.local_addr().unwrap();
        // Sent 10 s ago: a latency taken at the read would be about 10 s.
        let sent = unix_micros() - 10_000_000;
        let mut deliver = |seq: u64, arrival: Option<u64>| {
            let mut payload = vec![0x42u8; 200];
            payload.extend_from_slice(
                &Trailer {
                    kind: Kind::Video,
                    seq,
                    sent_unix_micros: sent,
                }
                .to_bytes(),
            );
            subs.payload = payload.into();
            let now = Instant::now();
            assert_eq!(subs.forward(now), 1);
            let (destination, data) = subs.tx.pop_front().unwrap();
            let probe = &mut subs._probes[0];
            let datagram = Datagram {
                arrival_unix_micros: arrival,
                ..datagram(server, destination, &data)
            };
            assert!(probe.receive(now, datagram).unwrap());
            probe.drive(now, &mut subs.tx, &mut subs.events).unwrap();
            while subs.tx.pop_front().is_some() {}
            probe.report().latency.unwrap()
        };

        let stamped = deliver(0, Some(sent + 1_500));
        assert_eq!(stamped.len(), 1);
        assert!(
            (1_400..=1_600).contains(&stamped.max()),
            "latency {} us, not the 1.5 ms to the stamp",
            stamped.max()
        );
        let unstamped = deliver(1, None);
        assert_eq!(unstamped.len(), 2);
        assert!(
            unstamped.max() >= 9_900_000,
            "without a stamp the latency runs to the read: {} us",
            unstamped.max()
        );
    }
}
