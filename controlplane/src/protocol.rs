//! WCS signalling frames in both directions, in the form the official `@flashphoner/websdk`
//! sends and reads them, and the JSON objects of the REST stream and connection calls.
//! The contract is shared/PROTOCOL.md. Where it disagrees with the SDK, this module follows
//! the SDK.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Defines a string newtype that serializes as a bare JSON string.
macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

string_newtype!(
    /// A stream's `mediaSessionId`. The client picks it (a UUID) in `publishStream`/`playStream`.
    MediaSessionId
);
string_newtype!(
    /// A stream's `name`. Players find a published stream by this name.
    StreamName
);
string_newtype!(
    /// A WebSocket session's `sessionId`, chosen by the server in `getUserData`.
    SessionId
);
string_newtype!(
    /// The `appKey` that a `connection` names (the SDK's default is [`DEFAULT_APP_KEY`]).
    AppKey
);

/// The `mediaProvider` value for WebRTC. It is the only media provider relaycast serves.
pub const MEDIA_PROVIDER: &str = "WebRTC";
/// The `appKey` the SDK sends when the application sets none.
pub const DEFAULT_APP_KEY: &str = "defaultApp";
/// The `clientVersion` the SDK 2.0.x sends in `connection`.
pub const CLIENT_VERSION: &str = "2.0";

// ---------------------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------------------

/// A frame from a client (the SDK, or relaycast's own client), parsed by [`parse_client_frame`].
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// `connection`: the first frame of a session. The server answers with `getUserData`.
    Connection(ConnectionRequest),
    /// `publishStream`: an offer to publish a stream.
    PublishStream(StreamRequest),
    /// `playStream`: an offer to play a stream.
    PlayStream(StreamRequest),
    /// `unPublishStream`: the publisher stops.
    UnPublishStream(StreamRef),
    /// `stopStream`: a player stops.
    StopStream(StreamRef),
    /// `ping`: the server answers with `pong`.
    Ping,
    /// `pong`: the answer to a server `ping`.
    Pong,
    /// `sendStreamEvent`: a publisher's event (mute, unmute, data) for its stream's players.
    SendStreamEvent(StreamEventRequest),
    /// `availableStream`: the SDK's `stream.available()` asks whether `name` can be played.
    AvailableStream(StreamRef),
    /// `sendData`: the SDK's `session.sendData(payload)`, data for the operator's backend. The
    /// server answers with `DataStatusEvent`.
    SendData(DataRequest),
    /// Any other message name, such as
    /// `snapshot`, `call` or `hangup`. Its data is not checked. The server answers with a
    /// `fail` frame that names it.
    Unsupported {
        /// The frame's `message`, verbatim.
        message: String,
    },
}

impl ClientMessage {
    /// The frame's `message` name as the SDK spells it. Use it as `apiMethod` in `fail`.
    pub fn name(&self) -> &str {
        match self {
            Self::Connection(_) => CONNECTION,
            Self::PublishStream(_) => PUBLISH_STREAM,
            Self::PlayStream(_) => PLAY_STREAM,
            Self::UnPublishStream(_) => UN_PUBLISH_STREAM,
            Self::StopStream(_) => STOP_STREAM,
            Self::Ping => PING,
            Self::Pong => PONG,
            Self::SendStreamEvent(_) => SEND_STREAM_EVENT,
            Self::AvailableStream(_) => AVAILABLE_STREAM,
            Self::SendData(_) => SEND_DATA,
            Self::Unsupported { message } => message,
        }
    }
}

/// The fields of `connection` that relaycast uses. Other fields are accepted and dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionRequest {
    /// `appKey`. [`DEFAULT_APP_KEY`] when it is absent, null or empty, as the SDK's
    /// `|| "defaultApp"` gives.
    pub app_key: AppKey,
    /// `mediaProviders`, e.g. `["WebRTC", "MSE", "WSPlayer"]`. Empty when absent.
    pub media_providers: Vec<String>,
    /// `clientVersion` (`"2.0"` for the SDK).
    pub client_version: Option<String>,
    /// `authToken`, sent when the client reconnects.
    pub auth_token: Option<String>,
    /// `keepAlive`. False when absent.
    pub keep_alive: bool,
    /// `custom`, raw. `Null` when absent.
    pub custom: Value,
}

impl Default for ConnectionRequest {
    /// What the SDK sends by default: `defaultApp`, `["WebRTC"]`, client version `2.0`.
    fn default() -> Self {
        Self {
            app_key: AppKey::from(DEFAULT_APP_KEY),
            media_providers: vec![MEDIA_PROVIDER.to_owned()],
            client_version: Some(CLIENT_VERSION.to_owned()),
            auth_token: None,
            keep_alive: false,
            custom: Value::Null,
        }
    }
}

/// The fields of `publishStream` and `playStream` that relaycast uses. Other fields are accepted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamRequest {
    /// `mediaSessionId`, the client's UUID for this stream.
    pub media_session_id: Option<MediaSessionId>,
    /// `name`. A JSON number is accepted and becomes its decimal text.
    pub name: Option<StreamName>,
    /// `sdp`: the offer. The SDK sends it with no candidates.
    pub sdp: Option<String>,
    /// `hasAudio`.
    pub has_audio: Option<bool>,
    /// `hasVideo`.
    pub has_video: Option<bool>,
    /// `record`. False when absent or null.
    pub record: bool,
    /// `custom`, raw. `Null` when absent.
    pub custom: Value,
    /// `constraints`, raw. `Null` when absent.
    pub constraints: Value,
    /// `minBitrate` in kbps. The SDK sends a number, a string or nothing. When the value is 0
    /// (the SDK's "unset"), negative or unparsable, this is `None`.
    pub min_bitrate: Option<u64>,
    /// `maxBitrate` in kbps, read the same way as `min_bitrate`.
    pub max_bitrate: Option<u64>,
    /// `published`: true in `publishStream` and false in `playStream` as the SDK sends them.
    pub published: Option<bool>,
}

/// The stream that `unPublishStream` or `stopStream` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamRef {
    /// `mediaSessionId`.
    pub media_session_id: Option<MediaSessionId>,
    /// `name`.
    pub name: Option<StreamName>,
}

/// What `sendStreamEvent` carries: the SDK's `stream.muteAudio()`, `unmuteAudio()`,
/// `muteVideo()`, `unmuteVideo()` and `sendData(payload)` send it for a published stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEventRequest {
    /// `mediaSessionId`: the publisher's own stream.
    pub media_session_id: MediaSessionId,
    /// `type`, e.g. `audioMuted` or `data` (the SDK's `STREAM_EVENT_TYPE`).
    pub typ: String,
    /// `payload`, raw: the object `sendData` was given. `Null` when absent.
    pub payload: Value,
}

/// What `sendData` carries: the SDK's `session.sendData(payload)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DataRequest {
    /// `operationId`: the SDK's id for the operation, echoed in `DataStatusEvent`.
    pub operation_id: String,
    /// `payload`, raw: the object `sendData` was given. `Null` when absent.
    pub payload: Value,
}

/// A stream event type that a publisher may send, as the SDK's `STREAM_EVENT_TYPE` names
/// them. The types the server itself sends (`resize`, `notEnoughBandwidth`, the snapshot
/// results) are not among them: the SDK reads fields of their payloads that a client could
/// leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublisherEvent {
    /// `audioMuted`.
    AudioMuted,
    /// `audioUnmuted`.
    AudioUnmuted,
    /// `videoMuted`.
    VideoMuted,
    /// `videoUnmuted`.
    VideoUnmuted,
    /// `data`: `stream.sendData(payload)`.
    Data,
}

impl PublisherEvent {
    /// Every type, in the SDK's order.
    pub const ALL: [Self; 5] = [
        Self::AudioMuted,
        Self::AudioUnmuted,
        Self::VideoMuted,
        Self::VideoUnmuted,
        Self::Data,
    ];

    /// The SDK's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AudioMuted => "audioMuted",
            Self::AudioUnmuted => "audioUnmuted",
            Self::VideoMuted => "videoMuted",
            Self::VideoUnmuted => "videoUnmuted",
            Self::Data => "data",
        }
    }

    /// The type named `name`, if a publisher may send it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Whether a stream's audio or video is muted by its publisher: `audioState` and `videoState`
/// in `notifyStreamStatusEvent`, which the SDK's `stream.getAudioState()` and
/// `getVideoState()` return.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackState {
    /// `muted`.
    #[serde(default)]
    pub muted: bool,
}

/// Parses one text frame from a client. The result is never a panic, whatever the input.
///
/// `ping` and `pong` accept any `data`: absent, `[]` or `[null]`. The five stream and session
/// messages need an object in `data[0]`, and the fields they use must have the right JSON type.
/// Unknown fields are ignored. Unknown message names become [`ClientMessage::Unsupported`].
pub fn parse_client_frame(text: &str) -> Result<ClientMessage, FrameError> {
    let (message, data) = split_frame(text)?;
    let parsed = match message.as_str() {
        CONNECTION => {
            ClientMessage::Connection(connection_request(first_object(CONNECTION, data)?)?)
        }
        PUBLISH_STREAM => ClientMessage::PublishStream(stream_request(
            PUBLISH_STREAM,
            first_object(PUBLISH_STREAM, data)?,
        )?),
        PLAY_STREAM => ClientMessage::PlayStream(stream_request(
            PLAY_STREAM,
            first_object(PLAY_STREAM, data)?,
        )?),
        UN_PUBLISH_STREAM => ClientMessage::UnPublishStream(stream_ref(
            UN_PUBLISH_STREAM,
            first_object(UN_PUBLISH_STREAM, data)?,
        )?),
        STOP_STREAM => {
            ClientMessage::StopStream(stream_ref(STOP_STREAM, first_object(STOP_STREAM, data)?)?)
        }
        PING => ClientMessage::Ping,
        PONG => ClientMessage::Pong,
        SEND_STREAM_EVENT => ClientMessage::SendStreamEvent(stream_event_request(first_object(
            SEND_STREAM_EVENT,
            data,
        )?)?),
        AVAILABLE_STREAM => ClientMessage::AvailableStream(stream_ref(
            AVAILABLE_STREAM,
            first_object(AVAILABLE_STREAM, data)?,
        )?),
        SEND_DATA => ClientMessage::SendData(data_request(first_object(SEND_DATA, data)?)?),
        _ => ClientMessage::Unsupported { message },
    };
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------------------------

/// The object in `getUserData`. It moves the SDK session to ESTABLISHED, and the SDK keeps
/// `authToken` for reconnects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserData {
    /// `authToken`.
    pub auth_token: String,
    /// `sessionId`.
    pub session_id: SessionId,
    /// `appKey`, as the client sent it (or the default).
    pub app_key: AppKey,
    /// `mediaProviders`.
    pub media_providers: Vec<String>,
    /// `serverVersion`.
    pub server_version: String,
    /// `clientVersion`, echoed when the client sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// `relaycastInstance`: this server's instance id, for relay loop detection (an extra
    /// field; the SDK ignores it).
    #[serde(rename = "relaycastInstance", skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The object in `notifyStreamStatusEvent`. Deserializing it accepts missing optional fields,
/// nulls and extra fields. Only `mediaSessionId` and `status` are required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatusEvent {
    /// `mediaSessionId`. The SDK sends the event to the stream with this id.
    pub media_session_id: MediaSessionId,
    /// `name`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: StreamName,
    /// `published`: true for a publisher's stream.
    #[serde(default, deserialize_with = "null_as_default")]
    pub published: bool,
    /// `status`.
    pub status: StreamStatus,
    /// `info`: the reason, usually an [`Info`] string. The SDK shows it as `stream.getInfo()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    /// `hasAudio`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub has_audio: bool,
    /// `hasVideo`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub has_video: bool,
    /// `audioCodec`, e.g. `opus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_codec: Option<String>,
    /// `videoCodec`, e.g. `VP8` or `H264`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_codec: Option<String>,
    /// `audioState`: whether the publisher muted the audio. Sent to players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_state: Option<TrackState>,
    /// `videoState`: whether the publisher muted the video. Sent to players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_state: Option<TrackState>,
}

