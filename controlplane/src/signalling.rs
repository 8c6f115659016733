//! The WebSocket signalling server: one task per connection on the control-plane thread,
//! any request path accepted, text frames handed to the [`Hub`], keep-alive pings sent and
//! counted. Oversized and binary frames get a `fail` frame; oversized ones also close the
//! socket with 1009, as the WebSocket protocol asks. The same sessions are served over TLS
//! (`wss://`) when an acceptor is given. Two limits live here, each answered with a `fail`
//! frame and a log line: sessions per client IP address (the extra session is closed with
//! 1008) and messages per second per session (a token bucket; excess messages are dropped,
//! and a session that keeps flooding is closed with 1008). A client that stops reading is
//! dropped: when a frame cannot be written within `write_timeout` (10 s), or when more than
//! `max_queued` bytes of frames (4 MiB) wait for it. Its session then ends as if it had
//! disconnected.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::hub::{Hub, Outgoing};
use crate::listen::Listener;
use crate::protocol;

/// Initial read buffer of one signalling WebSocket, and the most it reads in one call
/// (tungstenite's default is 128 KiB). A frame that does not fit (an SDP, a few KiB) gets a
/// buffer of its own size plus what was read with its header, up to this much more; once the
/// session's next frames have filled that spare room, reading starts again in a buffer of
/// this size and the large one goes with its message (`connection`). The smaller this is,
/// the sooner: a few keep-alive answers after an SDP, at 256 bytes.
const SESSION_READ_BUFFER: usize = 256;

/// Writes one frame within `timeout`; false when the socket failed or the client stopped
/// reading.
async fn write<K>(sink: &mut K, message: Message, timeout: Duration) -> bool
where
    K: futures_util::Sink<Message> + Unpin,
{
    matches!(
        tokio::time::timeout(timeout, sink.send(message)).await,
        Ok(Ok(()))
    )
}

/// How the signalling server treats its connections.
#[derive(Clone, Debug)]
pub struct SignallingConfig {
    /// Largest accepted frame (and message), in bytes.
    pub max_frame: usize,
    /// Interval between the server's `ping` frames.
    pub ping_interval: Duration,
    /// A session that has sent nothing for this many pings is closed.
    pub max_missed_pings: u32,
    /// A client must finish the TLS and WebSocket handshakes within this time.
    pub handshake_timeout: Duration,
    /// Messages (frames) one session may send per second, with a burst of as many; 0: any.
    pub max_messages_per_sec: u32,
    /// Sessions open at once from one IP address; 0: any.
    pub max_sessions_per_ip: usize,
    /// How long one frame may take to reach a client's socket. A client that takes nothing
    /// for this long has stopped reading (its TCP window stays shut), and its session is
    /// closed: waiting longer would also stop its keep-alive pings and let its queue grow.
    pub write_timeout: Duration,
    /// Bytes of frames queued for one connection beyond which it is dropped as too slow.
    pub max_queued: usize,
}

impl Default for SignallingConfig {
    fn default() -> Self {
        SignallingConfig {
            max_frame: 1 << 20,
            ping_interval: Duration::from_secs(5),
            max_missed_pings: 10,
            handshake_timeout: Duration::from_secs(10),
            max_messages_per_sec: 100,
            max_sessions_per_ip: 5000,
            write_timeout: Duration::from_secs(10),
            max_queued: crate::hub::MAX_QUEUED_BYTES,
        }
    }
}

/// Accepts connections on every listener (plain `ws://`, or `wss://` with an acceptor) until
/// the task is aborted. Sessions per IP address are counted across all of them.
pub async fn serve(
    hub: Rc<Hub>,
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    config: SignallingConfig,
) {
    let per_ip = Rc::new(PerIp::default());
    let loops = listeners.into_iter().map(|(listener, tls)| {
        accept_loop(
            Rc::clone(&hub),
            listener,
            tls,
            config.clone(),
            Rc::clone(&per_ip),
        )
    });
    futures_util::future::join_all(loops).await;
}

