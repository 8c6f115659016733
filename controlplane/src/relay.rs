//! Server-to-server relays (`/rest-api/pull/*`): this server publishes a local stream to
//! another server (push), or plays another server's stream and republishes it here (pull),
//! speaking only the public WebSDK protocol through [`crate::client::Session`]. The relay's
//! peer lives on this server's data plane: an egress subscriber of the local stream (push) or
//! the ingest source of the local stream (pull), built with `Command::Offer`, so this server
//! is the offerer and the full-ICE controlling agent.
//!
//! Each relay is one task on the control-plane thread. Once established, a relay whose
//! connection drops reconnects with exponential backoff while its source lives; a pull
//! relay's local players keep their peers (the data plane keeps the stream's route and its
//! sequence numbers continue), so they see a pause, never a renegotiation.
//!
//! Stream events (a publisher's mute, unmute and `sendData`) cross relays too: a push relay
//! sends its local stream's events to the remote stream, and a pull relay hands the remote
//! stream's events to the local one. On every (re)connect the mute state is brought up to
//! date: a push relay sends the local stream's, a pull relay takes the remote's from PLAYING.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use relaycast_dataplane::{
    Command, Continuity, CoreId, Event, LinkStats, PeerId, PeerReport, Role, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::client::{ClientError, ClientTimeouts, Session, StreamHandle, StreamSignal};
use crate::hub::{Hub, now_ms};
use crate::protocol::{
    ConnectionRequest, Info, MediaSessionId, PublisherEvent, StreamName, StreamStatus,
};
use crate::registry::{RELAY_LOOP, RestReply, error_reply};

/// How relays behave.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The longest a `/pull/push` or `/pull/pull` call waits for the relay to be established
    /// before it answers with the relay's current state.
    pub rest_timeout: Duration,
    /// WebSocket connect + `getUserData`, and the remote's answer.
    pub connect_timeout: Duration,
    /// From the answer to PUBLISHING/PLAYING (ICE + DTLS).
    pub established_timeout: Duration,
    /// Reconnect an established relay whose connection drops.
    pub reconnect: bool,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Give up after this many consecutive failed attempts (0: never).
    pub max_attempts: u32,
    /// How a `wss://` remote's certificate is verified (system roots by default).
    pub tls: crate::tls::ClientTls,
    /// Sent as `custom.token` in `connection`, for remotes that require a shared secret.
    pub token: Option<String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            rest_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(4),
            established_timeout: Duration::from_secs(10),
            reconnect: true,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
            max_attempts: 0,
            tls: crate::tls::ClientTls::default(),
            token: None,
        }
    }
}

/// A relay's state as `/pull/find_all` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RelayStatus {
    New,
    Pending,
    Publishing,
    Playing,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
}

/// The relay object of PROTOCOL.md, plus the retry state.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayInfo {
    pub uri: String,
    pub local_media_session_id: String,
    pub remote_media_session_id: Option<String>,
    pub local_stream_name: String,
    pub remote_stream_name: String,
    pub status: RelayStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    pub direction: Direction,
    /// Connection attempts so far (1 once the first attempt started).
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub create_date: u64,
    /// The link to the remote server while the relay is up (null otherwise).
    pub link: Option<RelayLink>,
}

/// What the relay's peer measures of its link to the remote server, refreshed every
/// [`LINK_INTERVAL`] while the relay is up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayLink {
    /// Round-trip time from RTCP, when the remote's reports carry one.
    pub rtt_ms: Option<f64>,
    /// Packets lost in percent, from RTCP receiver reports (the worse direction).
    pub loss_pct: Option<f64>,
    /// Bits per second received from and sent to the remote, all bytes on the wire.
    pub bitrate_in: u64,
    pub bitrate_out: u64,
}

impl RelayLink {
    fn from_stats(link: &LinkStats) -> Option<RelayLink> {
        link.at?;
        Some(RelayLink {
            rtt_ms: link.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            loss_pct: link.loss.map(|l| (f64::from(l) * 1e4).round() / 1e2),
            bitrate_in: link.bitrate_in,
            bitrate_out: link.bitrate_out,
        })
    }
}

/// How often a relay that is up reads its peer's link figures.
const LINK_INTERVAL: Duration = Duration::from_secs(2);