/// Builds `getUserData`: `data: [ {authToken, sessionId, appKey, mediaProviders, ...} ]`.
pub fn get_user_data(d: &UserData) -> String {
    frame(GET_USER_DATA, [d])
}

/// Builds `setRemoteSDP`. Its data is the two-element array `[mediaSessionId, sdp]`, not an
/// object. The SDK applies it as the answer, but only for an id it has already sent, and it
/// ignores an empty `sdp`.
pub fn set_remote_sdp(id: &MediaSessionId, sdp: &str) -> String {
    frame(SET_REMOTE_SDP, (id, sdp))
}

/// Builds `notifyStreamStatusEvent` from `e` and adds `record: false`.
///
/// For NOT_ENOUGH_BANDWIDTH without `info`, the frame gets `info: ""`, because the SDK calls
/// `info.split("/")` on that status and would throw.
pub fn stream_status(e: &StreamStatusEvent) -> String {
    let missing_info =
        (e.status == StreamStatus::NotEnoughBandwidth && e.info.is_none()).then_some("");
    frame(
        NOTIFY_STREAM_STATUS_EVENT,
        [StatusFrame {
            event: e,
            record: false,
            missing_info,
        }],
    )
}

/// Builds `notifyStreamEvent`: `data: [ {mediaSessionId, type, payload} ]`, e.g. type `resize`
/// with payload `{streamerVideoWidth, streamerVideoHeight}`.
///
/// A null `payload` is sent as `{}`, because the SDK reads `payload.<field>` for `resize` and
/// `notEnoughBandwidth`. For `notEnoughBandwidth` the payload must hold an `info` string.
pub fn stream_event(id: &MediaSessionId, typ: &str, payload: Value) -> String {
    let payload = if payload.is_null() {
        Value::Object(Map::new())
    } else {
        payload
    };
    frame(
        NOTIFY_STREAM_EVENT,
        [EventFrame {
            media_session_id: id,
            typ,
            payload,
        }],
    )
}

/// Builds the answer to `availableStream`: `data: [ {id, status, info?} ]`, where `status` is
/// the string `"true"` or `"false"` (the SDK compares it with `== "true"`) and `info` is the
/// reason a stream is not available, which the SDK keeps as `stream.getInfo()`.
pub fn available_stream(
    id: Option<&MediaSessionId>,
    available: bool,
    info: Option<&str>,
) -> String {
    #[derive(Serialize)]
    struct AvailableFrame<'a> {
        id: Option<&'a MediaSessionId>,
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a str>,
    }
    let status = if available { "true" } else { "false" };
    frame(AVAILABLE_STREAM, [AvailableFrame { id, status, info }])
}

/// Builds `DataStatusEvent`, the answer to `sendData`: `data: [ {operationId, status, info?} ]`
/// with `status` `"ACCEPTED"` or `"FAILED"`. The SDK settles the promise `sendData` returned:
/// it resolves on `ACCEPTED` and rejects on `FAILED`, with this object (without
/// `operationId`).
pub fn data_status(operation_id: &str, accepted: bool, info: Option<&str>) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct DataStatusFrame<'a> {
        operation_id: &'a str,
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a str>,
    }
    let status = if accepted { "ACCEPTED" } else { "FAILED" };
    frame(
        DATA_STATUS_EVENT,
        [DataStatusFrame {
            operation_id,
            status,
            info,
        }],
    )
}

/// Data for a client session, or from one for the operator's backend: what `OnDataEvent`
/// carries to a client (the SDK's session `APP_DATA` event) and what the server posts to its
/// `OnDataEvent` hook, as WCS names the fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppData {
    /// The server that passed the data (its instance id).
    pub node_id: String,
    pub app_key: AppKey,
    pub session_id: SessionId,
    pub operation_id: String,
    pub payload: Value,
}

/// Builds `OnDataEvent`: `data: [ {nodeId, appKey, sessionId, operationId, payload} ]`. The
/// SDK gives the object to the session's `APP_DATA` handler.
pub fn app_data(data: &AppData) -> String {
    frame(ON_DATA_EVENT, [data])
}

/// The `notifyStreamEvent` frames of one event for many players. The type and payload are
/// serialized once; each player's frame is that text with its own `mediaSessionId` put in,
/// so a payload going to N players costs one serialization and N copies, not N of each. The
/// frames are the same text [`stream_event`] builds.
pub struct StreamEventFrames {
    /// From after the mediaSessionId's value to the end.
    tail: String,
}

/// A `notifyStreamEvent` frame up to its mediaSessionId's value.
const EVENT_FRAME_HEAD: &str = r#"{"message":"notifyStreamEvent","data":[{"mediaSessionId":"#;

impl StreamEventFrames {
    pub fn new(typ: &str, payload: &Value) -> Self {
        #[derive(Serialize)]
        struct Rest<'a> {
            #[serde(rename = "type")]
            typ: &'a str,
            payload: &'a Value,
        }
        let empty = Value::Object(Map::new());
        let payload = if payload.is_null() { &empty } else { payload };
        // `{"type":..,"payload":..}` without its opening brace closes the object.
        let rest = serde_json::to_string(&Rest { typ, payload }).unwrap_or_default();
        let tail = format!(",{}]}}", rest.strip_prefix('{').unwrap_or(&rest));
        StreamEventFrames { tail }
    }

    /// The frame for player `id`.
    pub fn frame(&self, id: &MediaSessionId) -> String {
        let id = serde_json::to_string(id).unwrap_or_default();
        let mut text = String::with_capacity(EVENT_FRAME_HEAD.len() + id.len() + self.tail.len());
        text.push_str(EVENT_FRAME_HEAD);
        text.push_str(&id);
        text.push_str(&self.tail);
        text
    }
}

/// Builds the server's `ping`: `{"message":"ping","data":[]}`. The SDK answers with `pong`.
pub fn ping() -> String {
    frame(PING, [(); 0])
}

/// Builds the server's `pong`, the answer to a client `ping`: `{"message":"pong","data":[]}`.
pub fn pong() -> String {
    frame(PONG, [(); 0])
}

/// Builds `fail`: `data: [ {apiMethod, info, id?} ]`.
///
/// The SDK passes it to the session's WARN callback. It never changes a stream's status, so
/// a stream that fails also needs a `notifyStreamStatusEvent` FAILED. One exception: with
/// `apiMethod` `"StreamStatusEvent"`, the SDK gives the object to the stream named by `id`
/// as if it were a status event. That object has no `status`, so the SDK sets the stream's
/// status to `undefined`. Do not use that name.
pub fn fail(api_method: &str, info: &str, id: Option<&MediaSessionId>) -> String {
    frame(
        FAIL,
        [FailFrame {
            api_method,
            info,
            id,
        }],
    )
}

// ---------------------------------------------------------------------------------------------
// Statuses and reasons
// ---------------------------------------------------------------------------------------------

/// The SDK's `STREAM_STATUS`. Each value serializes as the SDK's string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamStatus {
    /// `NEW`: created locally, not yet published or played.
    New,
    /// `PENDING`: waiting for the server.
    Pending,
    /// `PUBLISHING`: the server receives the stream.
    Publishing,
    /// `PLAYING`: the server sends the stream.
    Playing,
    /// `PAUSED`.
    Paused,
    /// `UNPUBLISHED`: a publisher's final status.
    Unpublished,
    /// `STOPPED`: a player's final status.
    Stopped,
    /// `FAILED`: the final status of a failure, with `info`.
    Failed,
    /// `PLAYBACK_PROBLEM`.
    PlaybackProblem,
    /// `RESIZE`: deprecated by the SDK in favour of a `resize` stream event.
    Resize,
    /// `SNAPSHOT_COMPLETE`: deprecated by the SDK in favour of a stream event.
    SnapshotComplete,
    /// `NOT_ENOUGH_BANDWIDTH`: deprecated by the SDK in favour of a stream event. Its `info` is
    /// `"remoteBitrate/networkBandwidth"`.
    NotEnoughBandwidth,
}

impl StreamStatus {
    /// Every status, in the order of the SDK's constants.js.
    pub const ALL: [Self; 12] = [
        Self::New,
        Self::Pending,
        Self::Publishing,
        Self::Playing,
        Self::Paused,
        Self::Unpublished,
        Self::Stopped,
        Self::Failed,
        Self::PlaybackProblem,
        Self::Resize,
        Self::SnapshotComplete,
        Self::NotEnoughBandwidth,
    ];

    /// The SDK's string, e.g. `"PUBLISHING"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Pending => "PENDING",
            Self::Publishing => "PUBLISHING",
            Self::Playing => "PLAYING",
            Self::Paused => "PAUSED",
            Self::Unpublished => "UNPUBLISHED",
            Self::Stopped => "STOPPED",
            Self::Failed => "FAILED",
            Self::PlaybackProblem => "PLAYBACK_PROBLEM",
            Self::Resize => "RESIZE",
            Self::SnapshotComplete => "SNAPSHOT_COMPLETE",
            Self::NotEnoughBandwidth => "NOT_ENOUGH_BANDWIDTH",
        }
    }

    /// True for UNPUBLISHED, STOPPED and FAILED. After one of these the SDK closes its peer
    /// connection and forgets the stream.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Unpublished | Self::Stopped | Self::Failed)
    }
}

impl fmt::Display for StreamStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SDK's `SESSION_STATUS`, which a client tracks. Each value serializes as the SDK's string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionStatus {
    /// `CONNECTED`: the WebSocket is open.
    Connected,
    /// `ESTABLISHED`: `getUserData` arrived.
    Established,
    /// `DISCONNECTED`: the WebSocket closed.
    Disconnected,
    /// `WARN`: a `fail` frame arrived.
    Warn,
    /// `FAILED`: the WebSocket failed.
    Failed,
    /// `DEBUG`.
    Debug,
    /// `APP_DATA`.
    AppData,
    /// `SEND_DATA_STATUS`.
    SendDataStatus,
    /// `PENDING`: created, not yet connected.
    Pending,
    /// `REGISTERED` (SIP).
    Registered,
    /// `UNREGISTERED` (SIP).
    Unregistered,
    /// `INCOMING_CALL` (SIP).
    IncomingCall,
}

impl SessionStatus {
    /// Every status, in the order of the SDK's constants.js.
    pub const ALL: [Self; 12] = [
        Self::Connected,
        Self::Established,
        Self::Disconnected,
        Self::Warn,
        Self::Failed,
        Self::Debug,
        Self::AppData,
        Self::SendDataStatus,
        Self::Pending,
        Self::Registered,
        Self::Unregistered,
        Self::IncomingCall,
    ];