async fn accept_loop(
    hub: Rc<Hub>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: SignallingConfig,
    per_ip: Rc<PerIp>,
) {
    let mut listener = Listener::new(listener, "signalling");
    loop {
        let (stream, remote) = listener.accept().await;
        if hub.is_stopping() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let slot = per_ip.enter(remote.ip());
        let hub = Rc::clone(&hub);
        let config = config.clone();
        let tls = tls.clone();
        let over = config.max_sessions_per_ip != 0 && slot.count > config.max_sessions_per_ip;
        // One task per session, plain or TLS: two separate futures, so a plain session's
        // task does not carry the size of a TLS stream (a task is as large as the largest
        // state of its future, and a server holds thousands of them).
        match tls {
            None => {
                tokio::task::spawn_local(async move {
                    if let Some(ws) = handshake(stream, remote, &config).await {
                        session(hub, ws, remote, config, over).await;
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                tokio::task::spawn_local(async move {
                    if let Some(stream) = tls_accept(&hub, &acceptor, stream, remote, &config).await
                        && let Some(ws) = handshake(stream, remote, &config).await
                    {
                        session(hub, ws, remote, config, over).await;
                    }
                    drop(slot);
                });
            }
        }
    }
}

/// The TLS handshake of a wss:// session, bounded by the handshake timeout.
async fn tls_accept(
    hub: &Hub,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    config: &SignallingConfig,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed (wss)");
            hub.metrics().signalling_error("tls_handshake");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out (wss)");
            hub.metrics().signalling_error("tls_handshake");
            None
        }
    }
}

/// A session after its WebSocket handshake: served, or refused when its address has too many.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    hub: Rc<Hub>,
    ws: WebSocketStream<S>,
    remote: SocketAddr,
    config: SignallingConfig,
    over: bool,
) {
    if over {
        refuse_extra_session(&hub, ws, remote, &config).await;
    } else {
        connection(hub, ws, remote, config).await;
    }
}

/// Open sessions per client IP address.
#[derive(Default)]
struct PerIp(RefCell<HashMap<IpAddr, usize>>);

/// One counted session; the count drops with it.
struct IpSlot {
    per_ip: Rc<PerIp>,
    ip: IpAddr,
    /// Sessions from this address, this one included.
    count: usize,
}

impl PerIp {
    fn enter(self: &Rc<Self>, ip: IpAddr) -> IpSlot {
        let mut map = self.0.borrow_mut();
        let count = map.entry(ip).or_default();
        *count += 1;
        IpSlot {
            per_ip: Rc::clone(self),
            ip,
            count: *count,
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.per_ip.0.borrow_mut();
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    remote: SocketAddr,
    config: &SignallingConfig,
) -> Option<WebSocketStream<S>> {
    // Signalling frames are small (an SDP is a few KiB) and a server holds thousands of
    // sessions: tungstenite's 128 KiB default read buffer per session would be most of a
    // player's memory. The buffer still grows for a larger frame, up to `max_frame`.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(SESSION_READ_BUFFER)
        .write_buffer_size(0)
        .max_frame_size(Some(config.max_frame))
        .max_message_size(Some(config.max_frame));
    let accepted = tokio::time::timeout(
        config.handshake_timeout,
        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)),
    )
    .await;
    match accepted {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "WebSocket handshake timed out");
            None
        }
    }
}

/// A session beyond the per-IP limit: told why, then closed with 1008 (policy violation).
async fn refuse_extra_session<S: AsyncRead + AsyncWrite + Unpin>(
    hub: &Hub,
    mut ws: WebSocketStream<S>,
    remote: SocketAddr,
    config: &SignallingConfig,
) {
    let limit = config.max_sessions_per_ip;
    tracing::warn!(%remote, limit, "session refused: sessions per IP address limit");
    hub.metrics().signalling_error("sessions_per_ip");
    let info = format!("Too many sessions from {} (limit {limit})", remote.ip());
    let timeout = config.write_timeout;
    if write(
        &mut ws,
        Message::text(protocol::fail("connection", &info, None)),
        timeout,
    )
    .await
    {
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "too many sessions from this address".into(),
        }));
        let _ = write(&mut ws, close, timeout).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// The messages-per-second limit of one session: a token bucket holding a second's worth.
