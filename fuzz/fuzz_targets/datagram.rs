//! Media datagrams (STUN, DTLS, RTP, RTCP, garbage) as a core's socket receives them: the
//! input is split into datagrams (a length byte before each), each classified, routed by the
//! demux (which learns addresses from STUN) and fed with the clock to a publisher peer made
//! from a browser-like offer, as the core does. Nothing may panic.

#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relaycast_dataplane::demux::{self, Demux};
use relaycast_dataplane::peer::Peer;
use relaycast_dataplane::udp::{Datagram, SendBatch};
use relaycast_dataplane::{Continuity, PeerId, Role, StreamId};

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = "127.0.0.1:31000".parse().expect("a socket address");
    common::with_setup(|setup| {
        let role = Role::Ingest {
            stream: StreamId(1),
            continuity: Continuity::default(),
        };
        let Ok((mut peer, _answer, _media)) = Peer::accept(PeerId(1), common::OFFER, role, setup)
        else {
            return;
        };
        let mut demux: Demux<u8> = Demux::with_address_cap(4);
        demux.add_ufrag(peer.ice_ufrag(), 1);
        demux.add_ufrag("abcd".to_owned(), 2);
        let mut tx = SendBatch::new(64);
        let mut events = Vec::new();
        let mut now = Instant::now();
        let mut rest = data;
        while let Some((&header, tail)) = rest.split_first() {
            let len = (header as usize).min(tail.len());
            let (datagram, tail) = tail.split_at(len);
            rest = tail;
            // The header's low bits pick one of a few sources, so addresses are learnt.
            let source = SocketAddr::from(([127, 0, 0, 1], 40_000 + u16::from(header & 3)));
            let _ = demux::classify(datagram);
            let _ = demux::stun_local_ufrag(datagram);
            if demux.route(source, datagram) == Some(1) || header & 4 != 0 {
                // Bit 3 gives the datagram a kernel arrival stamp, as a client socket has.
                let received = Datagram {
                    source,
                    destination: local,
                    payload: datagram,
                    truncated: false,
                    arrival_unix_micros: (header & 8 != 0).then_some(1_795_000_000_000_000),
                };
                if peer.receive(now, received).is_err() {
                    return;
                }
                if peer.drive(now, &mut tx, &mut events).is_err() {
                    return;
                }
            }
            now += Duration::from_millis(u64::from(header >> 4));
            if peer.on_timeout(now, &mut tx, &mut events).is_err() {
                return;
            }
            if tx.len() > 256 {
                tx = SendBatch::new(64);
            }
            events.clear();
        }
    });
});