    /// The SDK's string, e.g. `"ESTABLISHED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "CONNECTED",
            Self::Established => "ESTABLISHED",
            Self::Disconnected => "DISCONNECTED",
            Self::Warn => "WARN",
            Self::Failed => "FAILED",
            Self::Debug => "DEBUG",
            Self::AppData => "APP_DATA",
            Self::SendDataStatus => "SEND_DATA_STATUS",
            Self::Pending => "PENDING",
            Self::Registered => "REGISTERED",
            Self::Unregistered => "UNREGISTERED",
            Self::IncomingCall => "INCOMING_CALL",
        }
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream's `info`: why it failed or stopped. The strings come from the SDK's
/// `STREAM_STATUS_INFO` in constants.js, and the variant names follow its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Info {
    /// `Stream not found`.
    StreamNotFound,
    /// `Stream name is already in use`.
    StreamNameAlreadyInUse,
    /// `MediaSessionId is null`.
    MediaSessionIdNull,
    /// `MediaSessionId is already in use`.
    MediaSessionIdAlreadyInUse,
    /// `Session not ready`.
    SessionNotReady,
    /// `No common codecs`.
    NoCommonCodecs,
    /// `Failed by ICE error`.
    FailedByIceError,
    /// `Failed by ICE timeout`.
    FailedByIceTimeout,
    /// `Failed by ICE keep alive` (the SDK's key is `FAILED_BY_KEEP_ALIVE`).
    FailedByKeepAlive,
    /// `Failed by DTLS error`.
    FailedByDtlsError,
    /// `Failed by DTLS fingerprint error`.
    FailedByDtlsFingerprintError,
    /// `Failed by RTP activity`.
    FailedByRtpActivity,
    /// `Failed by error`.
    FailedByError,
    /// `Stopped by session disconnect`.
    StoppedBySessionDisconnect,
    /// `Stopped by rest /terminate`.
    StoppedByRestTerminate,
    /// `Stopped by publisher stop`.
    StoppedByPublisherStop,
    /// `Stopped by user`.
    StoppedByUser,
    /// `Failed to connect to origin stream`.
    FailedToConnectToOriginStream,
    /// `Restricted access`.
    RestrictedAccess,
}

impl Info {
    /// Every reason listed in PROTOCOL.md.
    pub const ALL: [Self; 19] = [
        Self::StreamNotFound,
        Self::StreamNameAlreadyInUse,
        Self::MediaSessionIdNull,
        Self::MediaSessionIdAlreadyInUse,
        Self::SessionNotReady,
        Self::NoCommonCodecs,
        Self::FailedByIceError,
        Self::FailedByIceTimeout,
        Self::FailedByKeepAlive,
        Self::FailedByDtlsError,
        Self::FailedByDtlsFingerprintError,
        Self::FailedByRtpActivity,
        Self::FailedByError,
        Self::StoppedBySessionDisconnect,
        Self::StoppedByRestTerminate,
        Self::StoppedByPublisherStop,
        Self::StoppedByUser,
        Self::FailedToConnectToOriginStream,
        Self::RestrictedAccess,
    ];

    /// The exact string the SDK knows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StreamNotFound => "Stream not found",
            Self::StreamNameAlreadyInUse => "Stream name is already in use",
            Self::MediaSessionIdNull => "MediaSessionId is null",
            Self::MediaSessionIdAlreadyInUse => "MediaSessionId is already in use",
            Self::SessionNotReady => "Session not ready",
            Self::NoCommonCodecs => "No common codecs",
            Self::FailedByIceError => "Failed by ICE error",
            Self::FailedByIceTimeout => "Failed by ICE timeout",
            Self::FailedByKeepAlive => "Failed by ICE keep alive",
            Self::FailedByDtlsError => "Failed by DTLS error",
            Self::FailedByDtlsFingerprintError => "Failed by DTLS fingerprint error",
            Self::FailedByRtpActivity => "Failed by RTP activity",
            Self::FailedByError => "Failed by error",
            Self::StoppedBySessionDisconnect => "Stopped by session disconnect",
            Self::StoppedByRestTerminate => "Stopped by rest /terminate",
            Self::StoppedByPublisherStop => "Stopped by publisher stop",
            Self::StoppedByUser => "Stopped by user",
            Self::FailedToConnectToOriginStream => "Failed to connect to origin stream",
            Self::RestrictedAccess => "Restricted access",
        }
    }

    /// The reason whose string is exactly `text`, if there is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|info| info.as_str() == text)
    }
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Info {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Client side: relaycast's own protocol client, talking to relaycast or to a real WCS
// ---------------------------------------------------------------------------------------------

/// A frame from a server, parsed by [`parse_server_frame`].
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    /// `getUserData`: the whole object, raw. Real WCS sends many more fields than
    /// [`UserData`] has.
    GetUserData(Value),
    /// `setRemoteSDP`: the answer for a stream.
    SetRemoteSdp {
        /// `data[0]`.
        media_session_id: MediaSessionId,
        /// `data[1]`: the answer SDP.
        sdp: String,
    },
    /// `notifyStreamStatusEvent`.
    StreamStatus(StreamStatusEvent),
    /// `notifyStreamEvent`: the object `{mediaSessionId, type, payload}`, raw.
    StreamEvent(Value),
    /// `ping`: answer with [`client_pong`].
    Ping,
    /// `pong`.
    Pong,
    /// `fail`. All fields are `None` when `data[0]` is not an object.
    Fail {
        /// `apiMethod`.
        api_method: Option<String>,
        /// `info`.
        info: Option<String>,
        /// `id`.
        id: Option<MediaSessionId>,
    },
    /// Any other message name, e.g. `notifyVideoFormat` or `webRTCMetricsDescriptionUpdate`.
    Other {
        /// The frame's `message`, verbatim.
        message: String,
    },
}

/// Parses one text frame from a server. The result is never a panic, whatever the input.
pub fn parse_server_frame(text: &str) -> Result<ServerMessage, FrameError> {
    let (message, data) = split_frame(text)?;
    let parsed = match message.as_str() {
        GET_USER_DATA => {
            ServerMessage::GetUserData(Value::Object(first_object(GET_USER_DATA, data)?))
        }
        SET_REMOTE_SDP => remote_sdp(data)?,
        NOTIFY_STREAM_STATUS_EVENT => {
            let object = first_object(NOTIFY_STREAM_STATUS_EVENT, data)?;
            let event =
                serde_json::from_value(Value::Object(object)).map_err(|e| FrameError::Invalid {
                    method: NOTIFY_STREAM_STATUS_EVENT,
                    detail: e.to_string(),
                })?;
            ServerMessage::StreamStatus(event)
        }
        NOTIFY_STREAM_EVENT => {
            ServerMessage::StreamEvent(Value::Object(first_object(NOTIFY_STREAM_EVENT, data)?))
        }
        PING => ServerMessage::Ping,
        PONG => ServerMessage::Pong,
        FAIL => fail_message(data)?,
        _ => ServerMessage::Other { message },
    };
    Ok(parsed)
}

/// Builds `connection` as the SDK sends it when the socket opens: `appKey`, `mediaProviders`,
/// `keepAlive`, `authToken` (when set), `clientVersion` and `custom` (when not null).
/// An empty `app_key`, `media_providers` or `client_version` is replaced by the SDK's default.
pub fn connection(req: &ConnectionRequest) -> String {
    let media_providers = if req.media_providers.is_empty() {
        vec![MEDIA_PROVIDER]
    } else {
        req.media_providers.iter().map(String::as_str).collect()
    };
    let app_key = match req.app_key.as_str() {
        "" => DEFAULT_APP_KEY,
        key => key,
    };
    frame(
        CONNECTION,
        [ConnectionFrame {
            app_key,
            media_providers,
            keep_alive: req.keep_alive,
            auth_token: req.auth_token.as_deref(),
            client_version: req.client_version.as_deref().unwrap_or(CLIENT_VERSION),
            custom: non_null(&req.custom),
        }],
    )
}

/// Builds `publishStream` with the SDK's field set: `published: true`, `status: "PENDING"`,
/// `mediaProvider: "WebRTC"`, `hasVideo`/`hasAudio` (true when unset), `record`, `sdp`,
/// `custom`/`constraints` (when not null), and the bitrates (0 when unset, as the SDK sends).
pub fn publish_stream(req: &StreamRequest) -> String {
    frame(PUBLISH_STREAM, [stream_frame(req, true)])
}

/// Builds `playStream` with the SDK's field set: `published: false`, `status: "PENDING"`,
/// `record: false`, `width`/`height`/`quality` 0, and the rest as in [`publish_stream`].
pub fn play_stream(req: &StreamRequest) -> String {
    frame(PLAY_STREAM, [stream_frame(req, false)])
}

/// Builds `unPublishStream` as the SDK's `stop()` sends it for a publisher.
pub fn unpublish_stream(r: &StreamRef) -> String {
    frame(UN_PUBLISH_STREAM, [ref_frame(r, true)])
}

/// Builds `stopStream` as the SDK's `stop()` sends it for a player.
pub fn stop_stream(r: &StreamRef) -> String {
    frame(STOP_STREAM, [ref_frame(r, false)])
}

/// Builds `sendStreamEvent` as the SDK does: `{mediaSessionId, type, payload}`, without
/// `payload` when there is none (the SDK leaves it undefined for the mute events).
pub fn send_stream_event(id: &MediaSessionId, typ: &str, payload: Option<&Value>) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct SendFrame<'a> {
        media_session_id: &'a MediaSessionId,
        #[serde(rename = "type")]
        typ: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a Value>,
    }
    frame(
        SEND_STREAM_EVENT,
        [SendFrame {
            media_session_id: id,
            typ,
            payload,
        }],
    )
}

/// Builds a client's `ping` as the SDK does: `{"message":"ping","data":[null]}`.
pub fn client_ping() -> String {
    frame(PING, [()])
}

/// Builds a client's `pong` as the SDK does: `{"message":"pong","data":[null]}`.
pub fn client_pong() -> String {
    frame(PONG, [()])
}

// ---------------------------------------------------------------------------------------------
// REST objects
// ---------------------------------------------------------------------------------------------

/// A stream as `/rest-api/stream/find_all` and `/stream/find` list it, with WCS's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    /// `appKey` of the session that owns the stream.
    pub app_key: AppKey,
    /// `sessionId` of the session that owns the stream.
    pub session_id: SessionId,
    /// `mediaSessionId`.
    pub media_session_id: MediaSessionId,
    /// `name`.
    pub name: StreamName,
    /// `published`: true for a publisher, false for a player.
    pub published: bool,
    /// `hasVideo`.
    pub has_video: bool,
    /// `hasAudio`.
    pub has_audio: bool,
    /// `status`.
    pub status: StreamStatus,
    /// `info`, omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    /// `audioCodec`. Null before negotiation.
    pub audio_codec: Option<String>,
    /// `videoCodec`. Null before negotiation.
    pub video_codec: Option<String>,
    /// `width` in pixels, or 0 when not known.
    pub width: u32,
    /// `height` in pixels, or 0 when not known.
    pub height: u32,
    /// `bitrate` in kbps, or 0 when not known.
    pub bitrate: u64,
    /// `createDate`, in milliseconds since the Unix epoch.
    pub create_date: u64,
    /// `mediaProvider`. Always [`MEDIA_PROVIDER`].
    pub media_provider: &'static str,
}

/// A WebSocket session as `/rest-api/connection/find_all` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    /// `sessionId`.
    pub session_id: SessionId,
    /// `appKey`.
    pub app_key: AppKey,
    /// `clientVersion`. Null when the client sent none.
    pub client_version: Option<String>,
    /// `remoteAddress`: the client's IP address.
    pub remote_address: String,
    /// `mediaProviders`.
    pub media_providers: Vec<String>,
    /// `createDate`, in milliseconds since the Unix epoch.
    pub create_date: u64,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a frame could not be parsed. Its `Display` is a short sentence that can go in a `fail`
