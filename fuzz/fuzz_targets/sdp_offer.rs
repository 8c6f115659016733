//! SDP offers as a browser sends them in `publishStream`/`playStream`: parsed by str0m and
//! accepted by the data plane's `Peer::accept` as a publisher (ingest) and as a player
//! (egress of a stream published with a real offer). Every failure must be an error value.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use relaycast_dataplane::peer::Peer;
use relaycast_dataplane::{Continuity, CoreId, PeerId, Role, StreamId, StreamMedia};

fn published_media() -> StreamMedia {
    common::with_setup(|setup| {
        let role = Role::Ingest {
            stream: StreamId(1),
            continuity: Continuity::default(),
        };
        let (_peer, _answer, media) =
            Peer::accept(PeerId(1), common::OFFER, role, setup).expect("the seed offer is valid");
        media
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let _ = str0m::change::SdpOffer::from_sdp_string(offer);
    common::with_setup(|setup| {
        let ingest = Role::Ingest {
            stream: StreamId(2),
            continuity: Continuity::default(),
        };
        let _ = Peer::accept(PeerId(2), offer, ingest, setup);
        let egress = Role::Egress {
            stream: StreamId(1),
            home: CoreId(0),
            media: published_media(),
            relay: false,
        };
        let _ = Peer::accept(PeerId(3), offer, egress, setup);
    });
});
