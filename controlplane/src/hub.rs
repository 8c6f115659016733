//! The control plane's shared state on its one thread: the registry, the open signalling
//! connections and the handle to the data plane. Signalling, REST and data-plane events all
//! call into it; it applies the registry's effects (frames out, commands to cores).
//! Everything here runs on the control-plane thread, so plain `RefCell`s suffice.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use relaycast_dataplane::{Command, DataPlane, Event};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use crate::hooks::{HookAnswer, Hooks};
use crate::metrics::Metrics;
use crate::protocol::{self, ClientMessage, StreamName};
use crate::registry::{ConnId, Effect, Registry, RegistryConfig, RestReply, RestRequest};
use crate::relay::{RelayConfig, Relays};

/// What a signalling connection's task is told to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Send a text frame.
    Text(String),
    /// Send a close frame with this code and reason, then end.
    Close(u16, String),
}

/// The default bytes of text frames queued for one connection beyond which the connection is
/// dropped as too slow (no close frame: it would wait behind the rest): a client that stops
/// reading must not make the server hold an ever longer queue of the frames its streams
/// produce (a publisher's `sendData` reaches every player).
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

/// A connection's outgoing queue. `queued` counts the bytes of the text frames in it: the
/// hub adds what it queues, the connection's task subtracts what it has written.
struct ConnOut {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Rc<Cell<usize>>,
    /// Tells the connection's task to drop the connection now.
    kill: Rc<Notify>,
    /// The queue overflowed and the connection is being dropped: later frames are not queued.
    overflowed: Cell<bool>,
    /// Bytes queued beyond which the connection is dropped.
    limit: usize,
}

/// What a connection's task gets from [`Hub::open`].
pub struct ConnQueue {
    pub conn: ConnId,
    /// The frames to send, in order.
    pub rx: mpsc::UnboundedReceiver<Outgoing>,
    /// Bytes of text frames queued: subtract each one once written.
    pub queued: Rc<Cell<usize>>,
    /// Notified when the client is too slow for its queue: drop the connection at once.
    pub kill: Rc<Notify>,
}

/// Facts about the running server, for `/rest-api/server/info` and logs.
#[derive(Clone, Debug)]
pub struct ServerFacts {
    pub version: String,
    pub ws_addr: Option<SocketAddr>,
    pub rest_addr: Option<SocketAddr>,
    /// `wss://` signalling and `https://` REST, when TLS is configured.
    pub wss_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub media_addrs: Vec<SocketAddr>,
}

pub struct Hub {
    registry: RefCell<Registry>,
    conns: RefCell<HashMap<ConnId, ConnOut>>,
    next_conn: Cell<u64>,
    data: DataPlane,
    facts: RefCell<ServerFacts>,
    stopping: Cell<bool>,
    relays: Relays,
    hooks: Hooks,
    instance: String,
    metrics: Metrics,
}

impl Hub {
    pub fn new(
        config: RegistryConfig,
        relay: RelayConfig,
        data: DataPlane,
        facts: ServerFacts,
        hooks: Hooks,
    ) -> Self {
        Hub {
            instance: config.instance.clone(),
            relays: Relays::new(relay),
            hooks,
            registry: RefCell::new(Registry::new(config)),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            data,
            facts: RefCell::new(facts),
            stopping: Cell::new(false),
            metrics: Metrics::default(),
        }
    }