/// frame's `info`.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The text is not JSON.
    #[error("malformed frame: not JSON ({0})")]
    NotJson(#[source] serde_json::Error),
    /// The JSON is not an object, or it has no `message` (or a null one).
    #[error("malformed frame: expected JSON object with \"message\"")]
    NotObject,
    /// `message` is not a string.
    #[error("malformed frame: \"message\" must be a string")]
    MessageNotString,
    /// `data` is missing, is not an array, or is empty, for a message that needs it.
    #[error("{method}: \"data\" must be a non-empty array")]
    NoData {
        /// The frame's `message`.
        method: &'static str,
    },
    /// `data[0]` is not an object (e.g. `[null]`) for a message that needs one.
    #[error("{method}: data[0] must be an object")]
    NotAnObject {
        /// The frame's `message`.
        method: &'static str,
    },
    /// A field the message uses has the wrong JSON type, e.g. `"sdp": 5`.
    #[error("{method}: field \"{field}\" must be {expected}")]
    Field {
        /// The frame's `message`.
        method: &'static str,
        /// The field's JSON name.
        field: &'static str,
        /// What it must be, e.g. `a string`.
        expected: &'static str,
    },
    /// `data[0]` does not fit the message for another reason, e.g. an unknown `status`.
    #[error("{method}: {detail}")]
    Invalid {
        /// The frame's `message`.
        method: &'static str,
        /// What is wrong, from serde.
        detail: String,
    },
}

impl FrameError {
    /// The frame's `message` name, when it could be read. Use it for `apiMethod` in `fail`.
    pub fn api_method(&self) -> Option<&str> {
        match self {
            Self::NotJson(_) | Self::NotObject | Self::MessageNotString => None,
            Self::NoData { method }
            | Self::NotAnObject { method }
            | Self::Field { method, .. }
            | Self::Invalid { method, .. } => Some(method),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const CONNECTION: &str = "connection";
const PUBLISH_STREAM: &str = "publishStream";
const PLAY_STREAM: &str = "playStream";
const UN_PUBLISH_STREAM: &str = "unPublishStream";
const STOP_STREAM: &str = "stopStream";
const PING: &str = "ping";
const PONG: &str = "pong";
const SEND_STREAM_EVENT: &str = "sendStreamEvent";
const AVAILABLE_STREAM: &str = "availableStream";
const SEND_DATA: &str = "sendData";
const DATA_STATUS_EVENT: &str = "DataStatusEvent";
const ON_DATA_EVENT: &str = "OnDataEvent";
const GET_USER_DATA: &str = "getUserData";
const SET_REMOTE_SDP: &str = "setRemoteSDP";
const NOTIFY_STREAM_STATUS_EVENT: &str = "notifyStreamStatusEvent";
const NOTIFY_STREAM_EVENT: &str = "notifyStreamEvent";
const FAIL: &str = "fail";

const A_STRING: &str = "a string";
const A_BOOLEAN: &str = "a boolean";

/// Serializes `{"message": message, "data": data}`. `data` must serialize as a JSON array.
fn frame<T: Serialize>(message: &str, data: T) -> String {
    #[derive(Serialize)]
    struct Frame<'a, T> {
        message: &'a str,
        data: T,
    }
    // Cannot fail: every type here has string keys and no fallible `Serialize` impl, and a
    // `Value` cannot hold a non-finite number. Returning "" keeps the no-panic promise anyway.
    serde_json::to_string(&Frame { message, data }).unwrap_or_default()
}

/// The `notifyStreamStatusEvent` object: the event, `record: false`, and `info` when needed.
#[derive(Serialize)]
struct StatusFrame<'a> {
    #[serde(flatten)]
    event: &'a StreamStatusEvent,
    record: bool,
    #[serde(rename = "info", skip_serializing_if = "Option::is_none")]
    missing_info: Option<&'static str>,
}

/// The `notifyStreamEvent` object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventFrame<'a> {
    media_session_id: &'a MediaSessionId,
    #[serde(rename = "type")]
    typ: &'a str,
    payload: Value,
}

/// The `fail` object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailFrame<'a> {
    api_method: &'a str,
    info: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a MediaSessionId>,
}

/// The `connection` object, in the SDK's field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionFrame<'a> {
    app_key: &'a str,
    media_providers: Vec<&'a str>,
    keep_alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_token: Option<&'a str>,
    client_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom: Option<&'a Value>,
}

/// The `publishStream`/`playStream` object, in the SDK's field order. The fields that are
/// `None` here are the ones the SDK leaves undefined, which `JSON.stringify` drops.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamFrame<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_session_id: Option<&'a MediaSessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a StreamName>,
    published: bool,
    has_video: bool,
    has_audio: bool,
    status: StreamStatus,
    record: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    media_provider: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom: Option<&'a Value>,
    bitrate: u64,
    min_bitrate: u64,
    max_bitrate: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    constraints: Option<&'a Value>,
}

/// The `unPublishStream`/`stopStream` object, in the SDK's field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefFrame<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_session_id: Option<&'a MediaSessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a StreamName>,
    published: bool,
    has_video: bool,
    has_audio: bool,
    status: StreamStatus,
    record: bool,
}

/// The object of `publishStream` (`publish`) or `playStream` (not `publish`).
fn stream_frame(req: &StreamRequest, publish: bool) -> StreamFrame<'_> {
    let play_only = (!publish).then_some(0);
    StreamFrame {
        media_session_id: req.media_session_id.as_ref(),
        name: req.name.as_ref(),
        published: publish,
        has_video: req.has_video.unwrap_or(true),
        has_audio: req.has_audio.unwrap_or(true),
        status: StreamStatus::Pending,
        record: publish && req.record,
        width: play_only,
        height: play_only,
        media_provider: MEDIA_PROVIDER,
        sdp: req.sdp.as_deref(),
        custom: non_null(&req.custom),
        bitrate: 0,
        min_bitrate: req.min_bitrate.unwrap_or(0),
        max_bitrate: req.max_bitrate.unwrap_or(0),
        quality: play_only,
        constraints: non_null(&req.constraints),
    }
}

/// The object of `unPublishStream` (`publisher`) or `stopStream` (not `publisher`). Its
/// `status` is the stream's current one as the SDK sends it: PUBLISHING or PLAYING.
fn ref_frame(r: &StreamRef, publisher: bool) -> RefFrame<'_> {
    RefFrame {
        media_session_id: r.media_session_id.as_ref(),
        name: r.name.as_ref(),
        published: publisher,
        has_video: true,
        has_audio: true,
        status: if publisher {
            StreamStatus::Publishing
        } else {
            StreamStatus::Playing
        },
        record: false,
    }
}

/// `Some(value)` unless it is JSON null (which the SDK's `undefined` would have omitted).
fn non_null(value: &Value) -> Option<&Value> {
    (!value.is_null()).then_some(value)
}

/// Reads the envelope: the `message` name and the `data` value (`Null` when absent).
fn split_frame(text: &str) -> Result<(String, Value), FrameError> {
    let value: Value = serde_json::from_str(text).map_err(FrameError::NotJson)?;
    let Value::Object(mut top) = value else {
        return Err(FrameError::NotObject);
    };
    let message = match top.remove("message") {
        Some(Value::String(message)) => message,
        None | Some(Value::Null) => return Err(FrameError::NotObject),
        Some(_) => return Err(FrameError::MessageNotString),
    };
    Ok((message, top.remove("data").unwrap_or(Value::Null)))
}

/// Takes the object in `data[0]`, which `method` needs.
fn first_object(method: &'static str, data: Value) -> Result<Map<String, Value>, FrameError> {
    let Value::Array(items) = data else {
        return Err(FrameError::NoData { method });
    };
    match items.into_iter().next() {
        None => Err(FrameError::NoData { method }),
        Some(Value::Object(object)) => Ok(object),
        Some(_) => Err(FrameError::NotAnObject { method }),
    }
}

/// Reads the `connection` object.
fn connection_request(object: Map<String, Value>) -> Result<ConnectionRequest, FrameError> {
    let mut fields = Fields::new(CONNECTION, object);
    let app_key = fields
        .string("appKey")?
        .filter(|key| !key.is_empty())
        .unwrap_or_else(|| DEFAULT_APP_KEY.to_owned());
    Ok(ConnectionRequest {
        app_key: AppKey(app_key),
        media_providers: fields.strings("mediaProviders")?,
        client_version: fields.string("clientVersion")?,
        auth_token: fields.string("authToken")?,
        keep_alive: fields.boolean("keepAlive")?.unwrap_or(false),
        custom: fields.raw("custom"),
    })
}

/// Reads the `publishStream`/`playStream` object.
fn stream_request(
    method: &'static str,
    object: Map<String, Value>,
) -> Result<StreamRequest, FrameError> {
    let mut fields = Fields::new(method, object);
    Ok(StreamRequest {
        media_session_id: fields.string("mediaSessionId")?.map(MediaSessionId),
        name: fields.name("name")?.map(StreamName),
        sdp: fields.string("sdp")?,
        has_audio: fields.boolean("hasAudio")?,
        has_video: fields.boolean("hasVideo")?,
        record: fields.boolean("record")?.unwrap_or(false),
        custom: fields.raw("custom"),
        constraints: fields.raw("constraints"),
        min_bitrate: fields.bitrate("minBitrate"),
        max_bitrate: fields.bitrate("maxBitrate"),
        published: fields.boolean("published")?,
    })
}

/// Reads the `unPublishStream`/`stopStream` object.
fn stream_ref(method: &'static str, object: Map<String, Value>) -> Result<StreamRef, FrameError> {
    let mut fields = Fields::new(method, object);
    Ok(StreamRef {
        media_session_id: fields.string("mediaSessionId")?.map(MediaSessionId),
        name: fields.name("name")?.map(StreamName),
    })
}

/// Reads `sendStreamEvent`'s object: `mediaSessionId` and `type` are required strings.
fn stream_event_request(object: Map<String, Value>) -> Result<StreamEventRequest, FrameError> {
    let mut fields = Fields::new(SEND_STREAM_EVENT, object);
    let media_session_id = fields
        .string("mediaSessionId")?
        .ok_or_else(|| fields.error("mediaSessionId", A_STRING))?;
    let typ = fields
        .string("type")?
        .ok_or_else(|| fields.error("type", A_STRING))?;
    Ok(StreamEventRequest {
        media_session_id: MediaSessionId(media_session_id),
        typ,
        payload: fields.take("payload").unwrap_or(Value::Null),
    })
}

/// Reads `sendData`'s object: `operationId` is a required string.
fn data_request(object: Map<String, Value>) -> Result<DataRequest, FrameError> {
    let mut fields = Fields::new(SEND_DATA, object);
    let operation_id = fields
        .string("operationId")?
        .ok_or_else(|| fields.error("operationId", A_STRING))?;
    Ok(DataRequest {
        operation_id,
        payload: fields.take("payload").unwrap_or(Value::Null),
    })
}

/// Reads `setRemoteSDP`'s `[mediaSessionId, sdp]`.
fn remote_sdp(data: Value) -> Result<ServerMessage, FrameError> {
    let method = SET_REMOTE_SDP;
    let Value::Array(items) = data else {
        return Err(FrameError::NoData { method });
    };
    let mut items = items.into_iter();
    let media_session_id = match items.next() {
        None => return Err(FrameError::NoData { method }),
        Some(Value::String(id)) => MediaSessionId(id),
        Some(_) => return Err(field_error(method, "data[0]", A_STRING)),
    };
    let Some(Value::String(sdp)) = items.next() else {
        return Err(field_error(method, "data[1]", A_STRING));
    };
    Ok(ServerMessage::SetRemoteSdp {
        media_session_id,
        sdp,
    })
}

