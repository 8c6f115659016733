//! relaycast's control plane: everything that runs on the one control-plane thread.
//!
//! - [`signalling`]: the WebSocket server speaking WCS's signalling protocol ([`protocol`]);
//! - [`rest`]: the REST server (`/rest-api/...`, `/health`) and the embedded [`web`] apps;
//! - [`registry`]: sessions, streams and media sessions, as a pure state machine;
//! - [`hub`]: the shared state that applies the registry's effects;
//! - [`server`]: starting and stopping it all with the data plane;
//! - [`auth`]: REST credentials and signalling access rules; [`tls`]: rustls for `wss://`
//!   and `https://`, server and client side; [`metrics`]: the Prometheus `/metrics` page;
//! - [`client`] and [`relay`]: the WebSDK-protocol client and the server-to-server relays.

pub mod auth;
pub mod client;
pub mod hooks;
pub mod hub;
pub mod listen;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod relay;
pub mod rest;
pub mod server;
pub mod signalling;
pub mod tls;
pub mod web;

/// The server version reported in `getUserData` and `/rest-api/server/info`.
pub const VERSION: &str = concat!("relaycast-", env!("CARGO_PKG_VERSION"));
