//! The demux alone, fast: arbitrary operations on a `Demux` (add and remove peers and
//! ufrags, route datagrams from a few sources) with the invariants it promises: a routed
//! datagram goes to a live peer, and no peer keeps more addresses than the cap.

#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use relaycast_dataplane::demux::{self, Class, Demux};

fuzz_target!(|data: &[u8]| {
    let mut demux: Demux<u8> = Demux::with_address_cap(3);
    let mut live: HashSet<u8> = HashSet::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(op >> 2).min(tail.len());
        let (arg, tail) = tail.split_at(len);
        rest = tail;
        let peer = arg.first().copied().unwrap_or(0) % 8;
        match op & 3 {
            0 => {
                // A peer with the ufrag given by the argument.
                let ufrag = String::from_utf8_lossy(arg.get(1..).unwrap_or_default()).into_owned();
                demux.add_ufrag(ufrag, peer);
                live.insert(peer);
            }
            1 => {
                demux.remove_peer(peer);
                live.remove(&peer);
            }
            _ => {
                let source = SocketAddr::from(([127, 0, 0, 1], 40_000 + u16::from(op & 0x1c)));
                let class = demux::classify(arg);
                let ufrag = demux::stun_local_ufrag(arg);
                if ufrag.is_some() {
                    assert_eq!(class, Class::Stun);
                }
                if let Some(routed) = demux.route(source, arg) {
                    assert!(live.contains(&routed), "routed to a removed peer {routed}");
                }
            }
        }
        for p in &live {
            assert!(demux.addresses(*p).len() <= 3);
        }
    }
});