/// Reads `fail`. It is lenient: missing or non-object data gives all-`None` fields.
fn fail_message(data: Value) -> Result<ServerMessage, FrameError> {
    let Ok(object) = first_object(FAIL, data) else {
        return Ok(ServerMessage::Fail {
            api_method: None,
            info: None,
            id: None,
        });
    };
    let mut fields = Fields::new(FAIL, object);
    Ok(ServerMessage::Fail {
        api_method: fields.string("apiMethod")?,
        info: fields.string("info")?,
        id: fields.string("id")?.map(MediaSessionId),
    })
}

/// A `data[0]` object whose fields are taken out one by one, each checked for its JSON type.
struct Fields {
    method: &'static str,
    object: Map<String, Value>,
}

impl Fields {
    fn new(method: &'static str, object: Map<String, Value>) -> Self {
        Self { method, object }
    }

    /// The field's value, or `None` when it is absent or null.
    fn take(&mut self, key: &str) -> Option<Value> {
        self.object.remove(key).filter(|value| !value.is_null())
    }

    fn error(&self, field: &'static str, expected: &'static str) -> FrameError {
        field_error(self.method, field, expected)
    }

    fn string(&mut self, key: &'static str) -> Result<Option<String>, FrameError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.error(key, A_STRING)),
        }
    }

    /// A string, or a number taken as its decimal text (JavaScript apps may pass `name: 42`).
    fn name(&mut self, key: &'static str) -> Result<Option<String>, FrameError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(_) => Err(self.error(key, A_STRING)),
        }
    }

    fn boolean(&mut self, key: &'static str) -> Result<Option<bool>, FrameError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(flag)),
            Some(_) => Err(self.error(key, A_BOOLEAN)),
        }
    }

    fn strings(&mut self, key: &'static str) -> Result<Vec<String>, FrameError> {
        const EXPECTED: &str = "an array of strings";
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(self.error(key, EXPECTED)),
                })
                .collect(),
            Some(_) => Err(self.error(key, EXPECTED)),
        }
    }

    /// A bitrate as a number or numeric string. A value that is 0, negative or unparsable is
    /// `None`, never an error.
    fn bitrate(&mut self, key: &str) -> Option<u64> {
        let kbps = match self.take(key)? {
            Value::Number(number) => number.as_u64().or_else(|| float_kbps(number.as_f64()?)),
            Value::String(text) => {
                let text = text.trim();
                text.parse::<u64>()
                    .ok()
                    .or_else(|| float_kbps(text.parse::<f64>().ok()?))
            }
            _ => None,
        };
        kbps.filter(|&kbps| kbps > 0)
    }

    /// The field's raw value, `Null` when absent.
    fn raw(&mut self, key: &str) -> Value {
        self.object.remove(key).unwrap_or(Value::Null)
    }
}

fn field_error(method: &'static str, field: &'static str, expected: &'static str) -> FrameError {
    FrameError::Field {
        method,
        field,
        expected,
    }
}

/// A finite, non-negative float truncated to whole kbps (saturating at `u64::MAX`).
fn float_kbps(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0).then_some(value as u64)
}