    /// Control-plane event counters (`/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry, read-only (`/metrics`).
    pub fn registry(&self) -> std::cell::Ref<'_, Registry> {
        self.registry.borrow()
    }

    pub fn data(&self) -> &DataPlane {
        &self.data
    }

    pub fn relays(&self) -> &Relays {
        &self.relays
    }

    /// This server's instance id (relay loop detection).
    pub fn instance(&self) -> String {
        self.instance.clone()
    }

    pub fn set_addrs(&self, ws: SocketAddr, rest: SocketAddr) {
        let mut facts = self.facts.borrow_mut();
        facts.ws_addr = Some(ws);
        facts.rest_addr = Some(rest);
    }

    pub fn facts(&self) -> ServerFacts {
        self.facts.borrow().clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// A WebSocket connection opened: its id and its outgoing queue, dropped beyond
    /// `max_queued` bytes.
    pub fn open(&self, remote: SocketAddr, max_queued: usize) -> ConnQueue {
        let conn = ConnId(self.next_conn.get());
        self.next_conn.set(conn.0 + 1);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Rc::new(Cell::new(0));
        let kill = Rc::new(Notify::new());
        let out = ConnOut {
            tx,
            queued: Rc::clone(&queued),
            kill: Rc::clone(&kill),
            overflowed: Cell::new(false),
            limit: max_queued,
        };
        self.conns.borrow_mut().insert(conn, out);
        self.registry
            .borrow_mut()
            .session_opened(conn, remote.to_string(), now_ms());
        tracing::debug!(conn = conn.0, %remote, "signalling connection opened");
        ConnQueue {
            conn,
            rx,
            queued,
            kill,
        }
    }

    /// One text frame from a connection.
    pub fn frame(&self, conn: ConnId, text: &str) {
        let mut out = Vec::new();
        match protocol::parse_client_frame(text) {
            Ok(message) => {
                tracing::trace!(conn = conn.0, message = message.name(), "client frame");
                if matches!(message, ClientMessage::Unsupported { .. }) {
                    self.metrics.signalling_error("unsupported_method");
                }
                self.registry
                    .borrow_mut()
                    .client_message(conn, message, now_ms(), &mut out);
            }
            Err(error) => {
                tracing::info!(conn = conn.0, %error, "bad client frame");
                self.metrics.signalling_error("bad_frame");
                self.registry.borrow().client_error(conn, &error, &mut out);
            }
        }
        self.apply(out);
    }

    /// A frame the connection could not take (binary, oversized): answered with `fail`.
    pub fn reject(&self, conn: ConnId, info: &str) {
        self.send(conn, Outgoing::Text(protocol::fail("unknown", info, None)));
    }

    /// A connection ended: its session's streams end.
    pub fn closed(&self, conn: ConnId) {
        self.conns.borrow_mut().remove(&conn);
        let mut out = Vec::new();
        self.registry.borrow_mut().session_closed(conn, &mut out);
        self.apply(out);
    }

    /// A REST request about streams and connections.
    pub fn rest(&self, request: RestRequest) -> RestReply {
        let mut out = Vec::new();
        let reply = self.registry.borrow_mut().rest(request, &mut out);
        self.apply(out);
        reply
    }

    /// The backend answered a REST hook: the request it held goes on or is refused.
    pub fn hook_answer(&self, answer: HookAnswer) {
        self.metrics
            .hook_call(answer.method.as_str(), answer.outcome.label(), answer.took);
        let mut out = Vec::new();
        self.registry
            .borrow_mut()
            .hook_answer(answer, now_ms(), &mut out);
        self.apply(out);
    }

    /// Counts for `/rest-api/server/info`.
    pub fn counts(&self) -> serde_json::Value {
        let registry = self.registry.borrow();
        json!({
            "streams": registry.stream_count(),
            "sessions": registry.session_count(),
            "mediaSessions": registry.media_count(),
        })
    }

    /// An event from the data plane: a relay's peer, or a client's.
    pub fn data_event(self: &std::rc::Rc<Self>, event: Event) {
        let Some(event) = self.relays.route(event) else {
            return;
        };
        let mut out = Vec::new();
        self.registry.borrow_mut().data_event(event, &mut out);
        self.apply(out);
    }

    /// Runs a closure on the registry and applies its effects (used by relays).
    pub(crate) fn with_registry<R>(
        &self,
        f: impl FnOnce(&mut Registry, &mut Vec<Effect>) -> R,
    ) -> R {
        let mut out = Vec::new();
        let result = f(&mut self.registry.borrow_mut(), &mut out);
        self.apply(out);
        result
    }

    /// Graceful stop: every client gets its final status and a close frame.
    pub fn shutdown(&self) {
        self.stopping.set(true);
        self.relays.shutdown();
        let mut out = Vec::new();
        self.registry.borrow_mut().shutdown(&mut out);
        self.apply(out);
        let conns: Vec<_> = self.conns.borrow().keys().copied().collect();
        for conn in conns {
            self.send(conn, Outgoing::Close(1001, "server shutting down".into()));
        }
    }

    /// REST hooks posted and not yet answered.
    pub fn hooks_in_flight(&self) -> usize {
        self.hooks.in_flight()
    }

    /// Number of open signalling connections.
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    pub(crate) fn send_command(&self, core: relaycast_dataplane::CoreId, command: Command) {
        if let Err(e) = self.data.send(core, command) {
            tracing::error!(core = %e.0, "data plane core is gone; command dropped");
        }
    }

    fn send(&self, conn: ConnId, message: Outgoing) {
        let conns = self.conns.borrow();
        let Some(out) = conns.get(&conn) else {
            return;
        };
        if out.overflowed.get() {
            return;
        }
        if let Outgoing::Text(text) = &message {
            let queued = out.queued.get() + text.len();
            if queued > out.limit {
                out.overflowed.set(true);
                self.metrics.signalling_error("slow_consumer");
                tracing::warn!(
                    conn = conn.0,
                    queued,
                    limit = out.limit,
                    "dropping a session that does not read what it is sent"
                );
                out.kill.notify_one();
                return;
            }
            out.queued.set(queued);
        }
        let _ = out.tx.send(message);
    }

    pub(crate) fn apply(&self, effects: Vec<Effect>) {
        let mut ended: Vec<StreamName> = Vec::new();
        let mut live: Vec<StreamName> = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send { conn, frame } => self.send(conn, Outgoing::Text(frame)),
                Effect::Data { core, command } => self.send_command(core, command),
                Effect::Close { conn } => {
                    self.send(conn, Outgoing::Close(1000, "terminated".into()));
                }
                Effect::StreamEnded { name } => ended.push(name),
                Effect::StreamLive { name } => live.push(name),
                Effect::StreamEvent {
                    name,
                    kind,
                    payload,
                } => self.relays.stream_event(&name, kind, &payload),
                Effect::Hook {
                    method,
                    body,
                    pending,
                } => self.hooks.call(method, body, pending),
            }
        }
        for name in ended {
            tracing::debug!(stream = %name, "stream ended");
            self.relays.stream_ended(&name);
        }
        for name in live {
            tracing::debug!(stream = %name, "stream live");
        }
    }
}

/// Milliseconds since the Unix epoch, as WCS reports `createDate`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
