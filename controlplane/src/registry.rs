//! The stream registry: signalling sessions, published streams and every publisher and
//! player media session, and which data-plane peer and core serves each. A state machine:
//! it takes client messages, data-plane events and REST requests, and returns effects
//! (frames to send, commands for cores) as data. It never does IO, so every rule here is
//! unit-tested without sockets. Access control (allowed appKeys, the shared-secret token) and
//! the per-session, per-stream and per-core limits are checked here too, and counted in
//! [`RegistryStats`] for the metrics.

use std::collections::{BTreeMap, HashMap};

use relaycast_dataplane::{
    Command, Continuity, CoreId, Event, PeerFailure, PeerId, Role, StreamId, StreamMedia,
};
use serde_json::{Value, json};

use crate::auth::{SignallingAccess, TokenCheck};
use crate::hooks::{HookAnswer, HookMethod, HookPending, HookPlan};
use crate::protocol::{
    self, AppData, AppKey, ClientMessage, ConnectionInfo, DataRequest, Info, MEDIA_PROVIDER,
    MediaSessionId, PublisherEvent, SessionId, StreamEventFrames, StreamEventRequest, StreamInfo,
    StreamName, StreamRef, StreamRequest, StreamStatus, StreamStatusEvent, TrackState, UserData,
};

/// A signalling connection (WebSocket), numbered by the signalling server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Something the registry wants done.
#[derive(Debug)]
pub enum Effect {
    /// Send a text frame to a signalling connection.
    Send { conn: ConnId, frame: String },
    /// Give a command to a data-plane core.
    Data { core: CoreId, command: Command },
    /// Close a signalling connection (its streams are ended by `session_closed`).
    Close { conn: ConnId },
    /// A stream's source ended: relays pushing it must stop.
    StreamEnded { name: StreamName },
    /// A stream got its media: relays waiting to push it may start.
    StreamLive { name: StreamName },
    /// A stream's source sent an event (mute, unmute, data): relays pushing the stream pass
    /// it on to the remote server.
    StreamEvent {
        name: StreamName,
        kind: PublisherEvent,
        payload: Value,
    },
    /// Ask the operator's backend (a WCS REST hook) and give its answer to
    /// [`Registry::hook_answer`] with `pending`.
    Hook {
        method: HookMethod,
        body: Value,
        pending: HookPending,
    },
}

/// Fixed facts the registry reports.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub server_version: String,
    /// Number of data-plane cores to place peers on.
    pub cores: usize,
    /// This server's instance id (a UUID made at start), sent in `getUserData` as
    /// `relaycastInstance` and carried along relays to detect loops.
    pub instance: String,
    /// Who may connect, publish and play.
    pub access: SignallingAccess,
    pub limits: RegistryLimits,
    /// The requests the operator's backend is asked about, for which appKeys.
    pub hooks: HookPlan,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            server_version: crate::VERSION.to_string(),
            cores: 1,
            instance: uuid::Uuid::new_v4().to_string(),
            access: SignallingAccess::default(),
            limits: RegistryLimits::default(),
            hooks: HookPlan::default(),
        }
    }
}

/// Limits on what clients may open; a request beyond one is FAILED with an `info` naming the
/// limit, and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Publishers and players one signalling session may hold at once.
    pub streams_per_session: usize,
    /// Players one stream may have at once.
    pub players_per_stream: usize,
    /// Peers on one core (the data plane refuses more too; checking here gives a clear error).
    pub peers_per_core: usize,
    /// Largest stream event payload (`sendData`'s object, as JSON), bytes. Every player gets
    /// a copy, so it is kept far below the frame limit.
    pub stream_event_bytes: usize,
    /// Stream events one publisher may send per second (0: no limit).
    pub stream_events_per_sec: u32,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            streams_per_session: 16,
            players_per_stream: 10_000,
            peers_per_core: relaycast_dataplane::DataPlaneConfig::default().max_peers_per_core,
            stream_event_bytes: 16 * 1024,
            stream_events_per_sec: 20,
        }
    }
}

/// What the registry has counted since it started, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Streams published (publisher media sessions accepted).
    pub published: u64,
    /// Players accepted.
    pub played: u64,
    /// Requests refused, by kind (`restricted_access`, `streams_per_session`, ...).
    pub refused: BTreeMap<&'static str, u64>,
    /// Media sessions ended, by final status and `info`.
    pub ended: BTreeMap<(StreamStatus, &'static str), u64>,
    /// Stream events of sources (publishers, pull relays) passed to players, by type.
    pub stream_events: BTreeMap<&'static str, u64>,
    /// Application data: clients' `sendData` `accepted` or `failed`, and data `sent` to
    /// clients by REST.
    pub app_data: BTreeMap<&'static str, u64>,
}

/// The connection that owns a pull relay's local media session: no WebSocket has it, so
/// frames addressed to it go nowhere.
pub const RELAY_CONN: ConnId = ConnId(0);

/// Relays a stream may pass through before it is refused as a probable loop.
pub const MAX_RELAY_HOPS: usize = 8;

/// The servers (instance ids) a stream's media passed through, from a request's `custom`.
pub fn relay_via(custom: &Value) -> Vec<String> {
    custom
        .get("relaycastVia")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A REST request, already parsed from HTTP and JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum RestRequest {
    StreamFindAll,
    StreamFind {
        media_session_id: Option<MediaSessionId>,
        name: Option<StreamName>,
        published: Option<bool>,
        /// Only streams in this status, e.g. PUBLISHING.
        status: Option<StreamStatus>,
    },
    StreamTerminate {
        media_session_ids: Vec<MediaSessionId>,
        name: Option<StreamName>,
    },
    ConnectionFindAll,
    ConnectionTerminate {
        session_id: SessionId,
    },
    /// `/rest-api/data/send`: data for a client session (`OnDataEvent`).
    DataSend {
        session_id: SessionId,
        /// Generated when the request has none.
        operation_id: Option<String>,
        payload: Value,
    },
}

/// A REST answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct RestReply {
    pub status: u16,
    pub body: Value,
}

/// Who feeds a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A publisher's media session.
    Publisher(MediaSessionId),
    /// A pull relay, identified by its local media session id.
    Relay(MediaSessionId),
}

pub struct Registry {
    config: RegistryConfig,
    sessions: HashMap<ConnId, Session>,
    streams: HashMap<StreamName, Stream>,
    media: HashMap<MediaSessionId, MediaSession>,
    peers: HashMap<PeerId, MediaSessionId>,
    /// Peers on each core, for placement.
    load: Vec<usize>,
    next_peer: u64,
    next_stream: u64,
    /// The server is stopping: every client is told its streams' final status.
    stopping: bool,
    stats: RegistryStats,
    /// Publish and play requests waiting for the backend's answer, and their connections.
    awaiting: HashMap<MediaSessionId, ConnId>,
}

struct Session {
    id: SessionId,
    app_key: AppKey,
    client_version: Option<String>,
    media_providers: Vec<String>,
    remote_address: String,
    created_ms: u64,
    established: bool,
    /// `connection` was accepted here and waits for the backend's `connect` hook.
    authorizing: bool,
    /// `connection` carried the shared-secret token (or none is required): publish and play
    /// need not carry it.
    authorized: bool,
    media: Vec<MediaSessionId>,
}

/// A published stream.
pub struct Stream {
    pub name: StreamName,
    pub id: StreamId,
    /// The core whose router holds the source.
    pub home: CoreId,
    pub source: Source,
    /// Known once the source's SDP is negotiated; a stream is playable from then on.
    pub media: Option<StreamMedia>,
    pub players: Vec<MediaSessionId>,
    /// Where the stream's tracks left off, for a replacement source.
    pub continuity: Continuity,
    /// The servers the stream's media came through before this one (relay loop detection).
    pub via: Vec<String>,
    /// The video picture size its source's last keyframe announced.
    pub resolution: Option<(u32, u32)>,
    /// The publisher muted its audio (`sendStreamEvent` `audioMuted`).
    pub audio_muted: bool,
    /// The publisher muted its video (`sendStreamEvent` `videoMuted`).
    pub video_muted: bool,
    /// Stream events its publisher sent in the current second: (second, count).
    pub events_sent: (u64, u32),
}

struct MediaSession {
    id: MediaSessionId,
    conn: ConnId,
    name: StreamName,
    published: bool,
    status: StreamStatus,
    info: Option<String>,
    peer: PeerId,
    core: CoreId,
    media: StreamMedia,
    created_ms: u64,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Self {
        let cores = config.cores.max(1);
        Registry {
            config,
            sessions: HashMap::new(),
            streams: HashMap::new(),
            media: HashMap::new(),
            peers: HashMap::new(),
            load: vec![0; cores],
            next_peer: 1,
            next_stream: 1,
            stopping: false,
            stats: RegistryStats::default(),
            awaiting: HashMap::new(),
        }
    }

    /// A signalling connection opened; it becomes a session on `connection`.
    pub fn session_opened(&mut self, conn: ConnId, remote_address: String, now_ms: u64) {
        self.sessions.insert(
            conn,
            Session {
                id: SessionId(uuid::Uuid::new_v4().to_string()),
                app_key: AppKey::from(protocol::DEFAULT_APP_KEY),
                client_version: None,
                media_providers: Vec::new(),
                remote_address,
                created_ms: now_ms,
                established: false,
                authorizing: false,
                authorized: false,
                media: Vec::new(),
            },
        );
    }

    /// One parsed client frame.
    pub fn client_message(
        &mut self,
        conn: ConnId,
        message: ClientMessage,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        match message {
            ClientMessage::Connection(req) => {
                let Some(session) = self.sessions.get_mut(&conn) else {
                    return;
                };
                let token = self.config.access.token(&req.custom);
                let refusal = if !self.config.access.app_key_allowed(req.app_key.as_str()) {
                    Some("appKey not allowed")
                } else if token == TokenCheck::Wrong {
                    Some("wrong token")
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    tracing::warn!(conn = conn.0, session = %session.id, app_key = %req.app_key,
                        remote = %session.remote_address, reason, "connection refused: restricted access");
                    let info = Info::RestrictedAccess.as_str();
                    send(out, conn, protocol::fail("connection", info, None));
                    out.push(Effect::Close { conn });
                    self.stats.refuse("restricted_access");
                    return;
                }
                if session.established || session.authorizing {
                    tracing::info!(session = %session.id, "repeated connection ignored");
                    return;
                }
                session.authorized = token == TokenCheck::Granted;
                session.app_key = req.app_key;
                session.client_version = req.client_version;
                session.media_providers = req.media_providers;
                if self
                    .config
                    .hooks
                    .asks(session.app_key.as_str(), HookMethod::Connect)
                {
                    session.authorizing = true;
                    let body = json!({
                        "nodeId": self.config.instance,
                        "appKey": session.app_key,
                        "sessionId": session.id,
                        "clientVersion": session.client_version,
                        "mediaProviders": session.media_providers,
                        "remoteAddress": session.remote_address,
                        "custom": req.custom,
                    });
                    tracing::debug!(session = %session.id, "connection: asking the backend");
                    out.push(Effect::Hook {
                        method: HookMethod::Connect,
                        body,
                        pending: HookPending::Connect { conn },
                    });
                    return;
                }
                self.establish(conn, out);
            }
            ClientMessage::PublishStream(req) => self.publish(conn, req, now_ms, false, out),
            ClientMessage::PlayStream(req) => self.play(conn, req, now_ms, false, out),
            ClientMessage::UnPublishStream(r) => self.stop_request(conn, r, true, out),
            ClientMessage::StopStream(r) => self.stop_request(conn, r, false, out),
            ClientMessage::Ping => send(out, conn, protocol::pong()),
            ClientMessage::Pong => {}
            ClientMessage::SendStreamEvent(req) => self.stream_event(conn, req, now_ms, out),
            ClientMessage::AvailableStream(r) => self.available(conn, &r, out),
            ClientMessage::SendData(req) => self.send_data(conn, req, out),
            ClientMessage::Unsupported { message } => {
                let info = format!("Unsupported method: {message}");
                send(out, conn, protocol::fail(&message, &info, None));
            }
        }
    }

