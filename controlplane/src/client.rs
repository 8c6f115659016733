//! relaycast's own WebSDK-protocol client: it connects to a server (relaycast or a real WCS)
//! over WebSocket exactly as `@flashphoner/websdk` does, publishes and plays streams, and
//! follows their statuses. The relay, the load generator and the integration tests use it.
//!
//! The signalling half ([`Session`], [`StreamHandle`]) knows nothing about peers: it sends an
//! offer and hands back the answer. The media half ([`Endpoint`]) is a data plane of its own,
//! with full-ICE client peers that send synthetic media or measure what they receive.
//! [`Session::publish`] and [`Session::play`] put the two together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relaycast_dataplane::synth::SynthConfig;
use relaycast_dataplane::{
    Command, CoreId, DataPlane, DataPlaneConfig, Event, PeerFailure, PeerId, PeerReport, Role,
    StartError, StreamMedia,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use crate::tls::ClientTls;

use crate::protocol::{
    self, ConnectionRequest, MediaSessionId, ServerMessage, StreamName, StreamRef, StreamRequest,
    StreamStatus, StreamStatusEvent,
};

/// Why a client operation failed. The messages are what an operator reads in a relay's
/// `info`/`lastError` or in the load generator's failure list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("failed to connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("session closed: {0}")]
    Closed(String),
    #[error("stream {status}: {info}")]
    Stream { status: StreamStatus, info: String },
    #[error("server answered fail: {0}")]
    Fail(String),
    #[error("peer failed: {0}")]
    Peer(PeerFailure),
    #[error("media endpoint stopped")]
    EndpointStopped,
}

/// How long [`Endpoint::offer`] waits for its core to build the peer: milliseconds normally,
/// so only a core that has stopped answering reaches it.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeouts of the client's steps.
#[derive(Clone, Copy, Debug)]
pub struct ClientTimeouts {
    /// TCP + WebSocket handshake + `getUserData`.
    pub connect: Duration,
    /// From `publishStream`/`playStream` to `setRemoteSDP` (or a FAILED status).
    pub answer: Duration,
    /// From the answer to PUBLISHING/PLAYING.
    pub established: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(5),
            answer: Duration::from_secs(5),
            established: Duration::from_secs(15),
        }
    }
}

/// What a stream's handle receives from the session's reader.
#[derive(Debug)]
enum StreamUpdate {
    Answer(String),
    Status(StreamStatusEvent),
    /// `notifyStreamEvent`'s object, raw.
    Event(Value),
    Fail(String),
}

/// What the server says about a negotiated stream: a status, or a `notifyStreamEvent`
/// (`{mediaSessionId, type, payload}`, e.g. a publisher's `audioMuted` or `data`).
#[derive(Clone, Debug, PartialEq)]
pub enum StreamSignal {
    Status(StreamStatusEvent),
    Event(Value),
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<StreamUpdate>>>>;

/// One WebSocket signalling session.
pub struct Session {
    url: String,
    out: mpsc::UnboundedSender<Message>,
    routes: Routes,
    user_data: Value,
    closed: watch::Receiver<Option<String>>,
    timeouts: ClientTimeouts,
}

impl Session {
    /// Connects to `url` (`ws://` or `wss://`), sends `connection` and waits for `getUserData`.
    /// A `wss://` server's certificate is verified against the system roots.
    pub async fn connect(
        url: &str,
        request: &ConnectionRequest,
        timeouts: ClientTimeouts,
    ) -> Result<Session, ClientError> {
        Self::connect_with(url, request, timeouts, &ClientTls::system()).await
    }

