//! What the SDP and datagram targets share: a DTLS certificate made once, a core's setup,
//! and a browser-like offer.

use std::net::SocketAddr;
use std::time::Instant;

use relaycast_dataplane::peer::PeerSetup;
use relaycast_dataplane::{CoreId, DataPlaneConfig};
use str0m::config::DtlsCert;

pub const OFFER: &str = include_str!("../corpus/sdp_offer/seed-chrome-publish");

thread_local! {
    static CERT: DtlsCert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("the crypto backend makes a DTLS certificate");
}

/// Runs `f` with the setup of a core listening on 127.0.0.1:31000.
pub fn with_setup<R>(f: impl FnOnce(&PeerSetup<'_>) -> R) -> R {
    let config = DataPlaneConfig::default();
    let candidates: [SocketAddr; 1] = ["127.0.0.1:31000".parse().expect("a socket address")];
    CERT.with(|cert| {
        let setup = PeerSetup {
            core: CoreId(0),
            now: Instant::now(),
            config: &config,
            cert,
            candidates: &candidates,
        };
        f(&setup)
    })
}