struct RateLimit {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// Messages dropped since the last one let through.
    dropped: u32,
}

/// What to do with one incoming message.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Pass,
    /// Drop it; `first` is true for the first of a run (the client is told once per run).
    Drop {
        first: bool,
    },
    /// The session keeps flooding: close it.
    Close,
}

impl RateLimit {
    fn new(per_sec: u32, now: Instant) -> Self {
        RateLimit {
            rate: f64::from(per_sec),
            tokens: f64::from(per_sec),
            refilled: now,
            dropped: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        if self.rate == 0.0 {
            return Admit::Pass;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.dropped = 0;
            return Admit::Pass;
        }
        self.dropped += 1;
        // Two seconds' worth dropped in a row: the client is not slowing down.
        if f64::from(self.dropped) > 2.0 * self.rate {
            Admit::Close
        } else {
            Admit::Drop {
                first: self.dropped == 1,
            }
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    hub: Rc<Hub>,
    ws: WebSocketStream<S>,
    remote: SocketAddr,
    config: SignallingConfig,
) {
    let (mut sink, mut source) = ws.split();
    let crate::hub::ConnQueue {
        conn,
        rx: mut outgoing,
        queued,
        kill,
    } = hub.open(remote, config.max_queued);
    let timeout = config.write_timeout;
    let stalled = |hub: &Hub| {
        hub.metrics().signalling_error("write_timeout");
        tracing::warn!(conn = conn.0, %remote, ?timeout,
            "dropping a session that stopped reading");
    };
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + config.ping_interval,
        config.ping_interval,
    );
    let mut missed = 0u32;
    let mut rate = RateLimit::new(config.max_messages_per_sec, Instant::now());
    // tungstenite hands each frame out as a shared slice of its read buffer. When a frame
    // does not fit the buffer's spare room, a buffer that nobody else holds is grown and kept
    // for good, so a session that once sent a large frame (an SDP: several KiB, up to
    // `max_frame`) would hold that much as long as it lives. Holding the last message until
    // the next one is read means the buffer is never the reader's alone at that moment:
    // tungstenite then starts a new buffer of `SESSION_READ_BUFFER` bytes, and the large
    // one is freed with the message.
    let mut _last_read: Option<Message> = None;
    loop {
        tokio::select! {
            incoming = source.next() => {
                if let Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))) =
                    &incoming
                {
                    let limit = config.max_messages_per_sec;
                    match rate.admit(Instant::now()) {
                        Admit::Pass => {}
                        Admit::Drop { first } => {
                            missed = 0;
                            hub.metrics().signalling_error("rate_limited");
                            if first {
                                tracing::warn!(conn = conn.0, %remote, limit,
                                    "messages dropped: messages per second limit");
                                let info = format!("Too many messages (limit {limit} per second)");
                                hub.reject(conn, &info);
                            }
                            continue;
                        }
                        Admit::Close => {
                            hub.metrics().signalling_error("rate_limited");
                            tracing::warn!(conn = conn.0, %remote, limit,
                                "closing a session that keeps exceeding the message rate");
                            let close = Message::Close(Some(CloseFrame {
                                code: CloseCode::Policy,
                                reason: "message rate limit exceeded".into(),
                            }));
                            let _ = write(&mut sink, close, timeout).await;
                            break;
                        }
                    }
                }
                match &incoming {
                Some(Ok(Message::Text(text))) => {
                    missed = 0;
                    hub.frame(conn, text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    missed = 0;
                    hub.metrics().signalling_error("binary_frame");
                    hub.reject(conn, "binary frames are not supported; send JSON text frames");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => missed = 0,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(WsError::Capacity(e))) => {
                    let info = match e {
                        CapacityError::MessageTooLong { size, max_size } => {
                            format!("frame of {size} bytes exceeds the limit of {max_size} bytes")
                        }
                        other => other.to_string(),
                    };
                    tracing::info!(conn = conn.0, %remote, %info, "oversized frame; closing");
                    hub.metrics().signalling_error("oversized_frame");
                    if write(&mut sink, Message::text(protocol::fail("unknown", &info, None)), timeout).await {
                        let close = Message::Close(Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: "frame too large".into(),
                        }));
                        let _ = write(&mut sink, close, timeout).await;
                    }
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(conn = conn.0, %remote, error = %e, "WebSocket error");
                    break;
                }
                }
                _last_read = incoming.and_then(Result::ok);
            }
            message = outgoing.recv() => match message {
                Some(Outgoing::Text(text)) => {
                    let len = text.len();
                    let written = tokio::select! {
                        w = tokio::time::timeout(timeout, sink.send(Message::text(text))) => w,
                        // The queue overflowed (the hub logged and counted it).
                        () = kill.notified() => break,
                    };
                    queued.set(queued.get().saturating_sub(len));
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            stalled(&hub);
                            break;
                        }
                    }
                }
                Some(Outgoing::Close(code, reason)) => {
                    // Flush what was queued before the close (final statuses), as long as
                    // the client takes it.
                    let mut open = true;
                    while let Ok(Outgoing::Text(text)) = outgoing.try_recv() {
                        if !write(&mut sink, Message::text(text), timeout).await {
                            open = false;
                            break;
                        }
                    }
                    if open {
                        let close = Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        }));
                        let _ = write(&mut sink, close, timeout).await;
                    }
                    break;
                }
                None => break,
            },
            () = kill.notified() => break,
            _ = ping.tick() => {
                if missed >= config.max_missed_pings {
                    tracing::info!(conn = conn.0, %remote, missed, "keep-alive timeout; closing");
                    hub.metrics().signalling_error("keepalive_timeout");
                    let close = Message::Close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "keep-alive timeout".into(),
                    }));
                    let _ = write(&mut sink, close, timeout).await;
                    break;
                }
                missed += 1;
                if !write(&mut sink, Message::text(protocol::ping()), timeout).await {
                    break;
                }
            }
        }
    }
    // A client that reads nothing takes no close frame either: give it a moment, not more.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    hub.closed(conn);
    tracing::debug!(conn = conn.0, %remote, "signalling connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_drops_then_closes() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(10, t0);
        for _ in 0..10 {
            assert_eq!(rate.admit(t0), Admit::Pass);
        }
        assert_eq!(rate.admit(t0), Admit::Drop { first: true });
        assert_eq!(rate.admit(t0), Admit::Drop { first: false });
        // A tenth of a second refills one message.
        assert_eq!(rate.admit(t0 + Duration::from_millis(100)), Admit::Pass);
        let t1 = t0 + Duration::from_millis(100);
        for n in 1..=20 {
            assert_eq!(rate.admit(t1), Admit::Drop { first: n == 1 });
        }
        assert_eq!(rate.admit(t1), Admit::Close);
    }

    #[test]
    fn rate_limit_zero_is_off() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(0, t0);
        for _ in 0..10_000 {
            assert_eq!(rate.admit(t0), Admit::Pass);
        }
    }

    #[test]
    fn per_ip_counts_drop_with_their_slots() {
        let per_ip = Rc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = per_ip.enter(ip);
        let b = per_ip.enter(ip);
        assert_eq!((a.count, b.count), (1, 2));
        drop(a);
        assert_eq!(per_ip.enter(ip).count, 2);
        drop(b);
        assert!(per_ip.0.borrow().is_empty());
    }
}