    /// [`Session::connect`], verifying a `wss://` server's certificate as `tls` says.
    pub async fn connect_with(
        url: &str,
        request: &ConnectionRequest,
        timeouts: ClientTimeouts,
        tls: &ClientTls,
    ) -> Result<Session, ClientError> {
        let parsed = url::Url::parse(url).map_err(|e| ClientError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "ws" | "wss") {
            return Err(ClientError::BadUrl {
                url: url.to_owned(),
                reason: "the scheme must be ws or wss".into(),
            });
        }
        // Small buffers: the load generator holds one session per player (thousands), and
        // signalling frames are a few KiB; the read buffer grows for a larger one.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let connector = if parsed.scheme() == "wss" {
            let client_config = tls.client_config().map_err(|e| ClientError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
            Connector::Rustls(client_config)
        } else {
            Connector::Plain
        };
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(config),
            true,
            Some(connector),
        );
        let (mut ws, _) = tokio::time::timeout(timeouts.connect, connect)
            .await
            .map_err(|_| ClientError::Connect {
                url: url.to_owned(),
                reason: format!("no WebSocket handshake within {:?}", timeouts.connect),
            })?
            .map_err(|e| ClientError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        ws.send(Message::text(protocol::connection(request)))
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let user_data = tokio::time::timeout(timeouts.connect, async {
            while let Some(frame) = ws.next().await {
                let text = match frame {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(close)) => {
                        let reason = close.map_or_else(String::new, |c| c.reason.to_string());
                        return Err(ClientError::Closed(format!(
                            "server closed the session before getUserData {reason}"
                        )));
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(ClientError::Closed(e.to_string())),
                };
                match protocol::parse_server_frame(&text) {
                    Ok(ServerMessage::GetUserData(data)) => return Ok(data),
                    Ok(ServerMessage::Ping) => {
                        let _ = ws.send(Message::text(protocol::client_pong())).await;
                    }
                    Ok(ServerMessage::Fail { info, .. }) => {
                        return Err(ClientError::Fail(info.unwrap_or_default()));
                    }
                    Ok(ServerMessage::StreamStatus(e)) if e.status == StreamStatus::Failed => {
                        return Err(ClientError::Stream {
                            status: e.status,
                            info: e.info.unwrap_or_default(),
                        });
                    }
                    _ => {}
                }
            }
            Err(ClientError::Closed(
                "connection ended before getUserData".into(),
            ))
        })
        .await
        .map_err(|_| ClientError::Timeout(timeouts.connect, "getUserData"))??;

        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let routes: Routes = Arc::default();
        let (closed_tx, closed) = watch::channel(None);
        let (mut sink, mut stream) = ws.split();
        let reader_routes = Arc::clone(&routes);
        let reader_out = out.clone();
        tokio::spawn(async move {
            let writer = async {
                while let Some(message) = out_rx.recv().await {
                    let close = matches!(message, Message::Close(_));
                    if sink.send(message).await.is_err() || close {
                        break;
                    }
                }
                let _ = sink.close().await;
            };
            let reader = async {
                let mut reason = String::from("connection ended");
                while let Some(frame) = stream.next().await {
                    match frame {
                        Ok(Message::Text(text)) => {
                            dispatch(&text, &reader_routes, &reader_out);
                        }
                        Ok(Message::Close(close)) => {
                            reason = close.map_or_else(
                                || "server closed the connection".to_owned(),
                                |c| {
                                    format!(
                                        "server closed the connection ({}) {}",
                                        c.code, c.reason
                                    )
                                },
                            );
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            reason = e.to_string();
                            break;
                        }
                    }
                }
                reason
            };
            tokio::pin!(writer);
            let reason = tokio::select! {
                reason = reader => reason,
                () = &mut writer => "session closed by the client".to_owned(),
            };
            reader_routes.lock().unwrap().clear();
            let _ = closed_tx.send(Some(reason));
        });
        Ok(Session {
            url: url.to_owned(),
            out,
            routes,
            user_data,
            closed,
            timeouts,
        })
    }

    /// The server's `getUserData` object.
    pub fn user_data(&self) -> &Value {
        &self.user_data
    }

    /// The remote relaycast's instance id (`relaycastInstance`); `None` for other servers.
    pub fn instance(&self) -> Option<&str> {
        self.user_data
            .get("relaycastInstance")
            .and_then(Value::as_str)
    }

