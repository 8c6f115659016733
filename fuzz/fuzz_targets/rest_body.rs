//! REST bodies: the first byte picks a method, the rest is its body, parsed by
//! `rest::parse_request` and, when it parses, answered by a registry. Never a panic; every
//! refusal is a 4xx.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relaycast_controlplane::registry::{Registry, RegistryConfig};
use relaycast_controlplane::rest::parse_request;

const PATHS: [&str; 7] = [
    "/rest-api/stream/find_all",
    "/rest-api/stream/find",
    "/rest-api/stream/terminate",
    "/rest-api/connection/find_all",
    "/rest-api/connection/terminate",
    "/rest-api/stream/terminate/",
    "/rest-api/nope",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[pick as usize % PATHS.len()];
    match parse_request(path, body) {
        Ok(request) => {
            let mut registry = Registry::new(RegistryConfig::default());
            let mut out = Vec::new();
            let reply = registry.rest(request, &mut out);
            assert!(reply.status == 200 || reply.status == 404, "{reply:?}");
        }
        Err(reply) => assert!((400..500).contains(&reply.status), "{reply:?}"),
    }
});