    /// A session's `connection` is accepted: it gets `getUserData`.
    fn establish(&mut self, conn: ConnId, out: &mut Vec<Effect>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.authorizing = false;
        session.established = true;
        let data = UserData {
            auth_token: uuid::Uuid::new_v4().to_string(),
            session_id: session.id.clone(),
            app_key: session.app_key.clone(),
            media_providers: vec![MEDIA_PROVIDER.to_string()],
            server_version: self.config.server_version.clone(),
            client_version: session.client_version.clone(),
            instance: Some(self.config.instance.clone()),
        };
        tracing::info!(session = %session.id, app_key = %session.app_key,
            remote = %session.remote_address, "session established");
        send(out, conn, protocol::get_user_data(&data));
        self.notify_connection(&self.sessions[&conn], "ESTABLISHED", out);
    }

    /// The backend answered a hook: the request it held goes on, or is refused with the
    /// reason. A request whose session or stream has gone meanwhile is dropped.
    pub fn hook_answer(&mut self, answer: HookAnswer, now_ms: u64, out: &mut Vec<Effect>) {
        let passed = answer.admitted;
        match answer.pending {
            HookPending::Connect { conn } => {
                let Some(session) = self.sessions.get_mut(&conn).filter(|s| s.authorizing) else {
                    return;
                };
                if passed {
                    self.establish(conn, out);
                    return;
                }
                session.authorizing = false;
                tracing::warn!(session = %session.id, remote = %session.remote_address,
                    info = %answer.outcome.info(), "connection refused by the backend");
                send(
                    out,
                    conn,
                    protocol::fail("connection", &answer.outcome.info(), None),
                );
                out.push(Effect::Close { conn });
                self.stats.refuse("backend");
            }
            HookPending::Stream {
                conn,
                request,
                published,
            } => {
                let Some(id) = request.media_session_id.clone() else {
                    return;
                };
                if self.awaiting.get(&id) != Some(&conn) {
                    return;
                }
                self.awaiting.remove(&id);
                if passed {
                    if published {
                        self.publish(conn, request, now_ms, true, out);
                    } else {
                        self.play(conn, request, now_ms, true, out);
                    }
                    return;
                }
                let name = request.name.unwrap_or_default();
                tracing::warn!(media_session = %id, stream = %name, published,
                    info = %answer.outcome.info(), "request refused by the backend");
                fail_status_text(out, conn, &id, &name, published, &answer.outcome.info());
                self.stats.refuse("backend");
            }
            HookPending::Data { conn, operation_id } => {
                let info = (!passed).then(|| answer.outcome.info());
                self.answer_data(conn, &operation_id, info.as_deref(), out);
            }
            HookPending::Nothing => {}
        }
    }

    /// Tells the backend about a session's status (`ConnectionStatusEvent`), when it asked.
    fn notify_connection(&self, session: &Session, status: &str, out: &mut Vec<Effect>) {
        if !self
            .config
            .hooks
            .asks(session.app_key.as_str(), HookMethod::ConnectionStatusEvent)
        {
            return;
        }
        let body = json!({
            "nodeId": self.config.instance,
            "appKey": session.app_key,
            "sessionId": session.id,
            "status": status,
            "remoteAddress": session.remote_address,
            "createDate": session.created_ms,
        });
        out.push(Effect::Hook {
            method: HookMethod::ConnectionStatusEvent,
            body,
            pending: HookPending::Nothing,
        });
    }

    /// Tells the backend about a stream's status (`StreamStatusEvent`), when it asked: the
    /// stream object `/stream/find` lists, with WCS's `mediaType`.
    fn notify_stream(&self, ms: &MediaSession, out: &mut Vec<Effect>) {
        let info = self.info(ms);
        if !self
            .config
            .hooks
            .asks(info.app_key.as_str(), HookMethod::StreamStatusEvent)
        {
            return;
        }
        let mut body = serde_json::to_value(info).unwrap_or_default();
        if let Value::Object(fields) = &mut body {
            fields.insert("nodeId".into(), json!(self.config.instance));
            let kind = if ms.published { "publish" } else { "play" };
            fields.insert("mediaType".into(), json!(kind));
        }
        out.push(Effect::Hook {
            method: HookMethod::StreamStatusEvent,
            body,
            pending: HookPending::Nothing,
        });
    }

    /// Answers a `sendData` with `DataStatusEvent`: accepted, or failed with `info`.
    fn answer_data(
        &mut self,
        conn: ConnId,
        operation_id: &str,
        failed: Option<&str>,
        out: &mut Vec<Effect>,
    ) {
        let result = if failed.is_some() {
            "failed"
        } else {
            "accepted"
        };
        *self.stats.app_data.entry(result).or_default() += 1;
        send(
            out,
            conn,
            protocol::data_status(operation_id, failed.is_none(), failed),
        );
    }

    /// Whether `conn`'s requests of `method` are put to its appKey's backend.
    fn asks(&self, conn: ConnId, method: HookMethod) -> bool {
        self.sessions
            .get(&conn)
            .is_some_and(|s| self.config.hooks.asks(s.app_key.as_str(), method))
    }

    /// Parks a publish or play request until the backend answers its hook.
    fn ask_backend(
        &mut self,
        conn: ConnId,
        id: &MediaSessionId,
        request: StreamRequest,
        published: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let method = if published {
            HookMethod::PublishStream
        } else {
            HookMethod::PlayStream
        };
        let body = json!({
            "nodeId": self.config.instance,
            "appKey": session.app_key,
            "sessionId": session.id,
            "mediaSessionId": id,
            "name": request.name,
            "published": published,
            "hasAudio": request.has_audio,
            "hasVideo": request.has_video,
            "record": request.record,
            "mediaProvider": MEDIA_PROVIDER,
            "custom": request.custom,
        });
        tracing::debug!(media_session = %id, method = method.as_str(), "asking the backend");
        self.awaiting.insert(id.clone(), conn);
        out.push(Effect::Hook {
            method,
            body,
            pending: HookPending::Stream {
                conn,
                request,
                published,
            },
        });
    }

    /// A frame that could not be parsed: the client gets a `fail` naming the problem.
    pub fn client_error(&self, conn: ConnId, error: &protocol::FrameError, out: &mut Vec<Effect>) {
        let method = error.api_method().unwrap_or("unknown");
        send(out, conn, protocol::fail(method, &error.to_string(), None));
    }