    /// The `sessionId` the server assigned.
    pub fn session_id(&self) -> Option<&str> {
        self.user_data.get("sessionId").and_then(Value::as_str)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why the session ended, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Waits until the session ends and returns why.
    pub async fn wait_closed(&self) -> String {
        let mut closed = self.closed.clone();
        loop {
            if let Some(reason) = closed.borrow().clone() {
                return reason;
            }
            if closed.changed().await.is_err() {
                return "connection ended".into();
            }
        }
    }

    /// Sends a raw text frame (tests use it for malformed input).
    pub fn send_raw(&self, text: String) -> Result<(), ClientError> {
        self.out
            .send(Message::text(text))
            .map_err(|_| ClientError::Closed("session is closed".into()))
    }

    /// Closes the WebSocket (every stream of the session ends on the server).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }

    /// Sends `publishStream` (or `playStream`) with `offer` and waits for the answer.
    /// `custom` is sent as the request's `custom` field (null: none).
    pub async fn negotiate(
        &self,
        name: &str,
        offer: &str,
        publish: bool,
        custom: Value,
    ) -> Result<(StreamHandle, String), ClientError> {
        let id = MediaSessionId(uuid::Uuid::new_v4().to_string());
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.routes.lock().unwrap().insert(id.0.clone(), tx);
        let request = StreamRequest {
            media_session_id: Some(id.clone()),
            name: Some(StreamName::from(name)),
            sdp: Some(offer.to_owned()),
            has_audio: Some(true),
            has_video: Some(true),
            published: Some(publish),
            custom,
            ..StreamRequest::default()
        };
        let frame = if publish {
            protocol::publish_stream(&request)
        } else {
            protocol::play_stream(&request)
        };
        let mut handle = StreamHandle {
            id,
            name: name.to_owned(),
            publish,
            out: self.out.clone(),
            routes: Arc::clone(&self.routes),
            status: StreamStatus::Pending,
            info: None,
            early: Vec::new(),
            last: None,
            rx: None,
            closed: self.closed.clone(),
        };
        self.send_raw(frame)?;
        let answer = tokio::time::timeout(self.timeouts.answer, async {
            loop {
                match rx.recv().await {
                    Some(StreamUpdate::Answer(sdp)) => return Ok(sdp),
                    Some(StreamUpdate::Status(e)) => {
                        handle.status = e.status;
                        handle.info = e.info.clone();
                        if e.status.is_final() || e.status == StreamStatus::Failed {
                            return Err(ClientError::Stream {
                                status: e.status,
                                info: e.info.unwrap_or_default(),
                            });
                        }
                        handle.early.push(e);
                    }
                    // No player can get a stream event before its answer.
                    Some(StreamUpdate::Event(_)) => {}
                    Some(StreamUpdate::Fail(info)) => return Err(ClientError::Fail(info)),
                    None => {
                        return Err(ClientError::Closed(
                            self.closed_reason()
                                .unwrap_or_else(|| "connection ended".into()),
                        ));
                    }
                }
            }
        })
        .await;
        let answer = match answer {
            Ok(Ok(sdp)) => sdp,
            Ok(Err(e)) => {
                handle.forget();
                return Err(e);
            }
            Err(_) => {
                handle.forget();
                return Err(ClientError::Timeout(self.timeouts.answer, "setRemoteSDP"));
            }
        };
        handle.rx = Some(rx);
        Ok((handle, answer))
    }

    /// Publishes synthetic media as `name` from a peer on `endpoint`; returns once the server
    /// says PUBLISHING.
    pub async fn publish(
        &self,
        endpoint: &Arc<Endpoint>,
        name: &str,
        synth: SynthConfig,
    ) -> Result<ClientStream, ClientError> {
        self.start(endpoint, name, Role::Generate(synth), true)
            .await
    }

    /// Plays `name` into a measuring peer on `endpoint`; returns once the server says PLAYING.
    pub async fn play(
        &self,
        endpoint: &Arc<Endpoint>,
        name: &str,
    ) -> Result<ClientStream, ClientError> {
        self.start(endpoint, name, Role::Probe, false).await
    }

    async fn start(
        &self,
        endpoint: &Arc<Endpoint>,
        name: &str,
        role: Role,
        publish: bool,
    ) -> Result<ClientStream, ClientError> {
        let mut peer = endpoint.offer(role).await?;
        let result = async {
            let (mut handle, answer) = self
                .negotiate(name, &peer.sdp, publish, Value::Null)
                .await?;
            peer.answer(answer).await?;
            let (want, wanted) = if publish {
                (StreamStatus::Publishing, "PUBLISHING")
            } else {
                (StreamStatus::Playing, "PLAYING")
            };
            let deadline = tokio::time::Instant::now() + self.timeouts.established;
            let mut connected = false;
            while !(connected && handle.status == want) {
                tokio::select! {
                    event = peer.events.recv() => match event {
                        Some(Event::Connected { .. }) => connected = true,
                        Some(Event::Failed { reason, .. }) => return Err(ClientError::Peer(reason)),
                        Some(_) => {}
                        None => return Err(ClientError::EndpointStopped),
                    },
                    status = handle.next_status_until(deadline, self.timeouts.established, wanted),
                        if handle.status != want =>
                    {
                        let e = status?;
                        if e.status != want && e.status != StreamStatus::Pending {
                            return Err(ClientError::Stream {
                                status: e.status,
                                info: e.info.unwrap_or_default(),
                            });
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(ClientError::Timeout(self.timeouts.established, wanted));
                    }
                }
            }
            Ok(handle)
        }
        .await;
        match result {
            Ok(handle) => Ok(ClientStream { handle, peer }),
            Err(e) => {
                peer.close();
                Err(e)
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Routes one server frame to the stream it names.
fn dispatch(text: &str, routes: &Routes, out: &mpsc::UnboundedSender<Message>) {
    let message = match protocol::parse_server_frame(text) {
        Ok(message) => message,
        Err(error) => {
            tracing::debug!(%error, "unreadable frame from server");
            return;
        }
    };
    let (id, update) = match message {
        ServerMessage::Ping => {
            let _ = out.send(Message::text(protocol::client_pong()));
            return;
        }
        ServerMessage::SetRemoteSdp {
            media_session_id,
            sdp,
        } => (media_session_id.0, StreamUpdate::Answer(sdp)),
        ServerMessage::StreamStatus(event) => (
            event.media_session_id.0.clone(),
            StreamUpdate::Status(event),
        ),
        ServerMessage::StreamEvent(event) => match event["mediaSessionId"].as_str() {
            Some(id) => (id.to_owned(), StreamUpdate::Event(event)),
            None => return,
        },
        // A refused stream event does not end the stream (the SDK only warns, too).
        ServerMessage::Fail {
            api_method: Some(method),
            info,
            ..
        } if method == "sendStreamEvent" => {
            tracing::warn!(?info, "server refused a stream event");
            return;
        }
        ServerMessage::Fail {
            id: Some(id), info, ..
        } => (id.0, StreamUpdate::Fail(info.unwrap_or_default())),
        ServerMessage::Fail {
            api_method, info, ..
        } => {
            tracing::debug!(?api_method, ?info, "server answered fail");
            return;
        }
        _ => return,
    };
    let routes = routes.lock().unwrap();
    if let Some(tx) = routes.get(&id) {
        let _ = tx.send(update);
    }
}

/// The signalling side of one published or played stream.
pub struct StreamHandle {
    id: MediaSessionId,
    name: String,
    publish: bool,
    out: mpsc::UnboundedSender<Message>,
    routes: Routes,
    status: StreamStatus,
    info: Option<String>,
    early: Vec<StreamStatusEvent>,
    /// The last status event the server sent.
    last: Option<StreamStatusEvent>,
    rx: Option<mpsc::UnboundedReceiver<StreamUpdate>>,
    closed: watch::Receiver<Option<String>>,
}

impl StreamHandle {
    pub fn media_session_id(&self) -> &str {
        &self.id.0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last status the server sent.
    pub fn status(&self) -> StreamStatus {
        self.status
    }

    /// The `info` of the last status.
    pub fn info(&self) -> Option<&str> {
        self.info.as_deref()
    }

    /// The last status event the server sent (with a player's `audioState`/`videoState`).
    pub fn last_status(&self) -> Option<&StreamStatusEvent> {
        self.last.as_ref()
    }

    /// Sends `sendStreamEvent` for this (published) stream: `audioMuted`, `data`, ... The
    /// server passes it to the stream's players.
    pub fn send_stream_event(&self, typ: &str, payload: Option<&Value>) -> Result<(), ClientError> {
        let frame = protocol::send_stream_event(&self.id, typ, payload);
        self.out
            .send(Message::text(frame))
            .map_err(|_| ClientError::Closed("connection ended".into()))
    }

    /// The next status event; stream events before it are dropped. `Err` when the session
    /// ends first.
    pub async fn next_status(&mut self) -> Result<StreamStatusEvent, ClientError> {
        loop {
            if let StreamSignal::Status(e) = self.next_signal().await? {
                return Ok(e);
            }
        }
    }

    /// The next status or stream event; `Err` when the session ends first.
    pub async fn next_signal(&mut self) -> Result<StreamSignal, ClientError> {
        if !self.early.is_empty() {
            let e = self.early.remove(0);
            self.last = Some(e.clone());
            return Ok(StreamSignal::Status(e));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Err(ClientError::Closed("stream is not negotiated".into()));
        };
        loop {
            match rx.recv().await {
                Some(StreamUpdate::Status(e)) => {
                    self.status = e.status;
                    self.info = e.info.clone();
                    self.last = Some(e.clone());
                    return Ok(StreamSignal::Status(e));
                }
                Some(StreamUpdate::Event(e)) => return Ok(StreamSignal::Event(e)),
                Some(StreamUpdate::Fail(info)) => return Err(ClientError::Fail(info)),
                Some(StreamUpdate::Answer(_)) => {}
                None => {
                    let reason = self.closed.borrow().clone();
                    return Err(ClientError::Closed(
                        reason.unwrap_or_else(|| "connection ended".into()),
                    ));
                }
            }
        }
    }

    /// The next status before `deadline`; the error names `limit`, the whole wait it ends.
    async fn next_status_until(
        &mut self,
        deadline: tokio::time::Instant,
        limit: Duration,
        wanted: &'static str,
    ) -> Result<StreamStatusEvent, ClientError> {
        tokio::time::timeout_at(deadline, self.next_status())
            .await
            .map_err(|_| ClientError::Timeout(limit, wanted))?
    }

    /// Waits up to `limit` for a status in `wanted`; other statuses are skipped.
    pub async fn wait_for(
        &mut self,
        wanted: &[StreamStatus],
        limit: Duration,
    ) -> Result<StreamStatusEvent, ClientError> {
        tokio::time::timeout(limit, async {
            loop {
                let e = self.next_status().await?;
                if wanted.contains(&e.status) {
                    return Ok(e);
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(limit, "a stream status"))?
    }

    /// Sends `unPublishStream` or `stopStream` and waits for UNPUBLISHED/STOPPED.
    pub async fn stop(&mut self, limit: Duration) -> Result<StreamStatusEvent, ClientError> {
        let r = StreamRef {
            media_session_id: Some(self.id.clone()),
            name: Some(StreamName::from(self.name.as_str())),
        };
        let frame = if self.publish {
            protocol::unpublish_stream(&r)
        } else {
            protocol::stop_stream(&r)
        };
        self.out
            .send(Message::text(frame))
            .map_err(|_| ClientError::Closed("session is closed".into()))?;
        self.wait_for(
            &[
                StreamStatus::Unpublished,
                StreamStatus::Stopped,
                StreamStatus::Failed,
            ],
            limit,
        )
        .await
    }

    fn forget(&self) {
        self.routes.lock().unwrap().remove(&self.id.0);
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.forget();
    }
}

/// A client data plane: full-ICE peers that generate or probe media.
pub struct Endpoint {
    data: DataPlane,
    routes: Mutex<HashMap<PeerId, mpsc::UnboundedSender<Event>>>,
    next_peer: AtomicU64,
    next_core: AtomicUsize,
}

impl Endpoint {
    /// Starts a client data plane (unpinned: it shares the machine with a server) and the task
    /// that routes its events to peers. Must be called inside a tokio runtime.
    /// Its peers keep their last report once they fail, until closed (dropped).
    pub fn start(config: DataPlaneConfig) -> Result<Arc<Endpoint>, StartError> {
        let config = DataPlaneConfig {
            keep_failed_reports: true,
            ..config
        };
        let endpoint = Arc::new(Endpoint {
            data: DataPlane::start(config)?,
            routes: Mutex::new(HashMap::new()),
            next_peer: AtomicU64::new(1),
            next_core: AtomicUsize::new(0),
        });
        let weak = Arc::downgrade(&endpoint);
        tokio::spawn(async move {
            loop {
                let Some(endpoint) = weak.upgrade() else {
                    return;
                };
                let next =
                    tokio::time::timeout(Duration::from_millis(200), endpoint.data.next_event());
                match next.await {
                    Ok(Some(event)) => endpoint.route(event),
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
        });
        Ok(endpoint)
    }

    /// A loopback endpoint with `cores` cores, for tests and the load generator.
    pub fn loopback(cores: usize) -> Result<Arc<Endpoint>, StartError> {
        Endpoint::start(DataPlaneConfig {
            cores,
            ..DataPlaneConfig::default()
        })
    }

    pub fn data(&self) -> &DataPlane {
        &self.data
    }

    /// Stops every core at once: its peers vanish without a goodbye, as when a client's
    /// machine loses power. The signalling sessions are untouched.
    pub fn halt(&self) {
        for core in 0..self.data.cores() {
            let _ = self.data.send(CoreId(core as u16), Command::Shutdown);
        }
    }

    fn route(&self, event: Event) {
        let peer = match &event {
            Event::Sdp { peer, .. }
            | Event::Negotiated { peer, .. }
            | Event::Connected { peer }
            | Event::Failed { peer, .. }
            | Event::Resolution { peer, .. }
            | Event::Closed { peer, .. } => *peer,
        };
        let mut routes = self.routes.lock().unwrap();
        let last = matches!(event, Event::Failed { .. } | Event::Closed { .. });
        if let Some(tx) = routes.get(&peer) {
            let _ = tx.send(event);
        }
        if last {
            routes.remove(&peer);
        }
    }

    /// Builds a client peer for `role` on the next core and returns it with its offer
    /// (within [`OFFER_TIMEOUT`]).
    pub async fn offer(self: &Arc<Self>, role: Role) -> Result<ClientPeer, ClientError> {
        let peer = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        let core =
            CoreId((self.next_core.fetch_add(1, Ordering::Relaxed) % self.data.cores()) as u16);
        let (tx, mut events) = mpsc::unbounded_channel();
        self.routes.lock().unwrap().insert(peer, tx);
        self.data
            .send(core, Command::Offer { peer, role })
            .map_err(|_| ClientError::EndpointStopped)?;
        let answered = tokio::time::timeout(OFFER_TIMEOUT, async {
            loop {
                match events.recv().await {
                    Some(Event::Sdp { sdp, media, .. }) => return Ok((sdp, media)),
                    Some(Event::Failed { reason, .. }) => return Err(ClientError::Peer(reason)),
                    Some(_) => {}
                    None => return Err(ClientError::EndpointStopped),
                }
            }
        })
        .await;
        let (sdp, media) = match answered {
            Ok(result) => result?,
            Err(_) => {
                // A core that does not answer is an error, not a wait without end; a late
                // peer is closed as soon as the core gets to it.
                let _ = self.data.send(core, Command::Close { peer });
                self.routes.lock().unwrap().remove(&peer);
                return Err(ClientError::Timeout(
                    OFFER_TIMEOUT,
                    "the data plane's offer",
                ));
            }
        };
        Ok(ClientPeer {
            endpoint: Arc::clone(self),
            peer,
            core,
            sdp,
            media,
            events,
            closed: false,
        })
    }
}

/// A client peer on an [`Endpoint`]; closed when dropped.
pub struct ClientPeer {
    endpoint: Arc<Endpoint>,
    pub peer: PeerId,
    pub core: CoreId,
    /// The local offer.
    pub sdp: String,
    /// What the offer carries (after [`ClientPeer::answer`]: what was negotiated).
    pub media: StreamMedia,
    events: mpsc::UnboundedReceiver<Event>,
    closed: bool,
}

impl ClientPeer {
    /// Applies the remote answer.
    pub async fn answer(&mut self, answer: String) -> Result<StreamMedia, ClientError> {
        self.endpoint
            .data
            .send(
                self.core,
                Command::Answer {
                    peer: self.peer,
                    answer,
                },
            )
            .map_err(|_| ClientError::EndpointStopped)?;
        loop {
            match self.events.recv().await {
                Some(Event::Negotiated { media, .. }) => {
                    self.media = media;
                    return Ok(media);
                }
                Some(Event::Failed { reason, .. }) => return Err(ClientError::Peer(reason)),
                Some(Event::Connected { .. }) => {}
                Some(_) => {}
                None => return Err(ClientError::EndpointStopped),
            }
        }
    }

    /// The next event of this peer (Connected, Failed, Closed).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A snapshot of the peer's statistics; `None` once it is gone.
    pub async fn report(&self) -> Option<PeerReport> {
        let (reply, rx) = oneshot::channel();
        self.endpoint
            .data
            .send(
                self.core,
                Command::Query {
                    peer: self.peer,
                    reply,
                },
            )
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Closes the peer (idempotent).
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self
                .endpoint
                .data
                .send(self.core, Command::Close { peer: self.peer });
        }
    }
}

impl Drop for ClientPeer {
    fn drop(&mut self) {
        self.close();
    }
}

/// A published or played stream with its peer.
pub struct ClientStream {
    pub handle: StreamHandle,
    pub peer: ClientPeer,
}

impl ClientStream {
    /// Statistics of the peer (probe for a player, generator for a publisher).
    pub async fn report(&self) -> Option<PeerReport> {
        self.peer.report().await
    }

    /// Stops the stream on the server, then closes the peer.
    pub async fn stop(mut self, limit: Duration) -> Result<StreamStatusEvent, ClientError> {
        let result = self.handle.stop(limit).await;
        self.peer.close();
        result
    }
}