/// Why a relay is being stopped from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    /// `/pull/terminate`.
    Terminated,
    /// The local stream ended (push: its source; pull: terminated here).
    LocalEnded,
    /// The server is shutting down.
    Shutdown,
}

struct Relay {
    info: RefCell<RelayInfo>,
    stop: watch::Sender<Option<StopReason>>,
    /// Bumped on every state change, for REST calls waiting on the relay.
    changed: watch::Sender<u64>,
    finished: Cell<bool>,
    /// The local stream's events, for a push relay to pass on.
    events: mpsc::UnboundedSender<(PublisherEvent, Value)>,
}

/// A relay's receiving end of its local stream's events.
type EventsRx = mpsc::UnboundedReceiver<(PublisherEvent, Value)>;

impl Relay {
    fn update(&self, f: impl FnOnce(&mut RelayInfo)) {
        let before = self.info.borrow().status;
        f(&mut self.info.borrow_mut());
        let info = self.info.borrow();
        if info.status != before {
            tracing::info!(direction = ?info.direction, uri = %info.uri,
                local = %info.local_stream_name, remote = %info.remote_stream_name,
                relay = %info.local_media_session_id, status = ?info.status,
                info = info.info.as_deref().unwrap_or(""), attempts = info.attempts,
                "relay state changed");
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn status(&self) -> RelayStatus {
        self.info.borrow().status
    }

    fn active(&self) -> bool {
        !self.finished.get() && self.status() != RelayStatus::Failed
    }
}

/// Every relay of this server and the routes of their peers' events.
pub struct Relays {
    config: RelayConfig,
    list: RefCell<Vec<Rc<Relay>>>,
    routes: RefCell<HashMap<PeerId, mpsc::UnboundedSender<Event>>>,
}

impl Relays {
    pub fn new(config: RelayConfig) -> Self {
        Relays {
            config,
            list: RefCell::new(Vec::new()),
            routes: RefCell::new(HashMap::new()),
        }
    }

    /// Hands a data-plane event to the relay owning its peer; returns it when no relay does.
    pub fn route(&self, event: Event) -> Option<Event> {
        let peer = match &event {
            Event::Sdp { peer, .. }
            | Event::Negotiated { peer, .. }
            | Event::Connected { peer }
            | Event::Failed { peer, .. }
            | Event::Closed { peer, .. } => *peer,
            // A pull relay's picture size is the local stream's: the registry takes it.
            Event::Resolution { .. } => return Some(event),
        };
        let mut routes = self.routes.borrow_mut();
        let Some(tx) = routes.get(&peer) else {
            return Some(event);
        };
        let last = matches!(event, Event::Failed { .. } | Event::Closed { .. });
        let _ = tx.send(event);
        if last {
            routes.remove(&peer);
        }
        None
    }

    /// A local stream ended: push relays of it end (the remote stream is unpublished), and a
    /// pull relay whose local stream was terminated stops playing the remote one.
    pub fn stream_ended(&self, name: &StreamName) {
        for relay in self.list.borrow().iter() {
            if relay.info.borrow().local_stream_name == name.0 && !relay.finished.get() {
                relay.stop.send_if_modified(|r| {
                    if r.is_none() {
                        *r = Some(StopReason::LocalEnded);
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }

    /// Local stream `name`'s source sent an event: push relays of it that are up pass it on.
    /// One that is reconnecting does not queue it (its queue would grow for as long as the
    /// remote is away); it sends the mute state when it is back.
    pub fn stream_event(&self, name: &StreamName, kind: PublisherEvent, payload: &Value) {
        for relay in self.list.borrow().iter() {
            let info = relay.info.borrow();
            if info.direction == Direction::Push
                && info.local_stream_name == name.0
                && info.status == RelayStatus::Publishing
                && !relay.finished.get()
            {
                let _ = relay.events.send((kind, payload.clone()));
            }
        }
    }

    /// The server is stopping: every relay ends its remote side.
    pub fn shutdown(&self) {
        for relay in self.list.borrow().iter() {
            let _ = relay.stop.send(Some(StopReason::Shutdown));
        }
    }

    /// Relays whose tasks are still running.
    pub fn running(&self) -> usize {
        self.list
            .borrow()
            .iter()
            .filter(|r| !r.finished.get())
            .count()
    }

    /// Every relay's current state (`/pull/find_all`, metrics).
    pub fn snapshot(&self) -> Vec<RelayInfo> {
        self.list
            .borrow()
            .iter()
            .map(|r| r.info.borrow().clone())
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RelayBody {
    uri: Option<String>,
    local_stream_name: Option<String>,
    remote_stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RelayTerminateBody {
    uri: Option<String>,
    local_media_session_id: Option<String>,
    local_stream_name: Option<String>,
    remote_stream_name: Option<String>,
}

/// Answers a `/rest-api/pull/...` call.
pub async fn rest(hub: &Rc<Hub>, path: &str, body: &[u8]) -> RestReply {
    match path.trim_end_matches('/') {
        "/rest-api/pull/push" => match crate::rest::parse::<RelayBody>(body) {
            Ok(b) => start(hub, Direction::Push, b).await,
            Err(reply) => reply,
        },
        "/rest-api/pull/pull" => match crate::rest::parse::<RelayBody>(body) {
            Ok(b) => start(hub, Direction::Pull, b).await,
            Err(reply) => reply,
        },
        "/rest-api/pull/find_all" => {
            let list = hub.relays().snapshot();
            if list.is_empty() {
                return error_reply(404, "no relays");
            }
            RestReply {
                status: 200,
                body: serde_json::to_value(list).unwrap_or(Value::Null),
            }
        }
        "/rest-api/pull/terminate" => match crate::rest::parse::<RelayTerminateBody>(body) {
            Ok(b) => terminate(hub, b).await,
            Err(reply) => reply,
        },
        other => error_reply(404, &format!("no such method: {other}")),
    }
}

fn check_uri(uri: &str) -> Result<(), String> {
    let parsed = url::Url::parse(uri).map_err(|e| format!("uri {uri:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "ws" | "wss") {
        return Err(format!("uri {uri:?} must be ws:// or wss://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("uri {uri:?} has no host"));
    }
    Ok(())
}

async fn start(hub: &Rc<Hub>, direction: Direction, body: RelayBody) -> RestReply {
    let Some(uri) = body.uri.filter(|u| !u.is_empty()) else {
        return error_reply(400, "uri is required");
    };
    if let Err(e) = check_uri(&uri) {
        return error_reply(400, &e);
    }
    let local = body.local_stream_name.filter(|n| !n.is_empty());
    let remote = body.remote_stream_name.filter(|n| !n.is_empty());
    let (local, remote) = match (local, remote) {
        (Some(l), Some(r)) => (l, r),
        (Some(l), None) => (l.clone(), l),
        (None, Some(r)) => (r.clone(), r),
        (None, None) => {
            return error_reply(400, "localStreamName or remoteStreamName is required");
        }
    };
    if hub.is_stopping() {
        return error_reply(503, "the server is shutting down");
    }
    let relays = hub.relays();
    // A failed relay with the same key is replaced.
    let duplicate = relays.list.borrow().iter().any(|r| {
        let i = r.info.borrow();
        r.active()
            && i.direction == direction
            && match direction {
                Direction::Push => i.uri == uri && i.remote_stream_name == remote,
                Direction::Pull => i.local_stream_name == local,
            }
    });
    if duplicate {
        return error_reply(
            409,
            &match direction {
                Direction::Push => format!("a push of {remote:?} to {uri} already exists"),
                Direction::Pull => format!("a pull into local stream {local:?} already exists"),
            },
        );
    }
    let local_id = MediaSessionId(uuid::Uuid::new_v4().to_string());
    let local_name = StreamName(local.clone());
    let pull_stream = match direction {
        Direction::Push => {
            let live = hub.with_registry(|r, _| {
                r.stream(&local_name)
                    .map(|s| s.media.is_some())
                    .unwrap_or(false)
            });
            if !live {
                return error_reply(404, &format!("local stream {local:?} not found"));
            }
            None
        }
        Direction::Pull => {
            let opened = hub.with_registry(|r, _| {
                r.relay_source_open(&local_name, &local_id, Vec::new(), now_ms())
            });
            match opened {
                Some(placed) => Some(placed),
                None => {
                    return error_reply(409, &format!("local stream name {local:?} is in use"));
                }
            }
        }
    };
    relays.list.borrow_mut().retain(|r| {
        let i = r.info.borrow();
        !(i.direction == direction
            && match direction {
                Direction::Push => i.uri == uri && i.remote_stream_name == remote,
                Direction::Pull => i.local_stream_name == local,
            })
    });
    let (stop, stop_rx) = watch::channel(None);
    let (changed, mut changed_rx) = watch::channel(0);
    let (events, events_rx) = mpsc::unbounded_channel();
    let relay = Rc::new(Relay {
        info: RefCell::new(RelayInfo {
            uri,
            local_media_session_id: local_id.0.clone(),
            remote_media_session_id: None,
            local_stream_name: local,
            remote_stream_name: remote,
            status: RelayStatus::New,
            info: None,
            direction,
            attempts: 0,
            last_error: None,
            create_date: now_ms(),
            link: None,
        }),
        stop,
        changed,
        finished: Cell::new(false),
        events,
    });
    relays.list.borrow_mut().push(Rc::clone(&relay));
    tracing::info!(?direction, relay = %local_id, "relay requested");
    tokio::task::spawn_local(run(
        Rc::clone(hub),
        Rc::clone(&relay),
        stop_rx,
        events_rx,
        pull_stream,
    ));

    // Answer once the relay is established or has failed, or at the REST deadline.
    let wait = async {
        loop {
            match relay.status() {
                RelayStatus::Publishing | RelayStatus::Playing | RelayStatus::Failed => return,
                _ => {}
            }
            if changed_rx.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(relays.config.rest_timeout, wait).await;
    let info = relay.info.borrow().clone();
    let mut body = serde_json::to_value(&info).unwrap_or(Value::Null);
    if info.status == RelayStatus::Failed {
        if let Value::Object(o) = &mut body {
            o.insert("error".into(), json!(info.info.clone().unwrap_or_default()));
        }
        return RestReply { status: 500, body };
    }
    RestReply { status: 200, body }
}

async fn terminate(hub: &Rc<Hub>, b: RelayTerminateBody) -> RestReply {
    if b.uri.is_none()
        && b.local_media_session_id.is_none()
        && b.local_stream_name.is_none()
        && b.remote_stream_name.is_none()
    {
        return error_reply(
            400,
            "one of localMediaSessionId, localStreamName, remoteStreamName or uri is required",
        );
    }
    let matching: Vec<Rc<Relay>> = hub
        .relays()
        .list
        .borrow()
        .iter()
        .filter(|r| {
            let i = r.info.borrow();
            b.uri.as_ref().is_none_or(|u| *u == i.uri)
                && b.local_media_session_id
                    .as_ref()
                    .is_none_or(|id| *id == i.local_media_session_id)
                && b.local_stream_name
                    .as_ref()
                    .is_none_or(|n| *n == i.local_stream_name)
                && b.remote_stream_name
                    .as_ref()
                    .is_none_or(|n| *n == i.remote_stream_name)
        })
        .cloned()
        .collect();
    if matching.is_empty() {
        return error_reply(404, "relay not found");
    }
    for relay in &matching {
        let _ = relay.stop.send(Some(StopReason::Terminated));
    }
    // Give the relays a moment to end their remote side cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while matching.iter().any(|r| !r.finished.get()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let ids: Vec<String> = matching
        .iter()
        .map(|r| r.info.borrow().local_media_session_id.clone())
        .collect();
    hub.relays()
        .list
        .borrow_mut()
        .retain(|r| !ids.contains(&r.info.borrow().local_media_session_id));
    RestReply {
        status: 200,
        body: json!({ "terminated": ids }),
    }
}

/// How one attempt ended.
enum Outcome {
    /// Stopped from outside; the remote side was ended cleanly.
    Stopped(StopReason),
    /// The attempt failed; an established relay may retry.
    Retry(String),
    /// The relay cannot go on (loop, remote stream ended, local source gone).
    Fatal(String),
}

/// The relay's peer on this server's data plane; closed when dropped.
struct RelayPeer {
    hub: Rc<Hub>,
    peer: PeerId,
    core: CoreId,
    events: mpsc::UnboundedReceiver<Event>,
    closed: bool,
    /// Where an ingest peer's stream left off, from its last event.
    continuity: Option<Continuity>,
}

impl RelayPeer {
    fn new(hub: &Rc<Hub>, core: Option<CoreId>) -> RelayPeer {
        let (peer, placed) = hub.with_registry(|r, _| r.place_peer());
        let (tx, events) = mpsc::unbounded_channel();
        hub.relays().routes.borrow_mut().insert(peer, tx);
        RelayPeer {
            hub: Rc::clone(hub),
            peer,
            core: core.unwrap_or(placed),
            events,
            closed: false,
            continuity: None,
        }
    }

    async fn offer(&mut self, role: Role, limit: Duration) -> Result<String, String> {
        self.hub.send_command(
            self.core,
            Command::Offer {
                peer: self.peer,
                role,
            },
        );
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Event::Sdp { sdp, .. }) => return Ok(sdp),
                    Some(Event::Failed { reason, .. }) => {
                        return Err(format!("could not make an offer: {reason}"));
                    }
                    Some(_) => {}
                    None => return Err("data plane stopped".to_owned()),
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| "the data plane did not make an offer in time".to_owned())?
    }

    async fn answer(
        &mut self,
        answer: String,
        limit: Duration,
    ) -> Result<relaycast_dataplane::StreamMedia, String> {
        self.hub.send_command(
            self.core,
            Command::Answer {
                peer: self.peer,
                answer,
            },
        );
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Event::Negotiated { media, .. }) => return Ok(media),
                    Some(Event::Failed { reason, .. }) => {
                        return Err(format!("the remote answer was refused: {reason}"));
                    }
                    Some(_) => {}
                    None => return Err("data plane stopped".to_owned()),
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| "the answer was not applied in time".to_owned())?
    }

    /// The data plane's report on the peer (its link figures).
    async fn report(&self) -> Option<PeerReport> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.hub.send_command(
            self.core,
            Command::Query {
                peer: self.peer,
                reply,
            },
        );
        rx.await.ok().flatten()
    }

    /// Closes the peer and waits briefly for its last event (an ingest peer's continuity).
    async fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.hub
            .send_command(self.core, Command::Close { peer: self.peer });
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(event) = self.events.recv().await {
                match event {
                    Event::Closed { continuity, .. } | Event::Failed { continuity, .. } => {
                        if continuity.is_some() {
                            self.continuity = continuity;
                        }
                        return;
                    }
                    _ => {}
                }
            }
        })
        .await;
    }
}

impl Drop for RelayPeer {
    fn drop(&mut self) {
        self.hub.relays().routes.borrow_mut().remove(&self.peer);
        if !self.closed {
            self.hub
                .send_command(self.core, Command::Close { peer: self.peer });
        }
    }
}

async fn run(
    hub: Rc<Hub>,
    relay: Rc<Relay>,
    mut stop: watch::Receiver<Option<StopReason>>,
    mut events: EventsRx,
    pull_stream: Option<(StreamId, CoreId)>,
) {
    let config = hub.relays().config.clone();
    let direction = relay.info.borrow().direction;
    let local_id = MediaSessionId(relay.info.borrow().local_media_session_id.clone());
    let mut continuity = Continuity::default();
    let mut established_once = false;
    let mut failures = 0u32;
    let mut backoff = config.backoff_initial;
    let end = loop {
        relay.update(|i| {
            i.attempts += 1;
            i.status = RelayStatus::Pending;
        });
        let mut established = false;
        let outcome = attempt(
            &hub,
            &relay,
            &mut stop,
            &mut events,
            pull_stream,
            &mut continuity,
            &mut established,
        )
        .await;
        relay.info.borrow_mut().link = None;
        if established {
            established_once = true;
            failures = 0;
            backoff = config.backoff_initial;
        }
        match outcome {
            Outcome::Stopped(reason) => break Ok(reason),
            Outcome::Fatal(error) => break Err(error),
            Outcome::Retry(error) => {
                failures += 1;
                relay.update(|i| i.last_error = Some(error.clone()));
                let give_up = !established_once
                    || !config.reconnect
                    || (config.max_attempts > 0 && failures >= config.max_attempts);
                if give_up {
                    break Err(error);
                }
                tracing::info!(relay = %local_id, %error, ?backoff, "relay lost; reconnecting");
                relay.update(|i| {
                    i.status = RelayStatus::Pending;
                    i.info = Some(format!("reconnecting in {backoff:?}: {error}"));
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    reason = stopped(&mut stop) => break Ok(reason),
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    };
    match end {
        Ok(reason) => {
            tracing::info!(relay = %local_id, ?reason, "relay stopped");
            relay.update(|i| {
                i.info = Some(match reason {
                    StopReason::Terminated => "Stopped by rest /terminate".into(),
                    StopReason::LocalEnded => "local stream ended".into(),
                    StopReason::Shutdown => "server shutting down".into(),
                });
                if reason != StopReason::Terminated {
                    i.status = RelayStatus::Failed;
                }
            });
            if direction == Direction::Pull {
                let info = if reason == StopReason::Terminated {
                    Info::StoppedByRestTerminate
                } else {
                    Info::StoppedBySessionDisconnect
                };
                hub.with_registry(|r, out| {
                    r.relay_source_end(&local_id, StreamStatus::Unpublished, info, out)
                });
            }
        }
        Err(error) => {
            relay.update(|i| {
                i.status = RelayStatus::Failed;
                i.info = Some(error.clone());
                i.last_error = Some(error.clone());
            });
            if direction == Direction::Pull {
                hub.with_registry(|r, out| {
                    r.relay_source_end(&local_id, StreamStatus::Failed, Info::FailedByError, out)
                });
            }
        }
    }
    relay.finished.set(true);
    relay.changed.send_modify(|n| *n += 1);
}

async fn stopped(stop: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
    loop {
        if let Some(reason) = *stop.borrow_and_update() {
            return reason;
        }
        if stop.changed().await.is_err() {
            return StopReason::Shutdown;
        }
    }
}

/// One connection of a relay, from connecting to its end.
async fn attempt(
    hub: &Rc<Hub>,
    relay: &Rc<Relay>,
    stop: &mut watch::Receiver<Option<StopReason>>,
    events: &mut EventsRx,
    pull_stream: Option<(StreamId, CoreId)>,
    continuity: &mut Continuity,
    established: &mut bool,
) -> Outcome {
    let config = hub.relays().config.clone();
    let (direction, uri, local, remote, local_id) = {
        let i = relay.info.borrow();
        (
            i.direction,
            i.uri.clone(),
            StreamName(i.local_stream_name.clone()),
            i.remote_stream_name.clone(),
            MediaSessionId(i.local_media_session_id.clone()),
        )
    };
    if let Some(reason) = *stop.borrow() {
        return Outcome::Stopped(reason);
    }
    let instance = hub.instance();
    // What the peer needs, and the relay path the media took so far.
    let (role_source, via) = match direction {
        Direction::Push => {
            let found = hub.with_registry(|r, _| {
                r.stream(&local)
                    .and_then(|s| s.media.map(|m| (s.id, s.home, m, s.via.clone())))
            });
            let Some((stream, home, media, via)) = found else {
                return Outcome::Stopped(StopReason::LocalEnded);
            };
            (Some((stream, home, media)), via)
        }
        Direction::Pull => {
            if !hub.with_registry(|r, _| r.has_media(&local_id)) {
                return Outcome::Stopped(StopReason::LocalEnded);
            }
            let via = hub
                .with_registry(|r, _| r.stream(&local).map(|s| s.via.clone()).unwrap_or_default());
            (None, via)
        }
    };

    let timeouts = ClientTimeouts {
        connect: config.connect_timeout,
        answer: config.connect_timeout,
        established: config.established_timeout,
    };
    let request = ConnectionRequest {
        custom: config
            .token
            .as_ref()
            .map_or(Value::Null, |token| json!({ "token": token })),
        ..ConnectionRequest::default()
    };
    let session = tokio::select! {
        s = Session::connect_with(&uri, &request, timeouts, &config.tls) => s,
        reason = stopped(stop) => return Outcome::Stopped(reason),
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Retry(format!("{}: {e}", Info::FailedToConnectToOriginStream));
        }
    };
    let remote_instance = session.instance().map(str::to_owned);
    if let Some(ri) = &remote_instance
        && (*ri == instance || via.contains(ri))
    {
        return Outcome::Fatal(format!(
            "{RELAY_LOOP}: the stream already passed through {uri}"
        ));
    }

    let mut peer = match (direction, role_source) {
        (Direction::Push, Some(_)) => RelayPeer::new(hub, None),
        _ => RelayPeer::new(hub, pull_stream.map(|(_, home)| home)),
    };
    let role = match (direction, role_source, pull_stream) {
        (Direction::Push, Some((stream, home, media)), _) => Role::Egress {
            stream,
            home,
            media,
            relay: true,
        },
        (Direction::Pull, _, Some((stream, _))) => {
            hub.with_registry(|r, _| r.relay_source_peer(&local_id, peer.peer));
            Role::Ingest {
                stream,
                continuity: *continuity,
            }
        }
        _ => return Outcome::Fatal("relay has no stream".into()),
    };
    let offer = match peer.offer(role, config.connect_timeout).await {
        Ok(sdp) => sdp,
        Err(e) => return Outcome::Retry(e),
    };
    let mut path = via.clone();
    path.push(instance.clone());
    let custom = json!({ "relaycastVia": path });
    let negotiated = tokio::select! {
        n = session.negotiate(&remote, &offer, direction == Direction::Push, custom) => n,
        reason = stopped(stop) => return Outcome::Stopped(reason),
    };
    let (mut handle, answer) = match negotiated {
        Ok(n) => n,
        Err(ClientError::Stream { info, .. }) if info == RELAY_LOOP => {
            return Outcome::Fatal(format!("{RELAY_LOOP} by {uri}"));
        }
        Err(e) => return Outcome::Retry(remote_failure(direction, &e)),
    };
    relay.update(|i| i.remote_media_session_id = Some(handle.media_session_id().to_owned()));
    let media = match peer.answer(answer, config.connect_timeout).await {
        Ok(m) => m,
        Err(e) => {
            let _ = handle.stop(Duration::from_secs(1)).await;
            return Outcome::Retry(e);
        }
    };
    if direction == Direction::Pull {
        let same = hub.with_registry(|r, out| {
            if let Some(ri) = &remote_instance {
                r.set_stream_via(&local, vec![ri.clone()]);
            }
            r.relay_source_media(&local_id, media, out)
        });
        if !same {
            tracing::warn!(relay = %local_id, "the remote stream's codecs changed; local players may not decode it");
        }
    }

    // Wait for ICE + DTLS and the remote's PUBLISHING/PLAYING.
    let want = match direction {
        Direction::Push => StreamStatus::Publishing,
        Direction::Pull => StreamStatus::Playing,
    };
    let deadline = tokio::time::Instant::now() + config.established_timeout;
    let mut connected = false;
    let wanted = [
        want,
        StreamStatus::Failed,
        StreamStatus::Stopped,
        StreamStatus::Unpublished,
    ];
    while !(connected && handle.status() == want) {
        tokio::select! {
            event = peer.events.recv() => match event {
                Some(Event::Connected { .. }) => connected = true,
                Some(Event::Failed { reason, continuity: c, .. }) => {
                    peer.closed = true;
                    if let Some(c) = c { *continuity = c; }
                    let _ = handle.stop(Duration::from_secs(1)).await;
                    return Outcome::Retry(format!("relay peer failed: {reason}"));
                }
                Some(_) => {}
                None => return Outcome::Retry("data plane stopped".into()),
            },
            status = handle.wait_for(&wanted, Duration::from_secs(3600)), if handle.status() != want => {
                match status {
                    Ok(e) if e.status == want => {}
                    Ok(e) => return Outcome::Retry(format!("remote stream {}: {}", e.status, e.info.unwrap_or_default())),
                    Err(e) => return Outcome::Retry(e.to_string()),
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let _ = handle.stop(Duration::from_secs(1)).await;
                return Outcome::Retry(format!("not {want} within {:?}", config.established_timeout));
            }
            reason = stopped(stop) => {
                end_remote(&mut handle, &session).await;
                return Outcome::Stopped(reason);
            }
        }
    }
    *established = true;
    // The first frames across the hop must be decodable: ask the source for a keyframe.
    if let Some((stream, home)) = match (direction, role_source, pull_stream) {
        (Direction::Push, Some((s, h, _)), _) => Some((s, h)),
        (_, _, Some(p)) => Some(p),
        _ => None,
    } {
        hub.send_command(home, Command::RequestKeyframe { stream });
    }
    relay.update(|i| {
        i.status = match direction {
            Direction::Push => RelayStatus::Publishing,
            Direction::Pull => RelayStatus::Playing,
        };
        i.info = None;
    });
    sync_mute_state(hub, direction, &local, &local_id, &handle, events);

    // Established: run until something ends it.
    let mut link = tokio::time::interval(LINK_INTERVAL);
    link.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = link.tick() => {
                if let Some(report) = peer.report().await {
                    relay.info.borrow_mut().link = RelayLink::from_stats(&report.link);
                }
            }
            event = peer.events.recv() => match event {
                Some(Event::Failed { reason, continuity: c, .. }) => {
                    peer.closed = true;
                    if let Some(c) = c { *continuity = c; }
                    session.close();
                    return Outcome::Retry(format!("relay peer failed: {reason}"));
                }
                Some(Event::Closed { continuity: c, .. }) => {
                    peer.closed = true;
                    if let Some(c) = c { *continuity = c; }
                    session.close();
                    return Outcome::Retry("relay peer closed".into());
                }
                Some(_) => {}
                None => return Outcome::Retry("data plane stopped".into()),
            },
            Some((kind, payload)) = events.recv() => {
                let payload = (!payload.is_null()).then_some(&payload);
                if handle.send_stream_event(kind.as_str(), payload).is_err() {
                    tracing::debug!(relay = %local_id, "stream event not sent: signalling closed");
                }
            }
            signal = handle.next_signal() => match signal {
                Ok(StreamSignal::Event(event)) => {
                    let kind = event["type"].as_str().and_then(PublisherEvent::parse);
                    if let (Direction::Pull, Some(kind)) = (direction, kind) {
                        let payload = event["payload"].clone();
                        hub.with_registry(|r, out| {
                            r.relay_source_event(&local_id, kind, payload, out)
                        });
                    }
                }
                Ok(StreamSignal::Status(e)) if e.status.is_final() => {
                    let info = e.info.unwrap_or_default();
                    peer.close().await;
                    if let Some(c) = peer.continuity { *continuity = c; }
                    session.close();
                    // The remote ended the stream on purpose (its publisher stopped, its
                    // operator terminated it): that is final. A failure is retried.
                    // A remote shutting down (`Stopped by session disconnect`) will be back.
                    let restarting = info == Info::StoppedBySessionDisconnect.as_str();
                    if !restarting
                        && (e.status != StreamStatus::Failed
                            || info == Info::StoppedByPublisherStop.as_str())
                    {
                        return Outcome::Fatal(format!("remote stream ended: {info}"));
                    }
                    return Outcome::Retry(format!("remote stream {}: {info}", e.status));
                }
                Ok(StreamSignal::Status(_)) => {}
                Err(e) => {
                    peer.close().await;
                    if let Some(c) = peer.continuity { *continuity = c; }
                    return Outcome::Retry(format!("signalling to {uri} lost: {e}"));
                }
            },
            reason = stopped(stop) => {
                end_remote(&mut handle, &session).await;
                peer.close().await;
                return Outcome::Stopped(reason);
            }
        }
    }
}

/// Brings the far side's mute state up to date once a relay is established. A push relay
/// sends the local stream's mute state to the remote stream (events queued while the relay
/// was down are dropped: the state replaces them). A pull relay takes the remote stream's
/// `audioState`/`videoState` from its PLAYING status.
fn sync_mute_state(
    hub: &Rc<Hub>,
    direction: Direction,
    local: &StreamName,
    local_id: &MediaSessionId,
    handle: &StreamHandle,
    events: &mut EventsRx,
) {
    match direction {
        Direction::Push => {
            while events.try_recv().is_ok() {}
            let state =
                hub.with_registry(|r, _| r.stream(local).map(|s| (s.audio_muted, s.video_muted)));
            let Some((audio_muted, video_muted)) = state else {
                return;
            };
            if audio_muted {
                let _ = handle.send_stream_event(PublisherEvent::AudioMuted.as_str(), None);
            }
            if video_muted {
                let _ = handle.send_stream_event(PublisherEvent::VideoMuted.as_str(), None);
            }
        }
        Direction::Pull => {
            let Some(playing) = handle.last_status() else {
                return;
            };
            let (audio, video) = (playing.audio_state, playing.video_state);
            hub.with_registry(|r, out| r.relay_source_tracks(local_id, audio, video, out));
        }
    }
}

/// Ends the remote side cleanly: `unPublishStream`/`stopStream`, then the WebSocket.
async fn end_remote(handle: &mut StreamHandle, session: &Session) {
    if let Err(e) = handle.stop(Duration::from_secs(2)).await {
        tracing::debug!(error = %e, "remote side did not confirm the relay's end");
    }
    session.close();
}

fn remote_failure(direction: Direction, e: &ClientError) -> String {
    match (direction, e) {
        (Direction::Pull, ClientError::Stream { info, .. }) if info == "Stream not found" => {
            format!(
                "{}: remote stream not found",
                Info::FailedToConnectToOriginStream
            )
        }
        _ => e.to_string(),
    }
}