    /// A signalling connection closed: every stream of its session ends.
    pub fn session_closed(&mut self, conn: ConnId, out: &mut Vec<Effect>) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        tracing::info!(session = %session.id, "session closed");
        self.awaiting.retain(|_, owner| *owner != conn);
        // Its streams end while the session is still known, so their notifications name it.
        for id in session.media.clone() {
            self.end_media(
                &id,
                StreamStatus::Stopped,
                Info::StoppedBySessionDisconnect,
                out,
            );
        }
        if let Some(session) = self.sessions.remove(&conn)
            && session.established
        {
            self.notify_connection(&session, "DISCONNECTED", out);
        }
    }

    /// The server is stopping: every media session ends and its owner is told so
    /// (UNPUBLISHED for publishers, STOPPED for players).
    pub fn shutdown(&mut self, out: &mut Vec<Effect>) {
        self.stopping = true;
        let publishers: Vec<MediaSessionId> = self
            .media
            .values()
            .filter(|m| m.published)
            .map(|m| m.id.clone())
            .collect();
        for id in publishers {
            self.end_media(
                &id,
                StreamStatus::Unpublished,
                Info::StoppedBySessionDisconnect,
                out,
            );
        }
        let players: Vec<MediaSessionId> = self.media.keys().cloned().collect();
        for id in players {
            self.end_media(
                &id,
                StreamStatus::Stopped,
                Info::StoppedBySessionDisconnect,
                out,
            );
        }
    }

    /// An event from the data plane.
    pub fn data_event(&mut self, event: Event, out: &mut Vec<Effect>) {
        match event {
            Event::Sdp { peer, sdp, media } => {
                let Some(id) = self.peers.get(&peer).cloned() else {
                    // The media session ended while the core built the peer: its Close
                    // was queued behind the Accept on the same core, so it is gone.
                    return;
                };
                let Some(ms) = self.media.get_mut(&id) else {
                    return;
                };
                ms.media = media;
                let (conn, published, name) = (ms.conn, ms.published, ms.name.clone());
                send(out, conn, protocol::set_remote_sdp(&id, &sdp));
                if published && let Some(stream) = self.streams.get_mut(&name) {
                    stream.media = Some(media);
                    out.push(Effect::StreamLive { name });
                }
            }
            Event::Connected { peer } => {
                let Some(id) = self.peers.get(&peer).cloned() else {
                    return;
                };
                let Some(ms) = self.media.get_mut(&id) else {
                    return;
                };
                ms.status = if ms.published {
                    StreamStatus::Publishing
                } else {
                    StreamStatus::Playing
                };
                tracing::info!(media_session = %id, stream = %ms.name, %peer, core = %ms.core,
                    status = %ms.status, "stream live");
                let mut event = status_event(ms);
                if !ms.published
                    && let Some(stream) = self.streams.get(&ms.name)
                {
                    event.audio_state = Some(TrackState {
                        muted: stream.audio_muted,
                    });
                    event.video_state = Some(TrackState {
                        muted: stream.video_muted,
                    });
                }
                send(out, ms.conn, protocol::stream_status(&event));
                if !ms.published
                    && let Some((w, h)) = self.streams.get(&ms.name).and_then(|s| s.resolution)
                {
                    send(out, ms.conn, resize_event(&id, w, h));
                }
                self.notify_stream(&self.media[&id], out);
            }
            Event::Failed {
                peer,
                reason,
                continuity,
            } => {
                let Some(id) = self.peers.get(&peer).cloned() else {
                    return;
                };
                if let Some(c) = continuity
                    && let Some(ms) = self.media.get(&id)
                    && let Some(stream) = self.streams.get_mut(&ms.name)
                {
                    stream.continuity = c;
                }
                tracing::info!(media_session = %id, %peer, %reason, "peer failed");
                self.end_media(&id, StreamStatus::Failed, failure_info(&reason), out);
            }
            Event::Resolution {
                peer,
                width,
                height,
            } => self.resolution(peer, width, height, out),
            Event::Negotiated { .. } | Event::Closed { .. } => {}
        }
    }

    /// A REST request about streams or connections.
    pub fn rest(&mut self, request: RestRequest, out: &mut Vec<Effect>) -> RestReply {
        match request {
            RestRequest::StreamFindAll => {
                let list: Vec<StreamInfo> = self.media.values().map(|m| self.info(m)).collect();
                list_reply(list, "no streams")
            }
            RestRequest::StreamFind {
                media_session_id,
                name,
                published,
                status,
            } => {
                let list: Vec<StreamInfo> = self
                    .media
                    .values()
                    .filter(|m| media_session_id.as_ref().is_none_or(|id| *id == m.id))
                    .filter(|m| name.as_ref().is_none_or(|n| *n == m.name))
                    .filter(|m| published.is_none_or(|p| p == m.published))
                    .filter(|m| status.is_none_or(|s| s == m.status))
                    .map(|m| self.info(m))
                    .collect();
                list_reply(list, "stream not found")
            }
            RestRequest::StreamTerminate {
                media_session_ids,
                name,
            } => {
                let mut ids = media_session_ids;
                if let Some(name) = name {
                    let stream = self.streams.get(&name);
                    match stream.map(|s| &s.source) {
                        Some(Source::Publisher(id)) => ids.push(id.clone()),
                        Some(Source::Relay(_)) | None => {
                            ids.extend(
                                self.media
                                    .values()
                                    .filter(|m| m.name == name)
                                    .map(|m| m.id.clone()),
                            );
                        }
                    }
                }
                ids.retain(|id| self.media.contains_key(id));
                ids.dedup();
                if ids.is_empty() {
                    return error_reply(404, "stream not found");
                }
                for id in &ids {
                    let status = match self.media.get(id) {
                        Some(m) if m.published => StreamStatus::Unpublished,
                        _ => StreamStatus::Stopped,
                    };
                    tracing::info!(media_session = %id, "terminated by REST");
                    self.end_media(id, status, Info::StoppedByRestTerminate, out);
                }
                RestReply {
                    status: 200,
                    body: json!({ "terminated": ids }),
                }
            }
            RestRequest::ConnectionFindAll => {
                let list: Vec<ConnectionInfo> = self
                    .sessions
                    .values()
                    .filter(|s| s.established)
                    .map(|s| ConnectionInfo {
                        session_id: s.id.clone(),
                        app_key: s.app_key.clone(),
                        client_version: s.client_version.clone(),
                        remote_address: s.remote_address.clone(),
                        media_providers: s.media_providers.clone(),
                        create_date: s.created_ms,
                    })
                    .collect();
                list_reply(list, "no connections")
            }
            RestRequest::ConnectionTerminate { session_id } => {
                let conn = self
                    .sessions
                    .iter()
                    .find(|(_, s)| s.id == session_id)
                    .map(|(c, _)| *c);
                match conn {
                    Some(conn) => {
                        tracing::info!(session = %session_id, "connection terminated by REST");
                        out.push(Effect::Close { conn });
                        RestReply {
                            status: 200,
                            body: json!({ "terminated": session_id }),
                        }
                    }
                    None => error_reply(404, "connection not found"),
                }
            }
            RestRequest::DataSend {
                session_id,
                operation_id,
                payload,
            } => {
                let Some((conn, session)) = self
                    .sessions
                    .iter()
                    .find(|(_, s)| s.id == session_id && s.established)
                else {
                    return error_reply(404, "connection not found");
                };
                let operation_id = operation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let data = AppData {
                    node_id: self.config.instance.clone(),
                    app_key: session.app_key.clone(),
                    session_id: session.id.clone(),
                    operation_id,
                    payload,
                };
                tracing::debug!(session = %session_id, operation = %data.operation_id,
                    "data sent to a client by REST");
                send(out, *conn, protocol::app_data(&data));
                *self.stats.app_data.entry("sent").or_default() += 1;
                RestReply {
                    status: 200,
                    body: json!({ "operationId": data.operation_id }),
                }
            }
        }
    }

    /// `sendData`: a client's data for the operator's backend. An established session's data
    /// goes to the hub ([`Effect::AppData`]), which answers it; any other session gets
    /// `DataStatusEvent` FAILED with the reason.
    fn send_data(&mut self, conn: ConnId, req: DataRequest, out: &mut Vec<Effect>) {
        let refusal = match self.sessions.get(&conn) {
            Some(s) if s.established && s.authorized => None,
            Some(s) if s.established => Some(Info::RestrictedAccess),
            _ => Some(Info::SessionNotReady),
        };
        if let Some(info) = refusal {
            self.stats.refuse("app_data");
            self.answer_data(conn, &req.operation_id, Some(info.as_str()), out);
            return;
        }
        let app_key = self.sessions[&conn].app_key.as_str();
        if !self.config.hooks.asks(app_key, HookMethod::OnDataEvent) {
            tracing::debug!(conn = conn.0, operation = %req.operation_id,
                "sendData accepted (no OnDataEvent hook)");
            self.answer_data(conn, &req.operation_id, None, out);
            return;
        }
        let session = &self.sessions[&conn];
        let data = AppData {
            node_id: self.config.instance.clone(),
            app_key: session.app_key.clone(),
            session_id: session.id.clone(),
            operation_id: req.operation_id,
            payload: req.payload,
        };
        let pending = HookPending::Data {
            conn,
            operation_id: data.operation_id.clone(),
        };
        out.push(Effect::Hook {
            method: HookMethod::OnDataEvent,
            body: serde_json::to_value(&data).unwrap_or_default(),
            pending,
        });
    }

    /// A source's picture size changed: the stream records it, and its publisher and players
    /// get `notifyStreamEvent` `resize` (the SDK's `videoResolution()` reads it).
    fn resolution(&mut self, peer: PeerId, width: u32, height: u32, out: &mut Vec<Effect>) {
        let id = match self.peers.get(&peer) {
            Some(id) => id.clone(),
            // A pull relay's ingest peer is not in `peers`: its media session names it.
            None => match self.media.values().find(|m| m.published && m.peer == peer) {
                Some(m) => m.id.clone(),
                None => return,
            },
        };
        let Some(ms) = self.media.get(&id).filter(|m| m.published) else {
            return;
        };
        let Some(stream) = self.streams.get_mut(&ms.name) else {
            return;
        };
        stream.resolution = Some((width, height));
        tracing::info!(stream = %ms.name, media_session = %id, width, height, "stream resolution");
        if ms.conn != RELAY_CONN {
            send(out, ms.conn, resize_event(&id, width, height));
        }
        for player in &stream.players {
            if let Some(p) = self.media.get(player) {
                send(out, p.conn, resize_event(player, width, height));
            }
        }
    }

    /// `availableStream` (`stream.available()`): whether stream `name` can be played now, that
    /// is, it is published and its media is negotiated. A session that is not established, or
    /// that needs the token it did not give, is told so as the reason instead.
    fn available(&self, conn: ConnId, r: &StreamRef, out: &mut Vec<Effect>) {
        let id = r.media_session_id.as_ref();
        let refusal = match self.sessions.get(&conn) {
            Some(s) if !s.established => Some(Info::SessionNotReady),
            None => Some(Info::SessionNotReady),
            // Without `connection`'s token, every request must carry it; this one cannot.
            Some(s) if !s.authorized => Some(Info::RestrictedAccess),
            Some(_) => None,
        };
        let live = refusal.is_none()
            && r.name
                .as_ref()
                .and_then(|name| self.streams.get(name))
                .is_some_and(|s| s.media.is_some());
        let info = match refusal {
            Some(info) => Some(info),
            None if !live => Some(Info::StreamNotFound),
            None => None,
        };
        tracing::debug!(conn = conn.0, stream = ?r.name, available = live, "stream availability");
        send(
            out,
            conn,
            protocol::available_stream(id, live, info.map(Info::as_str)),
        );
    }

    /// `sendStreamEvent`: a publisher's mute, unmute or data event. The stream keeps its mute
    /// state (players that join later get it as `audioState` and `videoState` with PLAYING),
    /// and every player of the stream gets `notifyStreamEvent` with its own media session id,
    /// the type and the payload; relays pushing the stream pass it on. A client that does not
    /// publish the stream named, or an event type a publisher may not send, gets a `fail` and
    /// nothing else changes.
    fn stream_event(
        &mut self,
        conn: ConnId,
        req: StreamEventRequest,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        const METHOD: &str = "sendStreamEvent";
        let id = &req.media_session_id;
        let Some(kind) = PublisherEvent::parse(&req.typ) else {
            let info = format!("Unsupported stream event type: {}", req.typ);
            send(out, conn, protocol::fail(METHOD, &info, Some(id)));
            return;
        };
        let name = self
            .media
            .get(id)
            .filter(|m| m.conn == conn && m.published)
            .map(|m| m.name.clone())
            .filter(|name| {
                self.streams
                    .get(name)
                    .is_some_and(|s| s.source == Source::Publisher(id.clone()))
            });
        let Some(name) = name else {
            let info = Info::StreamNotFound.as_str();
            send(out, conn, protocol::fail(METHOD, info, Some(id)));
            return;
        };
        if let Some((kind, info)) = self.over_event_limits(&name, &req.payload, now_ms) {
            self.stats.refuse(kind);
            send(out, conn, protocol::fail(METHOD, &info, Some(id)));
            return;
        }
        self.source_event(&name, id, kind, req.payload, out);
    }

    /// Whether a publisher's event for stream `name` goes beyond the stream event limits: the
    /// refusal's kind (for the metrics) and `info`. An event within them is counted against
    /// the stream's rate. The first refusal of each second is logged.
    fn over_event_limits(
        &mut self,
        name: &StreamName,
        payload: &Value,
        now_ms: u64,
    ) -> Option<(&'static str, String)> {
        let limits = self.config.limits;
        let size = if payload.is_null() {
            0
        } else {
            payload.to_string().len()
        };
        if size > limits.stream_event_bytes {
            tracing::warn!(stream = %name, size, limit = limits.stream_event_bytes,
                "stream event refused: payload too large");
            let info = format!(
                "Stream event payload too large (limit {} bytes)",
                limits.stream_event_bytes
            );
            return Some(("stream_event_bytes", info));
        }
        let limit = limits.stream_events_per_sec;
        let stream = self.streams.get_mut(name).filter(|_| limit > 0)?;
        let second = now_ms / 1000;
        if stream.events_sent.0 != second {
            stream.events_sent = (second, 0);
        }
        stream.events_sent.1 += 1;
        if stream.events_sent.1 <= limit {
            return None;
        }
        if stream.events_sent.1 == limit + 1 {
            tracing::warn!(stream = %name, limit, "stream events refused: too many");
        }
        let info = format!("Too many stream events (limit {limit} per second)");
        Some(("stream_events_per_sec", info))
    }

    /// An event of stream `name`'s source (its publisher, or the remote stream a pull relay
    /// plays): the mute state is kept, every player gets it, and push relays pass it on.
    fn source_event(
        &mut self,
        name: &StreamName,
        source: &MediaSessionId,
        kind: PublisherEvent,
        payload: Value,
        out: &mut Vec<Effect>,
    ) {
        let Some(stream) = self.streams.get_mut(name) else {
            return;
        };
        *self.stats.stream_events.entry(kind.as_str()).or_default() += 1;
        match kind {
            PublisherEvent::AudioMuted => stream.audio_muted = true,
            PublisherEvent::AudioUnmuted => stream.audio_muted = false,
            PublisherEvent::VideoMuted => stream.video_muted = true,
            PublisherEvent::VideoUnmuted => stream.video_muted = false,
            PublisherEvent::Data => {}
        }
        if kind == PublisherEvent::Data {
            tracing::debug!(stream = %name, media_session = %source,
                players = stream.players.len(), "stream data event");
        } else {
            tracing::info!(stream = %name, media_session = %source, event = kind.as_str(),
                players = stream.players.len(), "stream event");
        }
        let frames = StreamEventFrames::new(kind.as_str(), &payload);
        for player in &stream.players {
            if let Some(p) = self.media.get(player) {
                send(out, p.conn, frames.frame(player));
            }
        }
        out.push(Effect::StreamEvent {
            name: name.clone(),
            kind,
            payload,
        });
    }

    /// The remote stream that pull relay `id` plays sent an event: the local stream takes it
    /// as its own source's.
    pub fn relay_source_event(
        &mut self,
        id: &MediaSessionId,
        kind: PublisherEvent,
        payload: Value,
        out: &mut Vec<Effect>,
    ) {
        let name = self.media.get(id).map(|m| m.name.clone());
        if let Some(name) = name
            && self
                .streams
                .get(&name)
                .is_some_and(|s| s.source == Source::Relay(id.clone()))
        {
            self.source_event(&name, id, kind, payload, out);
        }
    }

    /// Pull relay `id`'s remote stream is playing with this mute state (`audioState` and
    /// `videoState` of its PLAYING status): where the local stream's state differs, the
    /// change is passed on as the matching event.
    pub fn relay_source_tracks(
        &mut self,
        id: &MediaSessionId,
        audio: Option<TrackState>,
        video: Option<TrackState>,
        out: &mut Vec<Effect>,
    ) {
        let Some(stream) = self.media.get(id).and_then(|m| self.streams.get(&m.name)) else {
            return;
        };
        let (audio_muted, video_muted) = (stream.audio_muted, stream.video_muted);
        let mut changes = Vec::new();
        if let Some(a) = audio.filter(|a| a.muted != audio_muted) {
            changes.push(if a.muted {
                PublisherEvent::AudioMuted
            } else {
                PublisherEvent::AudioUnmuted
            });
        }
        if let Some(v) = video.filter(|v| v.muted != video_muted) {
            changes.push(if v.muted {
                PublisherEvent::VideoMuted
            } else {
                PublisherEvent::VideoUnmuted
            });
        }
        for kind in changes {
            self.relay_source_event(id, kind, Value::Null, out);
        }
    }

    /// A pull relay becomes the source of local stream `name`: the stream exists (players get
    /// `Stream not found` until [`Registry::relay_source_media`]) and is listed with the
    /// relay's local media session id. Returns the stream's id and home core, or `None` when
    /// the name is in use.
    pub fn relay_source_open(
        &mut self,
        name: &StreamName,
        id: &MediaSessionId,
        via: Vec<String>,
        now_ms: u64,
    ) -> Option<(StreamId, CoreId)> {
        if self.streams.contains_key(name) || self.media.contains_key(id) {
            return None;
        }
        let core = self.place();
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.insert(
            name.clone(),
            Stream {
                name: name.clone(),
                id: stream,
                home: core,
                source: Source::Relay(id.clone()),
                media: None,
                players: Vec::new(),
                continuity: Continuity::default(),
                via,
                resolution: None,
                audio_muted: false,
                video_muted: false,
                events_sent: (0, 0),
            },
        );
        self.add_media(RELAY_CONN, id, name, true, PeerId(0), core, now_ms);
        Some((stream, core))
    }

    /// The relay's current peer (closed when the stream is terminated).
    pub fn relay_source_peer(&mut self, id: &MediaSessionId, peer: PeerId) {
        if let Some(ms) = self.media.get_mut(id) {
            ms.peer = peer;
        }
    }

    /// The relay's peer negotiated `media`: the stream becomes playable and is PUBLISHING.
    /// Returns false when the codecs differ from what the stream's players were given
    /// (payload types may differ: each player's peer maps them to its own).
    pub fn relay_source_media(
        &mut self,
        id: &MediaSessionId,
        media: StreamMedia,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(ms) = self.media.get_mut(id) else {
            return false;
        };
        ms.media = media;
        ms.status = StreamStatus::Publishing;
        let name = ms.name.clone();
        let Some(stream) = self.streams.get_mut(&name) else {
            return false;
        };
        match stream.media {
            Some(existing) => existing.same_codecs(&media),
            None => {
                stream.media = Some(media);
                out.push(Effect::StreamLive { name });
                true
            }
        }
    }

    /// Ends a relay's local stream: its players get STOPPED (`Stopped by publisher stop`).
    pub fn relay_source_end(
        &mut self,
        id: &MediaSessionId,
        status: StreamStatus,
        info: Info,
        out: &mut Vec<Effect>,
    ) {
        self.end_media(id, status, info, out);
    }

    /// Records the servers a relayed stream came through.
    pub fn set_stream_via(&mut self, name: &StreamName, via: Vec<String>) {
        if let Some(s) = self.streams.get_mut(name) {
            s.via = via;
        }
    }

    /// This server's instance id.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// Whether the relay's local media session still exists (REST may have terminated it).
    pub fn has_media(&self, id: &MediaSessionId) -> bool {
        self.media.contains_key(id)
    }

    /// Places a relay's peer: the least-loaded core.
    pub fn place_peer(&mut self) -> (PeerId, CoreId) {
        (self.new_peer(), self.place())
    }

    /// Number of media sessions (publishers and players).
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    /// Number of published streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Number of signalling sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// What has been counted so far (metrics).
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// Peers placed on each core by this registry (clients' and relays').
    pub fn core_load(&self) -> &[usize] {
        &self.load
    }

    /// Publishers and players, by kind: (publishers, players).
    pub fn media_by_kind(&self) -> (usize, usize) {
        let publishers = self.media.values().filter(|m| m.published).count();
        (publishers, self.media.len() - publishers)
    }

    /// A published stream by name.
    pub fn stream(&self, name: &StreamName) -> Option<&Stream> {
        self.streams.get(name)
    }

    /// `publishStream`. With a `publishStream` hook the request waits for the backend first;
    /// `hooked` says the backend has let it through.
    fn publish(
        &mut self,
        conn: ConnId,
        req: StreamRequest,
        now_ms: u64,
        hooked: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some((id, name, sdp)) = self.check_request(conn, &req, true, out) else {
            return;
        };
        if self.streams.contains_key(&name) {
            tracing::info!(media_session = %id, stream = %name, "publish refused: name in use");
            fail_status(out, conn, &id, &name, true, Info::StreamNameAlreadyInUse);
            self.stats.refuse("name_in_use");
            return;
        }
        let via = relay_via(&req.custom);
        if via.contains(&self.config.instance) || via.len() > MAX_RELAY_HOPS {
            tracing::warn!(media_session = %id, stream = %name, ?via, "publish refused: relay loop");
            fail_status_text(out, conn, &id, &name, true, RELAY_LOOP);
            self.stats.refuse("relay_loop");
            return;
        }
        if !hooked && self.asks(conn, HookMethod::PublishStream) {
            self.ask_backend(conn, &id, req, true, out);
            return;
        }
        let core = self.place();
        let peer = self.new_peer();
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.insert(
            name.clone(),
            Stream {
                name: name.clone(),
                id: stream,
                home: core,
                source: Source::Publisher(id.clone()),
                media: None,
                players: Vec::new(),
                continuity: Continuity::default(),
                via,
                resolution: None,
                audio_muted: false,
                video_muted: false,
                events_sent: (0, 0),
            },
        );
        self.add_media(conn, &id, &name, true, peer, core, now_ms);
        self.stats.published += 1;
        tracing::info!(media_session = %id, stream = %name, %peer, %core,
            session = %self.session_id(conn), "publish requested");
        out.push(Effect::Data {
            core,
            command: Command::Accept {
                peer,
                offer: sdp,
                role: Role::Ingest {
                    stream,
                    continuity: Continuity::default(),
                },
            },
        });
    }

    /// `playStream`. With a `playStream` hook the request waits for the backend first;
    /// `hooked` says the backend has let it through.
    fn play(
        &mut self,
        conn: ConnId,
        req: StreamRequest,
        now_ms: u64,
        hooked: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some((id, name, sdp)) = self.check_request(conn, &req, false, out) else {
            return;
        };
        let Some((stream, home, media)) = self
            .streams
            .get(&name)
            .and_then(|s| s.media.map(|m| (s.id, s.home, m)))
        else {
            tracing::info!(media_session = %id, stream = %name, "play refused: not found");
            fail_status(out, conn, &id, &name, false, Info::StreamNotFound);
            self.stats.refuse("not_found");
            return;
        };
        let players = self.streams.get(&name).map_or(0, |s| s.players.len());
        if players >= self.config.limits.players_per_stream {
            let limit = self.config.limits.players_per_stream;
            tracing::warn!(media_session = %id, stream = %name, limit,
                "play refused: players per stream limit");
            let info = format!("Too many players of this stream (limit {limit})");
            fail_status_text(out, conn, &id, &name, false, &info);
            self.stats.refuse("players_per_stream");
            return;
        }
        let via = relay_via(&req.custom);
        if let Some(s) = self.streams.get(&name)
            && (s.via.iter().any(|v| via.contains(v)) || via.contains(&self.config.instance))
        {
            tracing::warn!(media_session = %id, stream = %name, ?via, "play refused: relay loop");
            fail_status_text(out, conn, &id, &name, false, RELAY_LOOP);
            self.stats.refuse("relay_loop");
            return;
        }
        if !hooked && self.asks(conn, HookMethod::PlayStream) {
            self.ask_backend(conn, &id, req, false, out);
            return;
        }
        let core = self.place();
        let peer = self.new_peer();
        if let Some(s) = self.streams.get_mut(&name) {
            s.players.push(id.clone());
        }
        self.add_media(conn, &id, &name, false, peer, core, now_ms);
        self.stats.played += 1;
        tracing::info!(media_session = %id, stream = %name, %peer, %core,
            session = %self.session_id(conn), "play requested");
        out.push(Effect::Data {
            core,
            command: Command::Accept {
                peer,
                offer: sdp,
                role: Role::Egress {
                    stream,
                    home,
                    media,
                    // Another relaycast pulling this stream says so (`relaycastVia`): it
                    // feeds that server's players, so it is served first.
                    relay: !via.is_empty(),
                },
            },
        });
    }

    /// The checks common to publish and play: returns the id, name and offer, or answers
    /// with the failure.
    fn check_request(
        &mut self,
        conn: ConnId,
        req: &StreamRequest,
        published: bool,
        out: &mut Vec<Effect>,
    ) -> Option<(MediaSessionId, StreamName, String)> {
        let method = if published {
            "publishStream"
        } else {
            "playStream"
        };
        let Some(id) = req.media_session_id.clone().filter(|id| !id.0.is_empty()) else {
            send(
                out,
                conn,
                protocol::fail(method, Info::MediaSessionIdNull.as_str(), None),
            );
            self.stats.refuse("bad_request");
            return None;
        };
        let name = req.name.clone().unwrap_or_default();
        let session = self.sessions.get(&conn)?;
        if !session.established {
            fail_status(out, conn, &id, &name, published, Info::SessionNotReady);
            self.stats.refuse("session_not_ready");
            return None;
        }
        if !session.authorized && self.config.access.token(&req.custom) != TokenCheck::Granted {
            tracing::warn!(session = %session.id, media_session = %id, stream = %name,
                method, "request refused: restricted access (token)");
            fail_status(out, conn, &id, &name, published, Info::RestrictedAccess);
            self.stats.refuse("restricted_access");
            return None;
        }
        let limits = self.config.limits;
        if session.media.len() >= limits.streams_per_session {
            tracing::warn!(session = %session.id, media_session = %id, stream = %name, method,
                limit = limits.streams_per_session, "request refused: streams per session limit");
            let limit = limits.streams_per_session;
            let info = format!("Too many streams in this session (limit {limit})");
            fail_status_text(out, conn, &id, &name, published, &info);
            self.stats.refuse("streams_per_session");
            return None;
        }
        if self.load.iter().min().copied().unwrap_or(0) >= limits.peers_per_core {
            tracing::warn!(session = %session.id, media_session = %id, stream = %name, method,
                limit = limits.peers_per_core, "request refused: every core is full");
            let limit = limits.peers_per_core;
            let info = format!("Server is full (limit {limit} peers per core)");
            fail_status_text(out, conn, &id, &name, published, &info);
            self.stats.refuse("peers_per_core");
            return None;
        }
        if self.media.contains_key(&id) || self.awaiting.contains_key(&id) {
            fail_status(
                out,
                conn,
                &id,
                &name,
                published,
                Info::MediaSessionIdAlreadyInUse,
            );
            self.stats.refuse("media_session_id_in_use");
            return None;
        }
        if name.0.is_empty() {
            send(
                out,
                conn,
                protocol::fail(method, "stream name is required", Some(&id)),
            );
            fail_status(out, conn, &id, &name, published, Info::FailedByError);
            self.stats.refuse("bad_request");
            return None;
        }
        let Some(sdp) = req.sdp.clone().filter(|s| !s.trim().is_empty()) else {
            send(
                out,
                conn,
                protocol::fail(method, "an SDP offer is required", Some(&id)),
            );
            fail_status(out, conn, &id, &name, published, Info::FailedByError);
            self.stats.refuse("bad_request");
            return None;
        };
        Some((id, name, sdp))
    }

    fn stop_request(&mut self, conn: ConnId, r: StreamRef, unpublish: bool, out: &mut Vec<Effect>) {
        let method = if unpublish {
            "unPublishStream"
        } else {
            "stopStream"
        };
        // A request still waiting for the backend ends here; its answer will be dropped.
        if let Some(id) = &r.media_session_id
            && self.awaiting.get(id) == Some(&conn)
        {
            self.awaiting.remove(id);
            let status = if unpublish {
                StreamStatus::Unpublished
            } else {
                StreamStatus::Stopped
            };
            let name = r.name.clone().unwrap_or_default();
            let info = Info::StoppedByUser.as_str();
            final_status(out, conn, id, &name, unpublish, status, info);
            return;
        }
        let owned = r
            .media_session_id
            .as_ref()
            .and_then(|id| self.media.get(id))
            .filter(|m| m.conn == conn);
        let Some(ms) = owned else {
            let info = Info::StreamNotFound.as_str();
            send(
                out,
                conn,
                protocol::fail(method, info, r.media_session_id.as_ref()),
            );
            return;
        };
        let (id, published) = (ms.id.clone(), ms.published);
        let (status, info) = if published {
            (StreamStatus::Unpublished, Info::StoppedByUser)
        } else {
            (StreamStatus::Stopped, Info::StoppedByUser)
        };
        tracing::info!(media_session = %id, "stopped by client");
        self.end_media(&id, status, info, out);
    }

    /// Ends one media session: its owner gets the final status, its peer is closed, and if
    /// it published a stream, the stream ends and each player gets STOPPED.
    fn end_media(
        &mut self,
        id: &MediaSessionId,
        status: StreamStatus,
        info: Info,
        out: &mut Vec<Effect>,
    ) {
        let Some(mut ms) = self.media.remove(id) else {
            return;
        };
        self.peers.remove(&ms.peer);
        if let Some(load) = self.load.get_mut(ms.core.index()) {
            *load = load.saturating_sub(1);
        }
        if let Some(session) = self.sessions.get_mut(&ms.conn) {
            session.media.retain(|m| m != id);
        }
        out.push(Effect::Data {
            core: ms.core,
            command: Command::Close { peer: ms.peer },
        });
        ms.status = status;
        ms.info = Some(info.as_str().to_string());
        if info != Info::StoppedBySessionDisconnect || self.stopping {
            let event = status_event(&ms);
            send(out, ms.conn, protocol::stream_status(&event));
        }
        tracing::info!(media_session = %id, stream = %ms.name, peer = %ms.peer,
            %status, info = %info, "stream ended");
        self.notify_stream(&ms, out);
        *self.stats.ended.entry((status, info.as_str())).or_default() += 1;
        if ms.published {
            if let Some(stream) = self.streams.remove(&ms.name) {
                out.push(Effect::StreamEnded {
                    name: ms.name.clone(),
                });
                for player in stream.players {
                    self.end_media(
                        &player,
                        StreamStatus::Stopped,
                        Info::StoppedByPublisherStop,
                        out,
                    );
                }
            }
        } else if let Some(stream) = self.streams.get_mut(&ms.name) {
            stream.players.retain(|p| p != id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_media(
        &mut self,
        conn: ConnId,
        id: &MediaSessionId,
        name: &StreamName,
        published: bool,
        peer: PeerId,
        core: CoreId,
        now_ms: u64,
    ) {
        self.media.insert(
            id.clone(),
            MediaSession {
                id: id.clone(),
                conn,
                name: name.clone(),
                published,
                status: StreamStatus::Pending,
                info: None,
                peer,
                core,
                media: StreamMedia::default(),
                created_ms: now_ms,
            },
        );
        self.peers.insert(peer, id.clone());
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.media.push(id.clone());
        }
        if let Some(load) = self.load.get_mut(core.index()) {
            *load += 1;
        }
    }

    /// The least-loaded core.
    fn place(&self) -> CoreId {
        let (index, _) = self
            .load
            .iter()
            .enumerate()
            .min_by_key(|(i, load)| (**load, *i))
            .unwrap_or((0, &0));
        CoreId(index as u16)
    }

    /// The `sessionId` of a connection (empty for relays and unknown connections), for logs.
    fn session_id(&self, conn: ConnId) -> &str {
        self.sessions.get(&conn).map_or("", |s| s.id.as_str())
    }

    fn new_peer(&mut self) -> PeerId {
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        peer
    }

    fn info(&self, m: &MediaSession) -> StreamInfo {
        let resolution = self.streams.get(&m.name).and_then(|s| s.resolution);
        let session = self.sessions.get(&m.conn);
        StreamInfo {
            app_key: session.map(|s| s.app_key.clone()).unwrap_or_default(),
            session_id: session.map(|s| s.id.clone()).unwrap_or_default(),
            media_session_id: m.id.clone(),
            name: m.name.clone(),
            published: m.published,
            has_video: m.media.video.is_some(),
            has_audio: m.media.audio.is_some(),
            status: m.status,
            info: m.info.clone(),
            audio_codec: m.media.audio_codec().map(str::to_string),
            video_codec: m.media.video_codec().map(str::to_string),
            width: resolution.map_or(0, |r| r.0),
            height: resolution.map_or(0, |r| r.1),
            bitrate: 0,
            create_date: m.created_ms,
            media_provider: MEDIA_PROVIDER,
        }
    }
}

/// The WCS `info` for a data-plane failure.
pub fn failure_info(reason: &PeerFailure) -> Info {
    match reason {
        PeerFailure::NoCommonCodecs => Info::NoCommonCodecs,
        PeerFailure::IceTimeout => Info::FailedByIceTimeout,
        PeerFailure::IceKeepAlive => Info::FailedByKeepAlive,
        PeerFailure::Dtls(_) => Info::FailedByDtlsError,
        PeerFailure::DtlsFingerprint => Info::FailedByDtlsFingerprintError,
        PeerFailure::RtpActivity => Info::FailedByRtpActivity,
        PeerFailure::BadSdp(_)
        | PeerFailure::PeerLimit
        | PeerFailure::Socket(_)
        | PeerFailure::UnknownPeer
        | PeerFailure::Internal(_) => Info::FailedByError,
    }
}

fn status_event(ms: &MediaSession) -> StreamStatusEvent {
    StreamStatusEvent {
        media_session_id: ms.id.clone(),
        name: ms.name.clone(),
        published: ms.published,
        status: ms.status,
        info: ms.info.clone(),
        has_audio: ms.media.audio.is_some(),
        has_video: ms.media.video.is_some(),
        audio_codec: ms.media.audio_codec().map(str::to_string),
        video_codec: ms.media.video_codec().map(str::to_string),
        audio_state: None,
        video_state: None,
    }
}

impl RegistryStats {
    fn refuse(&mut self, kind: &'static str) {
        *self.refused.entry(kind).or_default() += 1;
    }
}

fn send(out: &mut Vec<Effect>, conn: ConnId, frame: String) {
    out.push(Effect::Send { conn, frame });
}

fn fail_status(
    out: &mut Vec<Effect>,
    conn: ConnId,
    id: &MediaSessionId,
    name: &StreamName,
    published: bool,
    info: Info,
) {
    fail_status_text(out, conn, id, name, published, info.as_str());
}

/// `notifyStreamEvent` `resize` with the SDK's payload fields.
fn resize_event(id: &MediaSessionId, width: u32, height: u32) -> String {
    protocol::stream_event(
        id,
        "resize",
        json!({ "streamerVideoWidth": width, "streamerVideoHeight": height }),
    )
}

/// The `info` of a publish or play refused because the stream would loop between servers.
pub const RELAY_LOOP: &str = "Relay loop detected";

fn fail_status_text(
    out: &mut Vec<Effect>,
    conn: ConnId,
    id: &MediaSessionId,
    name: &StreamName,
    published: bool,
    info: &str,
) {
    final_status(out, conn, id, name, published, StreamStatus::Failed, info);
}

/// A final status for a request that never got media (refused, or stopped while it waited).
fn final_status(
    out: &mut Vec<Effect>,
    conn: ConnId,
    id: &MediaSessionId,
    name: &StreamName,
    published: bool,
    status: StreamStatus,
    info: &str,
) {
    let event = StreamStatusEvent {
        media_session_id: id.clone(),
        name: name.clone(),
        published,
        status,
        info: Some(info.to_string()),
        has_audio: false,
        has_video: false,
        audio_codec: None,
        video_codec: None,
        audio_state: None,
        video_state: None,
    };
    send(out, conn, protocol::stream_status(&event));
}

fn list_reply<T: serde::Serialize>(list: Vec<T>, empty: &str) -> RestReply {
    if list.is_empty() {
        return error_reply(404, empty);
    }
    RestReply {
        status: 200,
        body: serde_json::to_value(list).unwrap_or(Value::Null),
    }
}

/// An error answer: `{"error": "...", "status": N}`.
pub fn error_reply(status: u16, error: &str) -> RestReply {
    RestReply {
        status,
        body: json!({ "error": error, "status": status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookOutcome;
    use crate::protocol::{ConnectionRequest, ServerMessage};
    use std::time::Duration;

    const OFFER: &str = "v=0\r\n";

    fn registry(limits: RegistryLimits, access: SignallingAccess) -> Registry {
        Registry::new(RegistryConfig {
            cores: 2,
            access,
            limits,
            ..RegistryConfig::default()
        })
    }

    /// A registry with one established session per connection id given.
    fn with_sessions(conns: &[u64]) -> Registry {
        let mut r = registry(RegistryLimits::default(), SignallingAccess::default());
        for conn in conns {
            connect(&mut r, *conn, ConnectionRequest::default());
        }
        r
    }

    fn connect(r: &mut Registry, conn: u64, req: ConnectionRequest) -> Vec<Effect> {
        let mut out = Vec::new();
        r.session_opened(ConnId(conn), format!("127.0.0.1:{conn}"), 0);
        r.client_message(ConnId(conn), ClientMessage::Connection(req), 0, &mut out);
        out
    }

    fn request(id: &str, name: &str, custom: Value) -> StreamRequest {
        StreamRequest {
            media_session_id: Some(MediaSessionId::from(id)),
            name: Some(StreamName::from(name)),
            sdp: Some(OFFER.into()),
            custom,
            ..StreamRequest::default()
        }
    }

    fn publish(r: &mut Registry, conn: u64, id: &str, name: &str) -> Vec<Effect> {
        let mut out = Vec::new();
        let req = request(id, name, Value::Null);
        r.client_message(ConnId(conn), ClientMessage::PublishStream(req), 0, &mut out);
        out
    }

    fn play(r: &mut Registry, conn: u64, id: &str, name: &str) -> Vec<Effect> {
        let mut out = Vec::new();
        let req = request(id, name, Value::Null);
        r.client_message(ConnId(conn), ClientMessage::PlayStream(req), 0, &mut out);
        out
    }

    /// The data plane answers every `Accept` in `effects` and connects the peer.
    fn answer_all(r: &mut Registry, effects: &[Effect]) -> Vec<Effect> {
        let mut out = Vec::new();
        for effect in effects {
            if let Effect::Data {
                command: Command::Accept { peer, .. },
                ..
            } = effect
            {
                let sdp = Event::Sdp {
                    peer: *peer,
                    sdp: "answer".into(),
                    media: StreamMedia::default(),
                };
                r.data_event(sdp, &mut out);
                r.data_event(Event::Connected { peer: *peer }, &mut out);
            }
        }
        out
    }

    /// Every stream status sent to `conn`, in order: (mediaSessionId, status, info).
    fn statuses(effects: &[Effect], conn: u64) -> Vec<(String, StreamStatus, Option<String>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, frame } if c.0 == conn => {
                    match protocol::parse_server_frame(frame) {
                        Ok(ServerMessage::StreamStatus(s)) => {
                            Some((s.media_session_id.0, s.status, s.info))
                        }
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    fn fails(effects: &[Effect], conn: u64) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, frame } if c.0 == conn => {
                    match protocol::parse_server_frame(frame) {
                        Ok(ServerMessage::Fail { info, .. }) => Some(info.unwrap_or_default()),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    fn accepts(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Data {
                        command: Command::Accept { .. },
                        ..
                    }
                )
            })
            .count()
    }

    fn closes(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Data {
                        command: Command::Close { .. },
                        ..
                    }
                )
            })
            .count()
    }

    fn failed(info: &str) -> Option<String> {
        Some(info.to_owned())
    }

    #[test]
    fn publish_then_play_goes_live() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "p", "s");
        assert_eq!(accepts(&out), 1);
        let live = answer_all(&mut r, &out);
        assert_eq!(
            statuses(&live, 1),
            [("p".into(), StreamStatus::Publishing, None)]
        );
        let out = play(&mut r, 2, "v", "s");
        let live = answer_all(&mut r, &out);
        assert_eq!(
            statuses(&live, 2),
            [("v".into(), StreamStatus::Playing, None)]
        );
        assert_eq!((r.stream_count(), r.media_count()), (1, 2));
        assert_eq!(r.media_by_kind(), (1, 1));
        assert_eq!((r.stats().published, r.stats().played), (1, 1));
        assert_eq!(r.core_load().iter().sum::<usize>(), 2);
    }

    /// `sendStreamEvent` as the SDK sends it for `stream.muteAudio()` and friends.
    fn stream_event(
        r: &mut Registry,
        conn: u64,
        id: &str,
        typ: &str,
        payload: Value,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let req = StreamEventRequest {
            media_session_id: id.into(),
            typ: typ.into(),
            payload,
        };
        r.client_message(
            ConnId(conn),
            ClientMessage::SendStreamEvent(req),
            0,
            &mut out,
        );
        out
    }

    /// Every `notifyStreamEvent` sent to `conn`: (mediaSessionId, type, payload).
    fn stream_events(effects: &[Effect], conn: u64) -> Vec<(String, String, Value)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, frame } if c.0 == conn => {
                    match protocol::parse_server_frame(frame) {
                        Ok(ServerMessage::StreamEvent(v)) => Some((
                            v["mediaSessionId"].as_str()?.to_string(),
                            v["type"].as_str()?.to_string(),
                            v["payload"].clone(),
                        )),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    /// The `audioState` and `videoState` of the stream statuses sent to `conn`.
    fn track_states(
        effects: &[Effect],
        conn: u64,
    ) -> Vec<(Option<TrackState>, Option<TrackState>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, frame } if c.0 == conn => {
                    match protocol::parse_server_frame(frame) {
                        Ok(ServerMessage::StreamStatus(s)) => Some((s.audio_state, s.video_state)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn publisher_events_reach_every_player_of_the_stream() {
        let mut r = with_sessions(&[1, 2, 3, 4]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        for (conn, id) in [(2, "v2"), (3, "v3")] {
            let out = play(&mut r, conn, id, "s");
            answer_all(&mut r, &out);
        }
        let out = publish(&mut r, 4, "other", "t");
        answer_all(&mut r, &out);

        let out = stream_event(&mut r, 1, "p", "audioMuted", Value::Null);
        assert_eq!(
            stream_events(&out, 2),
            [("v2".into(), "audioMuted".into(), json!({}))]
        );
        assert_eq!(
            stream_events(&out, 3),
            [("v3".into(), "audioMuted".into(), json!({}))]
        );
        assert!(stream_events(&out, 1).is_empty() && stream_events(&out, 4).is_empty());
        assert!(fails(&out, 1).is_empty());

        let payload = json!({"number": 33, "string": "hello", "boolean": true});
        let out = stream_event(&mut r, 1, "p", "data", payload.clone());
        assert_eq!(
            stream_events(&out, 3),
            [("v3".into(), "data".into(), payload.clone())]
        );
        // Relays pushing the stream are handed the event too.
        let relayed: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Effect::StreamEvent {
                    name,
                    kind,
                    payload,
                } => Some((name.0.clone(), *kind, payload.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(relayed, [("s".into(), PublisherEvent::Data, payload)]);
        let counted: Vec<_> = r.stats().stream_events.clone().into_iter().collect();
        assert_eq!(counted, [("audioMuted", 1), ("data", 1)]);
    }

    #[test]
    fn stream_events_are_limited_in_size_and_rate() {
        let limits = RegistryLimits {
            stream_event_bytes: 20,
            stream_events_per_sec: 3,
            ..RegistryLimits::default()
        };
        let mut r = registry(limits, SignallingAccess::default());
        for conn in [1, 2] {
            connect(&mut r, conn, ConnectionRequest::default());
        }
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let out = play(&mut r, 2, "v", "s");
        answer_all(&mut r, &out);
        let send_at = |r: &mut Registry, now_ms: u64, payload: Value| {
            let mut out = Vec::new();
            let req = StreamEventRequest {
                media_session_id: "p".into(),
                typ: "data".into(),
                payload,
            };
            r.client_message(
                ConnId(1),
                ClientMessage::SendStreamEvent(req),
                now_ms,
                &mut out,
            );
            out
        };
        // {"t":"0123456789abc"} is 21 bytes of JSON: one over.
        let out = send_at(&mut r, 1_000, json!({"t": "0123456789abc"}));
        assert_eq!(
            fails(&out, 1),
            ["Stream event payload too large (limit 20 bytes)".to_string()]
        );
        assert!(stream_events(&out, 2).is_empty());
        // Three a second pass; the fourth in the same second does not; the next second does.
        for ms in [1_000, 1_300, 1_600] {
            let out = send_at(&mut r, ms, json!({"t": 1}));
            assert_eq!(stream_events(&out, 2).len(), 1, "at {ms} ms");
        }
        let out = send_at(&mut r, 1_900, json!({"t": 1}));
        assert_eq!(
            fails(&out, 1),
            ["Too many stream events (limit 3 per second)".to_string()]
        );
        assert!(stream_events(&out, 2).is_empty());
        let out = send_at(&mut r, 2_000, json!({"t": 1}));
        assert_eq!(stream_events(&out, 2).len(), 1);
        assert_eq!(r.stats().refused.get("stream_event_bytes"), Some(&1));
        assert_eq!(r.stats().refused.get("stream_events_per_sec"), Some(&1));
    }

    #[test]
    fn a_player_that_joins_later_gets_the_mute_state() {
        let mut r = with_sessions(&[1, 2, 3]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let out = play(&mut r, 2, "v2", "s");
        let live = answer_all(&mut r, &out);
        let unmuted = Some(TrackState { muted: false });
        let muted = Some(TrackState { muted: true });
        assert_eq!(track_states(&live, 2), [(unmuted, unmuted)]);

        stream_event(&mut r, 1, "p", "videoMuted", Value::Null);
        stream_event(&mut r, 1, "p", "audioMuted", Value::Null);
        stream_event(&mut r, 1, "p", "audioUnmuted", Value::Null);
        let stream = r.stream(&"s".into()).unwrap();
        assert!(stream.video_muted && !stream.audio_muted);
        let out = play(&mut r, 3, "v3", "s");
        let live = answer_all(&mut r, &out);
        assert_eq!(track_states(&live, 3), [(unmuted, muted)]);
    }

    #[test]
    fn only_the_publisher_sends_its_streams_events() {
        let mut r = with_sessions(&[1, 2, 3]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let out = play(&mut r, 2, "v2", "s");
        answer_all(&mut r, &out);
        let not_found = [Info::StreamNotFound.as_str().to_string()];
        // A player cannot speak for the stream; a stranger cannot use the publisher's id;
        // an unknown id is not found.
        for (conn, id) in [(2, "v2"), (3, "p"), (1, "nope")] {
            let out = stream_event(&mut r, conn, id, "audioMuted", Value::Null);
            assert_eq!(fails(&out, conn), not_found, "conn {conn} id {id}");
            assert!(stream_events(&out, 2).is_empty());
        }
        // The types the server sends itself are refused: the SDK reads their payloads.
        let out = stream_event(&mut r, 1, "p", "notEnoughBandwidth", json!({}));
        assert_eq!(
            fails(&out, 1),
            ["Unsupported stream event type: notEnoughBandwidth".to_string()]
        );
        assert!(stream_events(&out, 2).is_empty());
        assert!(!r.stream(&"s".into()).unwrap().audio_muted);
        // None of it touched the stream.
        assert_eq!((r.stream_count(), r.media_count()), (1, 2));
    }

    /// `availableStream` for `name` from `conn`: the answer's (id, status, info).
    fn availability(r: &mut Registry, conn: u64, name: &str) -> (Value, Value, Value) {
        let mut out = Vec::new();
        let asked = StreamRef {
            media_session_id: Some("ask".into()),
            name: Some(name.into()),
        };
        r.client_message(
            ConnId(conn),
            ClientMessage::AvailableStream(asked),
            0,
            &mut out,
        );
        let [Effect::Send { conn: to, frame }] = out.as_slice() else {
            panic!("one answer expected: {out:?}");
        };
        assert_eq!(to.0, conn);
        let v: Value = serde_json::from_str(frame).unwrap();
        assert_eq!(v["message"], "availableStream");
        let d = &v["data"][0];
        (d["id"].clone(), d["status"].clone(), d["info"].clone())
    }

    #[test]
    fn a_stream_is_available_once_its_media_is_negotiated() {
        let mut r = with_sessions(&[1, 2]);
        let not_found = (json!("ask"), json!("false"), json!("Stream not found"));
        assert_eq!(availability(&mut r, 2, "s"), not_found);
        let out = publish(&mut r, 1, "p", "s");
        // Published, but its SDP is not negotiated yet: not playable.
        assert_eq!(availability(&mut r, 2, "s"), not_found);
        answer_all(&mut r, &out);
        assert_eq!(
            availability(&mut r, 2, "s"),
            (json!("ask"), json!("true"), Value::Null)
        );
        assert_eq!(availability(&mut r, 2, "other"), not_found);
        // Asking changes nothing.
        assert_eq!((r.stream_count(), r.media_count()), (1, 1));
    }

    #[test]
    fn availability_needs_an_established_and_authorized_session() {
        let access = SignallingAccess {
            app_keys: Vec::new(),
            token: Some("secret".into()),
        };
        let mut r = registry(RegistryLimits::default(), access);
        let with_token = ConnectionRequest {
            custom: json!({"token": "secret"}),
            ..ConnectionRequest::default()
        };
        connect(&mut r, 1, with_token);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        assert_eq!(availability(&mut r, 1, "s").1, json!("true"));
        // Connected without the token: every request needs it, this one has no place for it.
        connect(&mut r, 2, ConnectionRequest::default());
        assert_eq!(
            availability(&mut r, 2, "s"),
            (json!("ask"), json!("false"), json!("Restricted access"))
        );
        // A socket that never sent `connection`.
        r.session_opened(ConnId(3), "127.0.0.1:3".into(), 0);
        assert_eq!(availability(&mut r, 3, "s").2, json!("Session not ready"));
    }

    fn send_data(r: &mut Registry, conn: u64, operation: &str, payload: Value) -> Vec<Effect> {
        let mut out = Vec::new();
        let req = DataRequest {
            operation_id: operation.into(),
            payload,
        };
        r.client_message(ConnId(conn), ClientMessage::SendData(req), 0, &mut out);
        out
    }

    /// A registry that asks the backend about `hooks`, with sessions 1 and 2 connected.
    fn hooked(hooks: &[HookMethod]) -> Registry {
        let mut r = Registry::new(RegistryConfig {
            cores: 2,
            hooks: HookPlan::for_every_app(hooks.iter().copied().collect()),
            ..RegistryConfig::default()
        });
        for conn in [1, 2] {
            let out = connect(&mut r, conn, ConnectionRequest::default());
            if let [Effect::Hook { pending, .. }] = out.as_slice() {
                let answer = HookAnswer {
                    method: HookMethod::Connect,
                    pending: pending.clone(),
                    outcome: HookOutcome::Passed,
                    admitted: true,
                    took: Duration::ZERO,
                };
                r.hook_answer(answer, 0, &mut Vec::new());
            }
        }
        r
    }

    /// The one hook in `effects`: its method, body and what it holds.
    fn the_hook(effects: &[Effect]) -> (HookMethod, Value, HookPending) {
        let hooks: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Hook {
                    method,
                    body,
                    pending,
                } => Some((*method, body.clone(), pending.clone())),
                _ => None,
            })
            .collect();
        let [hook] = hooks.as_slice() else {
            panic!("one hook, got {effects:?}");
        };
        hook.clone()
    }

    fn answer(
        r: &mut Registry,
        hook: &(HookMethod, Value, HookPending),
        outcome: HookOutcome,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let answer = HookAnswer {
            method: hook.0,
            pending: hook.2.clone(),
            admitted: outcome.passed(),
            outcome,
            took: Duration::ZERO,
        };
        r.hook_answer(answer, 0, &mut out);
        out
    }

    /// The first object of the frames named `message` sent to `conn`.
    fn frames(effects: &[Effect], conn: u64, message: &str) -> Vec<Value> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, frame } if *c == ConnId(conn) => {
                    serde_json::from_str::<Value>(frame).ok()
                }
                _ => None,
            })
            .filter(|f| f["message"] == message)
            .map(|f| f["data"][0].clone())
            .collect()
    }

    #[test]
    fn send_data_without_a_hook_is_accepted_and_with_one_waits_for_the_backend() {
        let mut r = with_sessions(&[1]);
        let out = send_data(&mut r, 1, "op-0", json!(1));
        assert_eq!(
            frames(&out, 1, "DataStatusEvent"),
            [json!({"operationId": "op-0", "status": "ACCEPTED"})]
        );

        let mut r = hooked(&[HookMethod::OnDataEvent]);
        let out = send_data(&mut r, 1, "op-1", json!({"chat": "hi"}));
        let hook = the_hook(&out);
        assert!(
            frames(&out, 1, "DataStatusEvent").is_empty(),
            "answered before the backend"
        );
        let session = r.sessions[&ConnId(1)].id.clone();
        assert_eq!(hook.0, HookMethod::OnDataEvent);
        assert_eq!(
            hook.1,
            json!({"nodeId": r.instance(), "appKey": "defaultApp", "sessionId": session.as_str(),
                   "operationId": "op-1", "payload": {"chat": "hi"}})
        );
        let out = answer(&mut r, &hook, HookOutcome::Refused(403));
        assert_eq!(
            frames(&out, 1, "DataStatusEvent"),
            [json!({"operationId": "op-1", "status": "FAILED",
                    "info": "Refused by the backend (403)"})]
        );
        let out = send_data(&mut r, 1, "op-2", json!(2));
        let out = answer(&mut r, &the_hook(&out), HookOutcome::Passed);
        assert_eq!(frames(&out, 1, "DataStatusEvent")[0]["status"], "ACCEPTED");
        let counted = &r.stats().app_data;
        assert_eq!(
            (counted.get("accepted"), counted.get("failed")),
            (Some(&1), Some(&1))
        );
    }

    /// The bodies of the notifications of `method` in `effects`.
    fn notices(effects: &[Effect], method: HookMethod) -> Vec<Value> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Hook {
                    method: m,
                    body,
                    pending: HookPending::Nothing,
                } if *m == method => Some(body.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_sessions_of_an_app_with_a_backend_are_put_to_it() {
        let mut r = Registry::new(RegistryConfig {
            hooks: HookPlan {
                methods: [HookMethod::Connect, HookMethod::OnDataEvent]
                    .into_iter()
                    .collect(),
                every_app: false,
                apps: vec!["chatApp".into()],
            },
            ..RegistryConfig::default()
        });
        let chat = ConnectionRequest {
            app_key: "chatApp".into(),
            ..ConnectionRequest::default()
        };
        let out = connect(&mut r, 1, chat);
        assert_eq!(the_hook(&out).0, HookMethod::Connect);
        // Another appKey has no backend: established at once, its data accepted at once.
        let out = connect(&mut r, 2, ConnectionRequest::default());
        assert_eq!(frames(&out, 2, "getUserData").len(), 1);
        let out = send_data(&mut r, 2, "op", json!(1));
        assert_eq!(frames(&out, 2, "DataStatusEvent")[0]["status"], "ACCEPTED");
    }

    #[test]
    fn the_backend_is_told_of_sessions_and_streams() {
        let mut r = Registry::new(RegistryConfig {
            cores: 2,
            hooks: HookPlan::for_every_app(
                [
                    HookMethod::StreamStatusEvent,
                    HookMethod::ConnectionStatusEvent,
                ]
                .into_iter()
                .collect(),
            ),
            ..RegistryConfig::default()
        });
        let out = connect(&mut r, 1, ConnectionRequest::default());
        let session = r.sessions[&ConnId(1)].id.clone();
        let connected = notices(&out, HookMethod::ConnectionStatusEvent);
        assert_eq!(connected.len(), 1);
        assert_eq!(connected[0]["status"], "ESTABLISHED");
        assert_eq!(connected[0]["sessionId"], session.as_str());
        assert_eq!(
            frames(&out, 1, "getUserData").len(),
            1,
            "not held: only told"
        );

        let out = publish(&mut r, 1, "p", "s");
        assert!(notices(&out, HookMethod::StreamStatusEvent).is_empty());
        let out = answer_all(&mut r, &out);
        let live = notices(&out, HookMethod::StreamStatusEvent);
        assert_eq!(live.len(), 1);
        assert_eq!(
            (&live[0]["status"], &live[0]["mediaType"], &live[0]["name"]),
            (&json!("PUBLISHING"), &json!("publish"), &json!("s"))
        );
        assert_eq!(live[0]["nodeId"], r.instance());

        let mut out = Vec::new();
        r.session_closed(ConnId(1), &mut out);
        let ended = notices(&out, HookMethod::StreamStatusEvent);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0]["status"], "STOPPED");
        assert_eq!(
            ended[0]["sessionId"],
            session.as_str(),
            "the ended stream names its session"
        );
        let closed = notices(&out, HookMethod::ConnectionStatusEvent);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0]["status"], "DISCONNECTED");
    }

    #[test]
    fn the_connect_hook_decides_whether_a_session_is_established() {
        let mut r = Registry::new(RegistryConfig {
            hooks: HookPlan::for_every_app([HookMethod::Connect].into_iter().collect()),
            ..RegistryConfig::default()
        });
        let request = ConnectionRequest {
            custom: json!({"login": "ann"}),
            ..ConnectionRequest::default()
        };
        let out = connect(&mut r, 1, request.clone());
        let hook = the_hook(&out);
        assert!(frames(&out, 1, "getUserData").is_empty());
        assert_eq!(hook.1["custom"], json!({"login": "ann"}));
        assert_eq!(hook.1["appKey"], "defaultApp");
        assert_eq!(hook.1["sessionId"], r.sessions[&ConnId(1)].id.as_str());
        // Until the backend answers, the session is not ready.
        assert_eq!(
            statuses(&publish(&mut r, 1, "p", "s"), 1),
            [(
                "p".into(),
                StreamStatus::Failed,
                failed("Session not ready")
            )]
        );
        let out = answer(&mut r, &hook, HookOutcome::Passed);
        assert_eq!(frames(&out, 1, "getUserData").len(), 1);
        assert!(r.sessions[&ConnId(1)].established);

        let out = connect(&mut r, 2, request);
        let hook = the_hook(&out);
        let out = answer(
            &mut r,
            &hook,
            HookOutcome::Failed("no answer within 5000 ms".into()),
        );
        assert_eq!(
            fails(&out, 2),
            ["Backend unavailable: no answer within 5000 ms"]
        );
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Close { conn } if *conn == ConnId(2))),
            "the refused connection is closed"
        );
        assert!(!r.sessions[&ConnId(2)].established);
        assert_eq!(r.stats().refused.get("backend"), Some(&1));
    }

    #[test]
    fn publish_and_play_hooks_hold_the_request_until_the_backend_answers() {
        let mut r = hooked(&[HookMethod::PublishStream, HookMethod::PlayStream]);
        let out = publish(&mut r, 1, "p", "s");
        let hook = the_hook(&out);
        assert_eq!(accepts(&out), 0, "no peer before the backend answers");
        assert_eq!(hook.0, HookMethod::PublishStream);
        assert_eq!(hook.1["name"], "s");
        assert_eq!(hook.1["mediaSessionId"], "p");
        assert_eq!(hook.1["published"], true);
        // Its id is taken while it waits.
        assert_eq!(
            statuses(&publish(&mut r, 1, "p", "other"), 1),
            [(
                "p".into(),
                StreamStatus::Failed,
                failed("MediaSessionId is already in use")
            )]
        );
        let out = answer(&mut r, &hook, HookOutcome::Passed);
        assert_eq!(accepts(&out), 1);
        answer_all(&mut r, &out);

        // A refused player gets the backend's reason.
        let out = play(&mut r, 2, "v1", "s");
        let out = answer(&mut r, &the_hook(&out), HookOutcome::Refused(403));
        assert_eq!(
            statuses(&out, 2),
            [(
                "v1".into(),
                StreamStatus::Failed,
                failed("Refused by the backend (403)")
            )]
        );
        assert_eq!(accepts(&out), 0);

        // A player that stops while it waits is stopped; the late answer changes nothing.
        let out = play(&mut r, 2, "v2", "s");
        let hook = the_hook(&out);
        let mut stopped = Vec::new();
        let stop = StreamRef {
            media_session_id: Some("v2".into()),
            name: Some("s".into()),
        };
        r.client_message(ConnId(2), ClientMessage::StopStream(stop), 0, &mut stopped);
        assert_eq!(
            statuses(&stopped, 2),
            [(
                "v2".into(),
                StreamStatus::Stopped,
                failed("Stopped by user")
            )]
        );
        assert!(answer(&mut r, &hook, HookOutcome::Passed).is_empty());

        // A session that closes while its request waits: the answer is dropped.
        let out = play(&mut r, 2, "v3", "s");
        let hook = the_hook(&out);
        r.session_closed(ConnId(2), &mut Vec::new());
        assert!(answer(&mut r, &hook, HookOutcome::Passed).is_empty());
        assert_eq!(r.stream(&"s".into()).unwrap().players.len(), 0);
    }

    #[test]
    fn send_data_needs_an_established_and_authorized_session() {
        let access = SignallingAccess {
            app_keys: Vec::new(),
            token: Some("secret".into()),
        };
        let mut r = registry(RegistryLimits::default(), access);
        connect(&mut r, 1, ConnectionRequest::default());
        r.session_opened(ConnId(2), "127.0.0.1:2".into(), 0);
        for (conn, info) in [(1, "Restricted access"), (2, "Session not ready")] {
            let out = send_data(&mut r, conn, "op", json!(1));
            let [Effect::Send { conn: to, frame }] = out.as_slice() else {
                panic!("one frame, got {out:?}");
            };
            assert_eq!(*to, ConnId(conn));
            let frame: Value = serde_json::from_str(frame).unwrap();
            assert_eq!(
                frame,
                json!({"message": "DataStatusEvent",
                       "data": [{"operationId": "op", "status": "FAILED", "info": info}]})
            );
        }
        assert_eq!(r.stats().refused.get("app_data"), Some(&2));
    }

    #[test]
    fn rest_data_send_reaches_the_named_session_only() {
        let mut r = with_sessions(&[1, 2]);
        let session = r.sessions[&ConnId(2)].id.clone();
        let mut out = Vec::new();
        let reply = r.rest(
            RestRequest::DataSend {
                session_id: session.clone(),
                operation_id: Some("op-9".into()),
                payload: json!({"message": "hello"}),
            },
            &mut out,
        );
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, json!({"operationId": "op-9"}));
        let [Effect::Send { conn, frame }] = out.as_slice() else {
            panic!("one frame, got {out:?}");
        };
        assert_eq!(*conn, ConnId(2));
        let frame: Value = serde_json::from_str(frame).unwrap();
        assert_eq!(frame["message"], "OnDataEvent");
        assert_eq!(
            frame["data"][0],
            json!({"nodeId": r.instance(), "appKey": "defaultApp", "sessionId": session.as_str(),
                   "operationId": "op-9", "payload": {"message": "hello"}})
        );
        // Without an operationId one is made; an unknown session is 404 and sends nothing.
        let mut out = Vec::new();
        let reply = r.rest(
            RestRequest::DataSend {
                session_id: session,
                operation_id: None,
                payload: json!(1),
            },
            &mut out,
        );
        assert!(!reply.body["operationId"].as_str().unwrap().is_empty());
        let mut out = Vec::new();
        let reply = r.rest(
            RestRequest::DataSend {
                session_id: "nobody".into(),
                operation_id: None,
                payload: json!(1),
            },
            &mut out,
        );
        assert_eq!(reply.status, 404);
        assert!(out.is_empty());
    }

    /// A pull relay from another relaycast names the servers it comes through
    /// (`relaycastVia`); its player is marked as a relay, so the core serves it first.
    #[test]
    fn a_pulling_relaycast_is_a_relay_subscriber_a_browser_is_not() {
        let mut r = with_sessions(&[1, 2, 3]);
        let published = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &published);
        let relay_flag = |effects: &[Effect]| {
            effects.iter().find_map(|e| match e {
                Effect::Data {
                    command:
                        Command::Accept {
                            role: Role::Egress { relay, .. },
                            ..
                        },
                    ..
                } => Some(*relay),
                _ => None,
            })
        };
        assert_eq!(relay_flag(&play(&mut r, 2, "v", "s")), Some(false));
        let mut out = Vec::new();
        let req = request("edge", "s", json!({"relaycastVia": ["edge-instance"]}));
        r.client_message(ConnId(3), ClientMessage::PlayStream(req), 0, &mut out);
        assert_eq!(relay_flag(&out), Some(true));
    }

    #[test]
    fn duplicate_stream_name_is_refused() {
        let mut r = with_sessions(&[1, 2]);
        publish(&mut r, 1, "p1", "s");
        let out = publish(&mut r, 2, "p2", "s");
        assert_eq!(accepts(&out), 0);
        assert_eq!(
            statuses(&out, 2),
            [(
                "p2".into(),
                StreamStatus::Failed,
                failed("Stream name is already in use")
            )]
        );
        assert_eq!(r.stats().refused.get("name_in_use"), Some(&1));
    }

    #[test]
    fn unknown_stream_is_not_found() {
        let mut r = with_sessions(&[1]);
        let out = play(&mut r, 1, "v", "nothing");
        assert_eq!(
            statuses(&out, 1),
            [("v".into(), StreamStatus::Failed, failed("Stream not found"))]
        );
        // Published but not yet negotiated: still not playable.
        publish(&mut r, 1, "p", "early");
        let out = play(&mut r, 1, "v2", "early");
        assert_eq!(statuses(&out, 1)[0].2, failed("Stream not found"));
    }

    #[test]
    fn reused_media_session_id_is_refused() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "same", "a");
        answer_all(&mut r, &out);
        let out = publish(&mut r, 1, "same", "b");
        assert_eq!(
            statuses(&out, 1),
            [(
                "same".into(),
                StreamStatus::Failed,
                failed("MediaSessionId is already in use")
            )]
        );
        let out = play(&mut r, 2, "same", "a");
        assert_eq!(
            statuses(&out, 2)[0].2,
            failed("MediaSessionId is already in use")
        );
        let mut out = Vec::new();
        let req = StreamRequest {
            media_session_id: None,
            ..request("", "a", Value::Null)
        };
        r.client_message(ConnId(2), ClientMessage::PlayStream(req), 0, &mut out);
        assert_eq!(fails(&out, 2), ["MediaSessionId is null"]);
    }

    #[test]
    fn request_before_connection_is_session_not_ready() {
        let mut r = registry(RegistryLimits::default(), SignallingAccess::default());
        r.session_opened(ConnId(1), "127.0.0.1:1".into(), 0);
        let out = publish(&mut r, 1, "p", "s");
        assert_eq!(statuses(&out, 1)[0].2, failed("Session not ready"));
    }

    #[test]
    fn publisher_end_stops_players() {
        let mut r = with_sessions(&[1, 2, 3]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        for (conn, id) in [(2, "v2"), (3, "v3")] {
            let out = play(&mut r, conn, id, "s");
            answer_all(&mut r, &out);
        }
        let mut out = Vec::new();
        let stop = StreamRef {
            media_session_id: Some(MediaSessionId::from("p")),
            name: Some(StreamName::from("s")),
        };
        r.client_message(ConnId(1), ClientMessage::UnPublishStream(stop), 0, &mut out);
        assert_eq!(
            statuses(&out, 1),
            [(
                "p".into(),
                StreamStatus::Unpublished,
                failed("Stopped by user")
            )]
        );
        for (conn, id) in [(2, "v2"), (3, "v3")] {
            assert_eq!(
                statuses(&out, conn),
                [(
                    id.into(),
                    StreamStatus::Stopped,
                    failed("Stopped by publisher stop")
                )]
            );
        }
        assert_eq!(closes(&out), 3, "every peer is closed");
        assert!(out.iter().any(|e| matches!(e, Effect::StreamEnded { .. })));
        assert_eq!((r.stream_count(), r.media_count()), (0, 0));
        assert_eq!(r.core_load().iter().sum::<usize>(), 0);
        let ended = &r.stats().ended;
        assert_eq!(
            ended.get(&(StreamStatus::Stopped, "Stopped by publisher stop")),
            Some(&2)
        );
    }

    #[test]
    fn a_client_stops_only_what_it_owns() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let mut out = Vec::new();
        let stop = StreamRef {
            media_session_id: Some(MediaSessionId::from("p")),
            name: None,
        };
        r.client_message(ConnId(2), ClientMessage::StopStream(stop), 0, &mut out);
        assert_eq!(fails(&out, 2), ["Stream not found"]);
        assert_eq!(r.stream_count(), 1);
    }

    #[test]
    fn session_close_ends_its_streams_silently() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let out = play(&mut r, 2, "v", "s");
        answer_all(&mut r, &out);
        let mut out = Vec::new();
        r.session_closed(ConnId(1), &mut out);
        // The closed session is told nothing (its socket is gone); its player is.
        assert!(statuses(&out, 1).is_empty());
        assert_eq!(
            statuses(&out, 2),
            [(
                "v".into(),
                StreamStatus::Stopped,
                failed("Stopped by publisher stop")
            )]
        );
        assert_eq!(
            (r.session_count(), r.stream_count(), r.media_count()),
            (1, 0, 0)
        );
    }

    #[test]
    fn rest_find_filters_by_status() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        play(&mut r, 2, "v", "s");
        let mut find = |status| {
            let request = RestRequest::StreamFind {
                media_session_id: None,
                name: None,
                published: None,
                status: Some(status),
            };
            let reply = r.rest(request, &mut Vec::new());
            let ids: Vec<Value> = reply.body.as_array().map_or(Vec::new(), |list| {
                list.iter().map(|s| s["mediaSessionId"].clone()).collect()
            });
            (reply.status, ids)
        };
        assert_eq!(find(StreamStatus::Publishing), (200, vec![json!("p")]));
        assert_eq!(find(StreamStatus::Pending), (200, vec![json!("v")]));
        assert_eq!(find(StreamStatus::Playing).0, 404);
    }

    #[test]
    fn rest_terminate_and_connection_terminate() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let out = play(&mut r, 2, "v", "s");
        answer_all(&mut r, &out);
        let mut out = Vec::new();
        let reply = r.rest(
            RestRequest::StreamTerminate {
                media_session_ids: vec![],
                name: Some(StreamName::from("s")),
            },
            &mut out,
        );
        assert_eq!(reply.status, 200);
        assert_eq!(
            statuses(&out, 1),
            [(
                "p".into(),
                StreamStatus::Unpublished,
                failed("Stopped by rest /terminate")
            )]
        );
        assert_eq!(statuses(&out, 2)[0].2, failed("Stopped by publisher stop"));
        let reply = r.rest(
            RestRequest::StreamTerminate {
                media_session_ids: vec![MediaSessionId::from("p")],
                name: None,
            },
            &mut out,
        );
        assert_eq!(reply.status, 404);
        assert_eq!(r.rest(RestRequest::StreamFindAll, &mut out).status, 404);
        let sessions = r.rest(RestRequest::ConnectionFindAll, &mut out);
        assert_eq!(sessions.status, 200);
        let id = sessions.body[0]["sessionId"].as_str().unwrap().to_owned();
        let mut out = Vec::new();
        let reply = r.rest(
            RestRequest::ConnectionTerminate {
                session_id: SessionId(id),
            },
            &mut out,
        );
        assert_eq!(reply.status, 200);
        assert!(matches!(out[..], [Effect::Close { .. }]));
        let reply = r.rest(
            RestRequest::ConnectionTerminate {
                session_id: SessionId("nope".into()),
            },
            &mut out,
        );
        assert_eq!(reply.status, 404);
    }

    #[test]
    fn shutdown_gives_every_client_its_final_status() {
        let mut r = with_sessions(&[1, 2]);
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        let out = play(&mut r, 2, "v", "s");
        answer_all(&mut r, &out);
        let mut out = Vec::new();
        r.shutdown(&mut out);
        assert_eq!(
            statuses(&out, 1),
            [(
                "p".into(),
                StreamStatus::Unpublished,
                failed("Stopped by session disconnect")
            )]
        );
        let player = statuses(&out, 2);
        assert_eq!(player.len(), 1);
        assert_eq!(player[0].1, StreamStatus::Stopped);
        assert_eq!(r.media_count(), 0);
    }

    #[test]
    fn peer_failure_is_reported_with_its_info() {
        let mut r = with_sessions(&[1]);
        let out = publish(&mut r, 1, "p", "s");
        let Some(Effect::Data {
            command: Command::Accept { peer, .. },
            ..
        }) = out.iter().find(|e| matches!(e, Effect::Data { .. }))
        else {
            panic!("no accept: {out:?}");
        };
        let mut out = Vec::new();
        let event = Event::Failed {
            peer: *peer,
            reason: PeerFailure::IceTimeout,
            continuity: None,
        };
        r.data_event(event, &mut out);
        assert_eq!(
            statuses(&out, 1),
            [(
                "p".into(),
                StreamStatus::Failed,
                failed("Failed by ICE timeout")
            )]
        );
        assert_eq!(r.stream_count(), 0);
    }

    #[test]
    fn app_keys_and_token_restrict_access() {
        let access = SignallingAccess {
            app_keys: vec!["live".into()],
            token: Some("secret".into()),
        };
        let mut r = registry(RegistryLimits::default(), access);
        // A wrong appKey: fail + close.
        let out = connect(
            &mut r,
            1,
            ConnectionRequest {
                app_key: AppKey::from("other"),
                ..ConnectionRequest::default()
            },
        );
        assert_eq!(fails(&out, 1), ["Restricted access"]);
        assert!(out.iter().any(|e| matches!(e, Effect::Close { .. })));
        // A wrong token in connection: fail + close.
        let out = connect(
            &mut r,
            2,
            ConnectionRequest {
                app_key: AppKey::from("live"),
                custom: json!({"token": "guess"}),
                ..ConnectionRequest::default()
            },
        );
        assert_eq!(fails(&out, 2), ["Restricted access"]);
        // No token in connection: the session opens, but each request needs the token.
        let out = connect(
            &mut r,
            3,
            ConnectionRequest {
                app_key: AppKey::from("live"),
                ..ConnectionRequest::default()
            },
        );
        assert!(fails(&out, 3).is_empty());
        let out = publish(&mut r, 3, "p", "s");
        assert_eq!(
            statuses(&out, 3),
            [(
                "p".into(),
                StreamStatus::Failed,
                failed("Restricted access")
            )]
        );
        let mut out = Vec::new();
        let req = request("p", "s", json!({"token": "secret"}));
        r.client_message(ConnId(3), ClientMessage::PublishStream(req), 0, &mut out);
        assert_eq!(accepts(&out), 1);
        // The token in connection covers the whole session.
        connect(
            &mut r,
            4,
            ConnectionRequest {
                app_key: AppKey::from("live"),
                custom: json!({"token": "secret"}),
                ..ConnectionRequest::default()
            },
        );
        let out = publish(&mut r, 4, "p4", "s4");
        assert_eq!(accepts(&out), 1);
        assert_eq!(r.stats().refused.get("restricted_access"), Some(&3));
    }

    #[test]
    fn streams_per_session_limit() {
        let limits = RegistryLimits {
            streams_per_session: 2,
            ..RegistryLimits::default()
        };
        let mut r = registry(limits, SignallingAccess::default());
        connect(&mut r, 1, ConnectionRequest::default());
        assert_eq!(accepts(&publish(&mut r, 1, "a", "a")), 1);
        assert_eq!(accepts(&publish(&mut r, 1, "b", "b")), 1);
        let out = publish(&mut r, 1, "c", "c");
        assert_eq!(accepts(&out), 0);
        assert_eq!(
            statuses(&out, 1)[0].2,
            failed("Too many streams in this session (limit 2)")
        );
        assert_eq!(r.stats().refused.get("streams_per_session"), Some(&1));
    }

    #[test]
    fn players_per_stream_limit() {
        let limits = RegistryLimits {
            players_per_stream: 1,
            ..RegistryLimits::default()
        };
        let mut r = registry(limits, SignallingAccess::default());
        for conn in 1..=3 {
            connect(&mut r, conn, ConnectionRequest::default());
        }
        let out = publish(&mut r, 1, "p", "s");
        answer_all(&mut r, &out);
        assert_eq!(accepts(&play(&mut r, 2, "v2", "s")), 1);
        let out = play(&mut r, 3, "v3", "s");
        assert_eq!(accepts(&out), 0);
        assert_eq!(
            statuses(&out, 3)[0].2,
            failed("Too many players of this stream (limit 1)")
        );
    }

    #[test]
    fn peers_per_core_limit() {
        let limits = RegistryLimits {
            peers_per_core: 1,
            ..RegistryLimits::default()
        };
        let mut r = registry(limits, SignallingAccess::default());
        for conn in 1..=3 {
            connect(&mut r, conn, ConnectionRequest::default());
        }
        // Two cores, one peer each.
        assert_eq!(accepts(&publish(&mut r, 1, "a", "a")), 1);
        assert_eq!(accepts(&publish(&mut r, 2, "b", "b")), 1);
        let out = publish(&mut r, 3, "c", "c");
        assert_eq!(
            statuses(&out, 3)[0].2,
            failed("Server is full (limit 1 peers per core)")
        );
        assert_eq!(r.stats().refused.get("peers_per_core"), Some(&1));
    }
}
