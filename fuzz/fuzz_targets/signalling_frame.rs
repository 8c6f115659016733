//! Signalling frames: every line of the input is one WebSocket text frame from one client,
//! parsed by `protocol::parse_client_frame` and, when it parses, applied to a registry, so
//! both the parser and the registry's rules see arbitrary sequences. Neither may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relaycast_controlplane::protocol::parse_client_frame;
use relaycast_controlplane::registry::{ConnId, Registry, RegistryConfig, RestRequest};
use relaycast_dataplane::{Event, PeerId, StreamMedia};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut registry = Registry::new(RegistryConfig {
        cores: 2,
        ..RegistryConfig::default()
    });
    let mut out = Vec::new();
    registry.session_opened(ConnId(1), "127.0.0.1:1".into(), 0);
    registry.session_opened(ConnId(2), "127.0.0.1:2".into(), 0);
    for (n, line) in text.split('\n').enumerate() {
        let conn = ConnId(1 + (n % 2) as u64);
        match parse_client_frame(line) {
            Ok(message) => registry.client_message(conn, message, n as u64, &mut out),
            Err(error) => registry.client_error(conn, &error, &mut out),
        }
        // Let the data plane "answer" the peers created so far, so plays can find streams.
        registry.data_event(
            Event::Sdp {
                peer: PeerId(n as u64 + 1),
                sdp: String::new(),
                media: StreamMedia::default(),
            },
            &mut out,
        );
        registry.data_event(
            Event::Connected {
                peer: PeerId(n as u64),
            },
            &mut out,
        );
    }
    let _ = registry.rest(RestRequest::StreamFindAll, &mut out);
    registry.session_closed(ConnId(1), &mut out);
    registry.shutdown(&mut out);
});