/// Deserializes `null` as the type's default, for fields a real WCS may send as null.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).expect("builder output is JSON")
    }

    fn client(text: &str) -> ClientMessage {
        parse_client_frame(text).expect("client frame parses")
    }

    fn server(text: &str) -> ServerMessage {
        parse_server_frame(text).expect("server frame parses")
    }

    fn client_error(text: &str) -> FrameError {
        parse_client_frame(text).expect_err("client frame is rejected")
    }

    const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                         a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                         c=IN IP4 0.0.0.0\r\na=ice-options:trickle\r\n";

    // ----- client frames as flashphoner-core.js sends them -----

    /// `send("connection", cConfig)` from `wsConnection.onopen`, with a client-info object and no
    /// authToken (JSON.stringify drops the undefined one).
    #[test]
    fn parses_sdk_connection() {
        let frame = json!({"message": "connection", "data": [{
            "appKey": "defaultApp",
            "mediaProviders": ["WebRTC", "MSE", "WSPlayer"],
            "keepAlive": false,
            "clientVersion": "2.0",
            "clientOSVersion": "5.0 (X11; Linux x86_64)",
            "clientBrowserVersion": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0",
            "msePacketizationVersion": 2,
            "custom": {"token": "secret", "n": 1},
            "clientInfo": {"brands": [{"brand": "Chromium", "version": "156"}], "mobile": false}
        }]});
        let expected = ConnectionRequest {
            app_key: AppKey::from("defaultApp"),
            media_providers: vec!["WebRTC".into(), "MSE".into(), "WSPlayer".into()],
            client_version: Some("2.0".into()),
            auth_token: None,
            keep_alive: false,
            custom: json!({"token": "secret", "n": 1}),
        };
        assert_eq!(
            client(&frame.to_string()),
            ClientMessage::Connection(expected)
        );
    }

    #[test]
    fn connection_defaults_and_sip_extras() {
        let frame = r#"{"message":"connection","data":[{"authToken":"tok","keepAlive":true,
            "sipLogin":"1000","sipPort":5060,"sipRegisterRequired":true}]}"#;
        let ClientMessage::Connection(req) = client(frame) else {
            panic!("not a connection");
        };
        assert_eq!(req.app_key.as_str(), DEFAULT_APP_KEY);
        assert!(req.media_providers.is_empty());
        assert_eq!(req.auth_token.as_deref(), Some("tok"));
        assert!(req.keep_alive);
        assert_eq!(req.custom, Value::Null);
        assert_eq!(req.client_version, None);

        let frame = r#"{"message":"connection","data":[{"appKey":"","keepAlive":null}]}"#;
        let ClientMessage::Connection(req) = client(frame) else {
            panic!("not a connection");
        };
        assert_eq!(req.app_key.as_str(), DEFAULT_APP_KEY);
        assert!(!req.keep_alive);
    }

    /// `send("publishStream", publishStreamData)` with every field the SDK sets, including
    /// `localMediaInfo`, a string `maxBitrate` from constraints, and `transport`/`cvoExtension`.
    #[test]
    fn parses_sdk_publish_stream() {
        let frame = json!({"message": "publishStream", "data": [{
            "mediaSessionId": "0b6ab170-1f9e-11ef-8f4e-6b9d6a1c2b3d",
            "name": "stream1",
            "published": true,
            "hasVideo": true,
            "hasAudio": true,
            "status": "PENDING",
            "record": false,
            "mediaProvider": "WebRTC",
            "sdp": OFFER,
            "custom": {"foo": "bar"},
            "bitrate": 0,
            "minBitrate": 300,
            "maxBitrate": "3000",
            "constraints": {"audio": true, "video": {"width": 640, "maxBitrate": "3000"}},
            "transport": "UDP",
            "cvoExtension": false,
            "localMediaInfo": {"devices": {"video": [{"id": "x", "label": "cam"}]}}
        }]});
        let expected = StreamRequest {
            media_session_id: Some(MediaSessionId::from("0b6ab170-1f9e-11ef-8f4e-6b9d6a1c2b3d")),
            name: Some(StreamName::from("stream1")),
            sdp: Some(OFFER.into()),
            has_audio: Some(true),
            has_video: Some(true),
            record: false,
            custom: json!({"foo": "bar"}),
            constraints: json!({"audio": true, "video": {"width": 640, "maxBitrate": "3000"}}),
            min_bitrate: Some(300),
            max_bitrate: Some(3000),
            published: Some(true),
        };
        assert_eq!(
            client(&frame.to_string()),
            ClientMessage::PublishStream(expected)
        );
    }

    /// `send("playStream", {...})` with the SDK's defaults: no custom, no constraints (both
    /// undefined and dropped), width/height/quality 0, bitrates 0.
    #[test]
    fn parses_sdk_play_stream() {
        let frame = json!({"message": "playStream", "data": [{
            "mediaSessionId": "id-2",
            "name": "stream1",
            "published": false,
            "hasVideo": true,
            "hasAudio": true,
            "status": "PENDING",
            "record": false,
            "width": 0,
            "height": 0,
            "mediaProvider": "WebRTC",
            "sdp": OFFER,
            "bitrate": 0,
            "minBitrate": 0,
            "maxBitrate": 0,
            "quality": 0
        }]});
        let expected = StreamRequest {
            media_session_id: Some("id-2".into()),
            name: Some("stream1".into()),
            sdp: Some(OFFER.into()),
            has_audio: Some(true),
            has_video: Some(true),
            published: Some(false),
            ..StreamRequest::default()
        };
        assert_eq!(
            client(&frame.to_string()),
            ClientMessage::PlayStream(expected)
        );
    }

    /// `stop()` sends unPublishStream/stopStream with the stream's status and flags.
    #[test]
    fn parses_sdk_stop_frames() {
        let unpublish = r#"{"message":"unPublishStream","data":[{"mediaSessionId":"a","name":"s",
            "published":true,"hasVideo":true,"hasAudio":true,"status":"PUBLISHING",
            "record":false}]}"#;
        let stop = r#"{"message":"stopStream","data":[{"mediaSessionId":"b","name":"s",
            "published":false,"hasVideo":true,"hasAudio":true,"status":"PLAYING",
            "record":false}]}"#;
        let r = |id: &str| StreamRef {
            media_session_id: Some(id.into()),
            name: Some("s".into()),
        };
        assert_eq!(client(unpublish), ClientMessage::UnPublishStream(r("a")));
        assert_eq!(client(stop), ClientMessage::StopStream(r("b")));
    }

    #[test]
    fn parses_ping_and_pong_with_any_data() {
        for data in [r#","data":[null]"#, "", r#","data":[]"#, r#","data":null"#] {
            assert_eq!(
                client(&format!(r#"{{"message":"ping"{data}}}"#)),
                ClientMessage::Ping
            );
            assert_eq!(
                client(&format!(r#"{{"message":"pong"{data}}}"#)),
                ClientMessage::Pong
            );
        }
    }

    #[test]
    fn parses_send_stream_event_as_the_sdk_sends_it() {
        // stream.muteAudio(): no payload. stream.sendData({...}): the payload, raw.
        let muted = client(
            r#"{"message":"sendStreamEvent","data":[{"mediaSessionId":"m1","type":"audioMuted"}]}"#,
        );
        assert_eq!(
            muted,
            ClientMessage::SendStreamEvent(StreamEventRequest {
                media_session_id: "m1".into(),
                typ: "audioMuted".into(),
                payload: Value::Null,
            })
        );
        let data = client(
            r#"{"message":"sendStreamEvent","data":[{"mediaSessionId":"m1","type":"data","payload":{"number":33,"list":[1,"a"]}}]}"#,
        );
        let ClientMessage::SendStreamEvent(req) = data else {
            panic!("not a stream event: {data:?}");
        };
        assert_eq!(req.payload, json!({"number": 33, "list": [1, "a"]}));
        // The builder the protocol client uses gives back the same request.
        let built = send_stream_event(&"m1".into(), "data", Some(&req.payload));
        assert_eq!(client(&built), ClientMessage::SendStreamEvent(req));
        let built = send_stream_event(&"m1".into(), "videoMuted", None);
        assert!(!built.contains("payload"), "{built}");
    }

    #[test]
    fn rejects_send_stream_event_without_id_or_type() {
        let cases = [
            (
                r#"{"message":"sendStreamEvent","data":[{"type":"audioMuted"}]}"#,
                "mediaSessionId",
            ),
            (
                r#"{"message":"sendStreamEvent","data":[{"mediaSessionId":"m1"}]}"#,
                "type",
            ),
            (
                r#"{"message":"sendStreamEvent","data":[{"mediaSessionId":"m1","type":5}]}"#,
                "type",
            ),
            (
                r#"{"message":"sendStreamEvent","data":[{"mediaSessionId":7,"type":"data"}]}"#,
                "mediaSessionId",
            ),
        ];
        for (text, field) in cases {
            let err = parse_client_frame(text).unwrap_err();
            assert_eq!(err.api_method(), Some("sendStreamEvent"), "{text}");
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let err = parse_client_frame(r#"{"message":"sendStreamEvent","data":[null]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sendStreamEvent: data[0] must be an object"
        );
    }

    #[test]
    fn available_stream_as_the_sdk_asks_and_reads_it() {
        let asked = client(
            r#"{"message":"availableStream","data":[{"mediaSessionId":"m1","name":"cam"}]}"#,
        );
        assert_eq!(
            asked,
            ClientMessage::AvailableStream(StreamRef {
                media_session_id: Some("m1".into()),
                name: Some("cam".into()),
            })
        );
        // The SDK resolves available() on `status == "true"` (a string), else rejects and
        // keeps `info` as getInfo().
        let yes: Value =
            serde_json::from_str(&available_stream(Some(&"m1".into()), true, None)).unwrap();
        assert_eq!(
            yes,
            json!({"message": "availableStream", "data": [{"id": "m1", "status": "true"}]})
        );
        let no: Value = serde_json::from_str(&available_stream(
            Some(&"m1".into()),
            false,
            Some("Stream not found"),
        ))
        .unwrap();
        assert_eq!(
            no["data"][0],
            json!({"id": "m1", "status": "false", "info": "Stream not found"})
        );
    }

    #[test]
    fn send_data_as_the_sdk_sends_it_and_its_answers() {
        let asked = client(
            r#"{"message":"sendData","data":[{"operationId":"op-1","payload":{"chat":["hi",1]}}]}"#,
        );
        assert_eq!(
            asked,
            ClientMessage::SendData(DataRequest {
                operation_id: "op-1".into(),
                payload: json!({"chat": ["hi", 1]}),
            })
        );
        assert_eq!(asked.name(), "sendData");
        // No payload is a null payload; no operationId is an error naming it.
        let bare = client(r#"{"message":"sendData","data":[{"operationId":"op-2"}]}"#);
        assert_eq!(
            bare,
            ClientMessage::SendData(DataRequest {
                operation_id: "op-2".into(),
                payload: Value::Null,
            })
        );
        let err = parse_client_frame(r#"{"message":"sendData","data":[{"payload":1}]}"#)
            .expect_err("operationId is required");
        assert_eq!(
            err.to_string(),
            "sendData: field \"operationId\" must be a string"
        );

        // The SDK looks the operation up by operationId and calls its `status` handler.
        let accepted: Value = serde_json::from_str(&data_status("op-1", true, None)).unwrap();
        assert_eq!(
            accepted,
            json!({"message": "DataStatusEvent",
                   "data": [{"operationId": "op-1", "status": "ACCEPTED"}]})
        );
        let failed: Value = serde_json::from_str(&data_status(
            "op-1",
            false,
            Some("Refused by the backend (403)"),
        ))
        .unwrap();
        assert_eq!(
            failed["data"][0],
            json!({"operationId": "op-1", "status": "FAILED", "info": "Refused by the backend (403)"})
        );

        let data = AppData {
            node_id: "node".into(),
            app_key: "defaultApp".into(),
            session_id: "s1".into(),
            operation_id: "op-3".into(),
            payload: json!({"message": "hello"}),
        };
        let event: Value = serde_json::from_str(&app_data(&data)).unwrap();
        assert_eq!(
            event,
            json!({"message": "OnDataEvent", "data": [{"nodeId": "node", "appKey": "defaultApp",
                   "sessionId": "s1", "operationId": "op-3", "payload": {"message": "hello"}}]})
        );
    }

    #[test]
    fn stream_event_frames_are_the_single_frames_text() {
        let payloads = [
            Value::Null,
            json!({}),
            json!({"text": "quote \" backslash \\ ü", "list": [1, 2.5, null, true]}),
        ];
        let ids = ["p1", "5d6c-\"odd\"-id", ""];
        for payload in &payloads {
            let frames = StreamEventFrames::new("data", payload);
            for id in ids {
                let id = MediaSessionId(id.to_owned());
                let one = stream_event(&id, "data", payload.clone());
                assert_eq!(frames.frame(&id), one);
                assert!(serde_json::from_str::<Value>(&one).is_ok(), "{one}");
            }
        }
    }

    #[test]
    fn publisher_event_types_are_the_sdks() {
        for e in PublisherEvent::ALL {
            assert_eq!(PublisherEvent::parse(e.as_str()), Some(e));
        }
        for name in [
            "resize",
            "notEnoughBandwidth",
            "snapshotCompleted",
            "AUDIOMUTED",
            "",
        ] {
            assert_eq!(PublisherEvent::parse(name), None, "{name}");
        }
    }

    #[test]
    fn status_carries_track_state_only_when_set() {
        let mut e = event();
        assert!(!stream_status(&e).contains("State"));
        e.audio_state = Some(TrackState { muted: true });
        e.video_state = Some(TrackState { muted: false });
        let v: Value = serde_json::from_str(&stream_status(&e)).unwrap();
        assert_eq!(v["data"][0]["audioState"], json!({"muted": true}));
        assert_eq!(v["data"][0]["videoState"], json!({"muted": false}));
    }

    #[test]
    fn keeps_unsupported_message_names() {
        let frames = [
            r#"{"message":"sessionDebug","data":[{"command":"start"}]}"#,
            r#"{"message":"snapshot","data":[{"name":"s","mediaSessionId":"a"}]}"#,
            r#"{"message":"call","data":[{"callId":"c","sdp":5}]}"#,
            r#"{"message":"hangup","data":"nonsense"}"#,
            r#"{"message":"submitBugReport"}"#,
        ];
        let names = [
            "sessionDebug",
            "snapshot",
            "call",
            "hangup",
            "submitBugReport",
        ];
        for (frame, name) in frames.into_iter().zip(names) {
            let parsed = client(frame);
            assert_eq!(
                parsed,
                ClientMessage::Unsupported {
                    message: name.into()
                }
            );
            assert_eq!(parsed.name(), name);
        }
    }

    #[test]
    fn reads_bitrates_leniently() {
        let cases: [(Value, Option<u64>); 14] = [
            (json!(2500), Some(2500)),
            (json!("2500"), Some(2500)),
            (json!(" 700 "), Some(700)),
            (json!(1500.7), Some(1500)),
            (json!("1500.7"), Some(1500)),
            (json!(0), None),
            (json!("0"), None),
            (json!(null), None),
            (json!(-5), None),
            (json!("-5"), None),
            (json!("fast"), None),
            (json!("NaN"), None),
            (json!(true), None),
            (json!({"ideal": 5}), None),
        ];
        for (bitrate, expected) in cases {
            let frame = json!({"message": "publishStream",
                "data": [{"minBitrate": bitrate, "maxBitrate": bitrate}]});
            let ClientMessage::PublishStream(req) = client(&frame.to_string()) else {
                panic!("not a publish");
            };
            assert_eq!(req.min_bitrate, expected, "{bitrate}");
            assert_eq!(req.max_bitrate, expected, "{bitrate}");
        }
    }

    #[test]
    fn accepts_numeric_name_and_null_fields() {
        let frame = r#"{"message":"playStream","data":[{"name":42,"sdp":null,"hasVideo":null,
            "record":null,"custom":null}]}"#;
        let ClientMessage::PlayStream(req) = client(frame) else {
            panic!("not a play");
        };
        assert_eq!(req.name, Some(StreamName::from("42")));
        assert_eq!((req.sdp, req.has_video, req.record), (None, None, false));
    }

    #[test]
    fn parses_a_one_mebibyte_sdp() {
        let mut sdp = String::with_capacity(1 << 20);
        while sdp.len() < 1 << 20 {
            sdp.push_str("a=candidate:1 1 udp 2122260223 192.168.1.10 51000 typ host\r\n");
        }
        let req = StreamRequest {
            media_session_id: Some("big".into()),
            name: Some("s".into()),
            sdp: Some(sdp.clone()),
            ..StreamRequest::default()
        };
        let frame = publish_stream(&req);
        assert!(frame.len() > 1 << 20);
        let ClientMessage::PublishStream(parsed) = client(&frame) else {
            panic!("not a publish");
        };
        assert_eq!(parsed.sdp.as_deref(), Some(sdp.as_str()));
    }

    // ----- errors -----

    #[test]
    fn rejects_malformed_envelopes() {
        let not_json = client_error("{\"message\": ");
        assert!(matches!(not_json, FrameError::NotJson(_)));
        assert!(
            not_json
                .to_string()
                .starts_with("malformed frame: not JSON ("),
            "{not_json}"
        );
        assert_eq!(not_json.api_method(), None);
        assert!(matches!(client_error(""), FrameError::NotJson(_)));
        assert!(matches!(
            client_error("{} trailing"),
            FrameError::NotJson(_)
        ));

        let expected = "malformed frame: expected JSON object with \"message\"";
        for text in [
            "[1,2]",
            "5",
            "\"ping\"",
            "null",
            "{}",
            r#"{"data":[]}"#,
            r#"{"message":null}"#,
        ] {
            let error = client_error(text);
            assert!(matches!(error, FrameError::NotObject), "{text}");
            assert_eq!(error.to_string(), expected);
            assert_eq!(error.api_method(), None);
        }

        for text in [
            r#"{"message":5}"#,
            r#"{"message":["ping"]}"#,
            r#"{"message":{}}"#,
        ] {
            let error = client_error(text);
            assert!(matches!(error, FrameError::MessageNotString), "{text}");
            assert_eq!(
                error.to_string(),
                "malformed frame: \"message\" must be a string"
            );
            assert_eq!(error.api_method(), None);
        }
    }

    #[test]
    fn rejects_missing_or_empty_data() {
        for method in [
            CONNECTION,
            PUBLISH_STREAM,
            PLAY_STREAM,
            UN_PUBLISH_STREAM,
            STOP_STREAM,
        ] {
            for data in [
                "",
                r#","data":[]"#,
                r#","data":{}"#,
                r#","data":"x""#,
                r#","data":null"#,
            ] {
                let error = client_error(&format!(r#"{{"message":"{method}"{data}}}"#));
                assert!(matches!(error, FrameError::NoData { .. }), "{method}{data}");
                assert_eq!(
                    error.to_string(),
                    format!("{method}: \"data\" must be a non-empty array")
                );
                assert_eq!(error.api_method(), Some(method));
            }
            for data in ["[null]", "[5]", "[\"x\"]", "[[]]"] {
                let error = client_error(&format!(r#"{{"message":"{method}","data":{data}}}"#));
                assert!(
                    matches!(error, FrameError::NotAnObject { .. }),
                    "{method}{data}"
                );
                assert_eq!(
                    error.to_string(),
                    format!("{method}: data[0] must be an object")
                );
                assert_eq!(error.api_method(), Some(method));
            }
        }
    }

    #[test]
    fn rejects_fields_of_the_wrong_type() {
        let cases = [
            (
                r#"{"message":"publishStream","data":[{"sdp":5}]}"#,
                r#"publishStream: field "sdp" must be a string"#,
            ),
            (
                r#"{"message":"playStream","data":[{"sdp":{}}]}"#,
                r#"playStream: field "sdp" must be a string"#,
            ),
            (
                r#"{"message":"publishStream","data":[{"mediaSessionId":7}]}"#,
                r#"publishStream: field "mediaSessionId" must be a string"#,
            ),
            (
                r#"{"message":"publishStream","data":[{"name":["a"]}]}"#,
                r#"publishStream: field "name" must be a string"#,
            ),
            (
                r#"{"message":"publishStream","data":[{"hasVideo":"yes"}]}"#,
                r#"publishStream: field "hasVideo" must be a boolean"#,
            ),
            (
                r#"{"message":"publishStream","data":[{"record":1}]}"#,
                r#"publishStream: field "record" must be a boolean"#,
            ),
            (
                r#"{"message":"connection","data":[{"appKey":1}]}"#,
                r#"connection: field "appKey" must be a string"#,
            ),
            (
                r#"{"message":"connection","data":[{"mediaProviders":"WebRTC"}]}"#,
                r#"connection: field "mediaProviders" must be an array of strings"#,
            ),
            (
                r#"{"message":"connection","data":[{"mediaProviders":["WebRTC",1]}]}"#,
                r#"connection: field "mediaProviders" must be an array of strings"#,
            ),
            (
                r#"{"message":"connection","data":[{"keepAlive":"true"}]}"#,
                r#"connection: field "keepAlive" must be a boolean"#,
            ),
            (
                r#"{"message":"stopStream","data":[{"mediaSessionId":false}]}"#,
                r#"stopStream: field "mediaSessionId" must be a string"#,
            ),
        ];
        for (frame, message) in cases {
            let error = client_error(frame);
            assert!(matches!(error, FrameError::Field { .. }), "{frame}");
            assert_eq!(error.to_string(), message);
        }
        let error = client_error(r#"{"message":"publishStream","data":[{"sdp":5}]}"#);
        assert_eq!(error.api_method(), Some("publishStream"));
    }

    #[test]
    fn never_panics_on_hostile_input() {
        let deep = "[".repeat(100_000);
        let deep_data = format!(
            r#"{{"message":"publishStream","data":{}}}"#,
            "[".repeat(50_000)
        );
        let inputs = [
            deep.as_str(),
            deep_data.as_str(),
            r#"{"message":"publishStream","data":[{"minBitrate":1e400}]}"#,
            r#"{"message":"publishStream","data":[{"maxBitrate":18446744073709551616}]}"#,
            r#"{"message":"publishStream","data":[{"maxBitrate":"1e300"}]}"#,
            r#"{"message":"setRemoteSDP","data":[1]}"#,
            r#"{"message":"notifyStreamStatusEvent","data":[{"status":7}]}"#,
            "\u{0}",
            "{\"message\":\"\u{1F600}\"}",
        ];
        for input in inputs {
            let _ = parse_client_frame(input);
            let _ = parse_server_frame(input);
        }
        let ClientMessage::PublishStream(req) =
            client(r#"{"message":"publishStream","data":[{"maxBitrate":"1e300"}]}"#)
        else {
            panic!("not a publish");
        };
        assert_eq!(req.max_bitrate, Some(u64::MAX));
    }

    // ----- server -> client builders -----

    fn event() -> StreamStatusEvent {
        StreamStatusEvent {
            media_session_id: "m1".into(),
            name: "s".into(),
            published: true,
            status: StreamStatus::Publishing,
            info: None,
            has_audio: true,
            has_video: true,
            audio_codec: Some("opus".into()),
            video_codec: Some("VP8".into()),
            audio_state: None,
            video_state: None,
        }
    }

    #[test]
    fn builds_get_user_data() {
        let mut d = UserData {
            auth_token: "tok".into(),
            session_id: "/127.0.0.1:51000/192.168.1.2:8080-abc".into(),
            app_key: "defaultApp".into(),
            media_providers: vec!["WebRTC".into()],
            server_version: "relaycast 0.1".into(),
            client_version: None,
            instance: None,
        };
        assert_eq!(
            value(&get_user_data(&d)),
            json!({"message": "getUserData", "data": [{
                "authToken": "tok",
                "sessionId": "/127.0.0.1:51000/192.168.1.2:8080-abc",
                "appKey": "defaultApp",
                "mediaProviders": ["WebRTC"],
                "serverVersion": "relaycast 0.1"
            }]})
        );
        d.client_version = Some("2.0".into());
        let text = get_user_data(&d);
        assert_eq!(value(&text)["data"][0]["clientVersion"], "2.0");
        let ServerMessage::GetUserData(object) = server(&text) else {
            panic!("not getUserData");
        };
        assert_eq!(object, value(&text)["data"][0]);
    }

    #[test]
    fn set_remote_sdp_is_a_two_element_array() {
        let text = set_remote_sdp(&"m1".into(), "v=0\r\n");
        assert_eq!(
            value(&text),
            json!({"message": "setRemoteSDP", "data": ["m1", "v=0\r\n"]})
        );
        assert_eq!(value(&text)["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            server(&text),
            ServerMessage::SetRemoteSdp {
                media_session_id: "m1".into(),
                sdp: "v=0\r\n".into()
            }
        );
    }

    #[test]
    fn builds_stream_status() {
        let e = event();
        let text = stream_status(&e);
        assert_eq!(
            value(&text),
            json!({"message": "notifyStreamStatusEvent", "data": [{
                "mediaSessionId": "m1", "name": "s", "published": true, "status": "PUBLISHING",
                "hasAudio": true, "hasVideo": true, "audioCodec": "opus", "videoCodec": "VP8",
                "record": false
            }]})
        );
        assert_eq!(server(&text), ServerMessage::StreamStatus(e));

        let failed = StreamStatusEvent {
            published: false,
            status: StreamStatus::Failed,
            info: Some(Info::NoCommonCodecs.to_string()),
            audio_codec: None,
            video_codec: None,
            ..event()
        };
        let text = stream_status(&failed);
        assert_eq!(
            value(&text),
            json!({"message": "notifyStreamStatusEvent", "data": [{
                "mediaSessionId": "m1", "name": "s", "published": false, "status": "FAILED",
                "info": "No common codecs", "hasAudio": true, "hasVideo": true, "record": false
            }]})
        );
        assert_eq!(server(&text), ServerMessage::StreamStatus(failed));
    }

    #[test]
    fn not_enough_bandwidth_always_has_info() {
        let e = StreamStatusEvent {
            status: StreamStatus::NotEnoughBandwidth,
            ..event()
        };
        assert_eq!(value(&stream_status(&e))["data"][0]["info"], "");
        let e = StreamStatusEvent {
            info: Some("500/300".into()),
            ..e
        };
        let text = stream_status(&e);
        assert_eq!(value(&text)["data"][0]["info"], "500/300");
        assert_eq!(text.matches("\"info\"").count(), 1);
    }

    #[test]
    fn builds_stream_event() {
        let payload = json!({"streamerVideoWidth": 640, "streamerVideoHeight": 480});
        let text = stream_event(&"m1".into(), "resize", payload.clone());
        let expected = json!({"message": "notifyStreamEvent", "data": [{
            "mediaSessionId": "m1", "type": "resize", "payload": payload
        }]});
        assert_eq!(value(&text), expected);
        assert_eq!(
            server(&text),
            ServerMessage::StreamEvent(expected["data"][0].clone())
        );
        let text = stream_event(&"m1".into(), "audioMuted", Value::Null);
        assert_eq!(value(&text)["data"][0]["payload"], json!({}));
    }

    #[test]
    fn builds_pings_pongs_and_fail() {
        assert_eq!(value(&ping()), json!({"message": "ping", "data": []}));
        assert_eq!(value(&pong()), json!({"message": "pong", "data": []}));
        assert_eq!(server(&ping()), ServerMessage::Ping);
        assert_eq!(server(&pong()), ServerMessage::Pong);

        let text = fail("sendStreamEvent", "Unsupported method", None);
        assert_eq!(
            value(&text),
            json!({"message": "fail",
                "data": [{"apiMethod": "sendStreamEvent", "info": "Unsupported method"}]})
        );
        let id = MediaSessionId::from("m1");
        let text = fail(
            "publishStream",
            Info::StreamNameAlreadyInUse.as_str(),
            Some(&id),
        );
        assert_eq!(
            value(&text),
            json!({"message": "fail", "data": [{"apiMethod": "publishStream",
                "info": "Stream name is already in use", "id": "m1"}]})
        );
        assert_eq!(
            server(&text),
            ServerMessage::Fail {
                api_method: Some("publishStream".into()),
                info: Some("Stream name is already in use".into()),
                id: Some(id)
            }
        );
    }

    // ----- client-side builders and server-frame parsing -----

    #[test]
    fn builds_connection() {
        let text = connection(&ConnectionRequest::default());
        assert_eq!(
            value(&text),
            json!({"message": "connection", "data": [{"appKey": "defaultApp",
                "mediaProviders": ["WebRTC"], "keepAlive": false, "clientVersion": "2.0"}]})
        );
        let req = ConnectionRequest {
            app_key: "liveApp".into(),
            auth_token: Some("tok".into()),
            keep_alive: true,
            custom: json!({"token": "t"}),
            ..ConnectionRequest::default()
        };
        let text = connection(&req);
        assert_eq!(
            value(&text),
            json!({"message": "connection", "data": [{"appKey": "liveApp",
                "mediaProviders": ["WebRTC"], "keepAlive": true, "authToken": "tok",
                "clientVersion": "2.0", "custom": {"token": "t"}}]})
        );
        assert_eq!(client(&text), ClientMessage::Connection(req));

        let empty = ConnectionRequest {
            app_key: AppKey::default(),
            media_providers: Vec::new(),
            client_version: None,
            ..ConnectionRequest::default()
        };
        assert_eq!(
            value(&connection(&empty)),
            value(&connection(&ConnectionRequest::default()))
        );
    }

    fn stream_request_full() -> StreamRequest {
        StreamRequest {
            media_session_id: Some("m1".into()),
            name: Some("s".into()),
            sdp: Some(OFFER.into()),
            has_audio: Some(true),
            has_video: Some(false),
            record: true,
            custom: json!({"k": 1}),
            constraints: json!({"audio": true, "video": false}),
            min_bitrate: Some(100),
            max_bitrate: Some(2000),
            published: None,
        }
    }

    #[test]
    fn builds_publish_stream() {
        let req = stream_request_full();
        let text = publish_stream(&req);
        assert_eq!(
            value(&text),
            json!({"message": "publishStream", "data": [{
                "mediaSessionId": "m1", "name": "s", "published": true, "hasVideo": false,
                "hasAudio": true, "status": "PENDING", "record": true, "mediaProvider": "WebRTC",
                "sdp": OFFER, "custom": {"k": 1}, "bitrate": 0, "minBitrate": 100,
                "maxBitrate": 2000, "constraints": {"audio": true, "video": false}
            }]})
        );
        let expected = StreamRequest {
            published: Some(true),
            ..req
        };
        assert_eq!(client(&text), ClientMessage::PublishStream(expected));
    }

    #[test]
    fn builds_play_stream() {
        let req = StreamRequest {
            media_session_id: Some("m2".into()),
            name: Some("s".into()),
            sdp: Some(OFFER.into()),
            ..StreamRequest::default()
        };
        let text = play_stream(&req);
        assert_eq!(
            value(&text),
            json!({"message": "playStream", "data": [{
                "mediaSessionId": "m2", "name": "s", "published": false, "hasVideo": true,
                "hasAudio": true, "status": "PENDING", "record": false, "width": 0, "height": 0,
                "mediaProvider": "WebRTC", "sdp": OFFER, "bitrate": 0, "minBitrate": 0,
                "maxBitrate": 0, "quality": 0
            }]})
        );
        let expected = StreamRequest {
            has_audio: Some(true),
            has_video: Some(true),
            published: Some(false),
            ..req
        };
        assert_eq!(client(&text), ClientMessage::PlayStream(expected));

        let full = play_stream(&stream_request_full());
        assert_eq!(value(&full)["data"][0]["record"], false);
        assert_eq!(value(&full)["data"][0]["published"], false);
    }

    #[test]
    fn builds_stop_frames_and_client_pings() {
        let r = StreamRef {
            media_session_id: Some("m1".into()),
            name: Some("s".into()),
        };
        let text = unpublish_stream(&r);
        assert_eq!(
            value(&text),
            json!({"message": "unPublishStream", "data": [{"mediaSessionId": "m1", "name": "s",
                "published": true, "hasVideo": true, "hasAudio": true, "status": "PUBLISHING",
                "record": false}]})
        );
        assert_eq!(client(&text), ClientMessage::UnPublishStream(r.clone()));
        let text = stop_stream(&r);
        assert_eq!(
            value(&text),
            json!({"message": "stopStream", "data": [{"mediaSessionId": "m1", "name": "s",
                "published": false, "hasVideo": true, "hasAudio": true, "status": "PLAYING",
                "record": false}]})
        );
        assert_eq!(client(&text), ClientMessage::StopStream(r));

        assert_eq!(
            value(&client_ping()),
            json!({"message": "ping", "data": [null]})
        );
        assert_eq!(
            value(&client_pong()),
            json!({"message": "pong", "data": [null]})
        );
        assert_eq!(client(&client_ping()), ClientMessage::Ping);
        assert_eq!(client(&client_pong()), ClientMessage::Pong);
    }

    /// A WCS-style status event: extra fields, nulls where relaycast sends nothing.
    #[test]
    fn parses_tolerant_server_status() {
        let text = r#"{"message":"notifyStreamStatusEvent","data":[{"mediaSessionId":"m1",
            "name":null,"status":"PLAYING","info":null,"hasAudio":null,"recordName":null,
            "sdp":null,"mediaProvider":"WebRTC","width":640,"audioState":{"muted":false}}]}"#;
        let expected = StreamStatusEvent {
            media_session_id: "m1".into(),
            name: StreamName::default(),
            published: false,
            status: StreamStatus::Playing,
            info: None,
            has_audio: false,
            has_video: false,
            audio_codec: None,
            video_codec: None,
            audio_state: Some(TrackState { muted: false }),
            video_state: None,
        };
        assert_eq!(server(text), ServerMessage::StreamStatus(expected));
    }

    #[test]
    fn rejects_bad_server_frames() {
        let cases = [
            (
                r#"{"message":"notifyStreamStatusEvent","data":[{"status":"PLAYING"}]}"#,
                "notifyStreamStatusEvent: missing field `mediaSessionId`",
            ),
            (
                r#"{"message":"setRemoteSDP","data":[]}"#,
                r#"setRemoteSDP: "data" must be a non-empty array"#,
            ),
            (
                r#"{"message":"setRemoteSDP","data":["m1"]}"#,
                r#"setRemoteSDP: field "data[1]" must be a string"#,
            ),
            (
                r#"{"message":"setRemoteSDP","data":[{"id":"m1"},"v=0"]}"#,
                r#"setRemoteSDP: field "data[0]" must be a string"#,
            ),
            (
                r#"{"message":"getUserData","data":[null]}"#,
                "getUserData: data[0] must be an object",
            ),
            (
                r#"{"message":"fail","data":[{"info":5}]}"#,
                r#"fail: field "info" must be a string"#,
            ),
        ];
        for (text, message) in cases {
            let error = parse_server_frame(text).expect_err(text);
            assert_eq!(error.to_string(), message);
        }
        let unknown = r#"{"message":"notifyStreamStatusEvent","data":[{"mediaSessionId":"m",
            "status":"WEIRD"}]}"#;
        let error = parse_server_frame(unknown).expect_err("unknown status");
        assert!(matches!(error, FrameError::Invalid { .. }));
        assert_eq!(error.api_method(), Some("notifyStreamStatusEvent"));
    }

    #[test]
    fn parses_lenient_fail_and_other() {
        let empty = ServerMessage::Fail {
            api_method: None,
            info: None,
            id: None,
        };
        assert_eq!(server(r#"{"message":"fail"}"#), empty);
        assert_eq!(server(r#"{"message":"fail","data":[null]}"#), empty);
        assert_eq!(
            server(r#"{"message":"notifyVideoFormat","data":[{}]}"#),
            ServerMessage::Other {
                message: "notifyVideoFormat".into()
            }
        );
    }

    // ----- statuses and reasons -----

    #[test]
    fn statuses_serialize_to_sdk_strings() {
        // Copied from STREAM_STATUS in constants.js.
        let sdk = [
            "NEW",
            "PENDING",
            "PUBLISHING",
            "PLAYING",
            "PAUSED",
            "UNPUBLISHED",
            "STOPPED",
            "FAILED",
            "PLAYBACK_PROBLEM",
            "RESIZE",
            "SNAPSHOT_COMPLETE",
            "NOT_ENOUGH_BANDWIDTH",
        ];
        for (status, text) in StreamStatus::ALL.into_iter().zip(sdk) {
            assert_eq!(status.as_str(), text);
            assert_eq!(status.to_string(), text);
            assert_eq!(serde_json::to_value(status).ok(), Some(json!(text)));
            assert_eq!(
                serde_json::from_value::<StreamStatus>(json!(text)).ok(),
                Some(status)
            );
        }
        let finals: Vec<_> = StreamStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                StreamStatus::Unpublished,
                StreamStatus::Stopped,
                StreamStatus::Failed
            ]
        );

        // Copied from SESSION_STATUS in constants.js.
        let sdk = [
            "CONNECTED",
            "ESTABLISHED",
            "DISCONNECTED",
            "WARN",
            "FAILED",
            "DEBUG",
            "APP_DATA",
            "SEND_DATA_STATUS",
            "PENDING",
            "REGISTERED",
            "UNREGISTERED",
            "INCOMING_CALL",
        ];
        for (status, text) in SessionStatus::ALL.into_iter().zip(sdk) {
            assert_eq!(status.as_str(), text);
            assert_eq!(status.to_string(), text);
            assert_eq!(serde_json::to_value(status).ok(), Some(json!(text)));
            assert_eq!(
                serde_json::from_value::<SessionStatus>(json!(text)).ok(),
                Some(status)
            );
        }
    }

    #[test]
    fn info_strings_match_constants_js() {
        // Each line copied from STREAM_STATUS_INFO in @flashphoner/websdk src/constants.js.
        let sdk = [
            (Info::StreamNotFound, "Stream not found"),
            (
                Info::StreamNameAlreadyInUse,
                "Stream name is already in use",
            ),
            (Info::MediaSessionIdNull, "MediaSessionId is null"),
            (
                Info::MediaSessionIdAlreadyInUse,
                "MediaSessionId is already in use",
            ),
            (Info::SessionNotReady, "Session not ready"),
            (Info::NoCommonCodecs, "No common codecs"),
            (Info::FailedByIceError, "Failed by ICE error"),
            (Info::FailedByIceTimeout, "Failed by ICE timeout"),
            (Info::FailedByKeepAlive, "Failed by ICE keep alive"),
            (Info::FailedByDtlsError, "Failed by DTLS error"),
            (
                Info::FailedByDtlsFingerprintError,
                "Failed by DTLS fingerprint error",
            ),
            (Info::FailedByRtpActivity, "Failed by RTP activity"),
            (Info::FailedByError, "Failed by error"),
            (
                Info::StoppedBySessionDisconnect,
                "Stopped by session disconnect",
            ),
            (Info::StoppedByRestTerminate, "Stopped by rest /terminate"),
            (Info::StoppedByPublisherStop, "Stopped by publisher stop"),
            (Info::StoppedByUser, "Stopped by user"),
            (
                Info::FailedToConnectToOriginStream,
                "Failed to connect to origin stream",
            ),
            (Info::RestrictedAccess, "Restricted access"),
        ];
        assert_eq!(sdk.len(), Info::ALL.len());
        for ((info, text), listed) in sdk.into_iter().zip(Info::ALL) {
            assert_eq!(info, listed);
            assert_eq!(info.as_str(), text);
            assert_eq!(info.to_string(), text);
            assert_eq!(serde_json::to_value(info).ok(), Some(json!(text)));
            assert_eq!(Info::parse(text), Some(info));
        }
        assert_eq!(Info::parse("stream not found"), None);
    }

    // ----- REST objects and identifiers -----

    #[test]
    fn serializes_rest_objects() {
        let stream = StreamInfo {
            app_key: "defaultApp".into(),
            session_id: "sess".into(),
            media_session_id: "m1".into(),
            name: "s".into(),
            published: true,
            has_video: true,
            has_audio: false,
            status: StreamStatus::Publishing,
            info: None,
            audio_codec: None,
            video_codec: Some("H264".into()),
            width: 1280,
            height: 720,
            bitrate: 1500,
            create_date: 1_700_000_000_000,
            media_provider: MEDIA_PROVIDER,
        };
        assert_eq!(
            serde_json::to_value(&stream).ok(),
            Some(
                json!({"appKey": "defaultApp", "sessionId": "sess", "mediaSessionId": "m1",
                "name": "s", "published": true, "hasVideo": true, "hasAudio": false,
                "status": "PUBLISHING", "audioCodec": null, "videoCodec": "H264", "width": 1280,
                "height": 720, "bitrate": 1500, "createDate": 1_700_000_000_000_u64,
                "mediaProvider": "WebRTC"})
            )
        );
        let stopped = StreamInfo {
            status: StreamStatus::Failed,
            info: Some(Info::StoppedByRestTerminate.to_string()),
            ..stream
        };
        let stopped = serde_json::to_value(&stopped).unwrap_or_default();
        assert_eq!(stopped["info"], "Stopped by rest /terminate");

        let connection = ConnectionInfo {
            session_id: "sess".into(),
            app_key: "defaultApp".into(),
            client_version: Some("2.0".into()),
            remote_address: "192.0.2.7".into(),
            media_providers: vec!["WebRTC".into(), "MSE".into()],
            create_date: 1_700_000_000_000,
        };
        assert_eq!(
            serde_json::to_value(&connection).ok(),
            Some(
                json!({"sessionId": "sess", "appKey": "defaultApp", "clientVersion": "2.0",
                "remoteAddress": "192.0.2.7", "mediaProviders": ["WebRTC", "MSE"],
                "createDate": 1_700_000_000_000_u64})
            )
        );
    }

    #[test]
    fn newtypes_are_transparent_strings() {
        let id = MediaSessionId::from("abc");
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some("\"abc\""));
        assert_eq!(
            serde_json::from_str::<MediaSessionId>("\"abc\"").ok(),
            Some(id.clone())
        );
        assert_eq!(id.to_string(), "abc");
        assert_eq!(SessionId::from(String::from("x")).as_str(), "x");
        assert!(StreamName::from("a") < StreamName::from("b"));
    }
}
