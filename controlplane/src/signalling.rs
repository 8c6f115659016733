//! The WebSocket signalling server: one task per connection on the control-plane thread,
//! any request path accepted, text frames handed to the [`Hub`], keep-alive pings sent and
//! counted. Oversized and binary frames get a `fail` frame; oversized ones also close the
//! socket with 1009, as the WebSocket protocol asks.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::hub::{Hub, Outgoing};
use crate::protocol;

/// How the signalling server treats its connections.
#[derive(Clone, Debug)]
pub struct SignallingConfig {
    /// Largest accepted frame (and message), in bytes.
    pub max_frame: usize,
    /// Interval between the server's `ping` frames.
    pub ping_interval: Duration,
    /// A session that has sent nothing for this many pings is closed.
    pub max_missed_pings: u32,
    /// A client must finish the WebSocket handshake within this time.
    pub handshake_timeout: Duration,
}

impl Default for SignallingConfig {
    fn default() -> Self {
        SignallingConfig {
            max_frame: 1 << 20,
            ping_interval: Duration::from_secs(5),
            max_missed_pings: 10,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections until the listener fails or the hub stops.
pub async fn serve(hub: Rc<Hub>, listener: TcpListener, config: SignallingConfig) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %e, "signalling accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if hub.is_stopping() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(connection(Rc::clone(&hub), stream, remote, config.clone()));
    }
}

async fn connection(hub: Rc<Hub>, stream: TcpStream, remote: SocketAddr, config: SignallingConfig) {
    let ws_config = WebSocketConfig::default()
        .max_frame_size(Some(config.max_frame))
        .max_message_size(Some(config.max_frame));
    let accepted = tokio::time::timeout(
        config.handshake_timeout,
        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)),
    )
    .await;
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "WebSocket handshake timed out");
            return;
        }
    };
    let (mut sink, mut source) = ws.split();
    let (conn, mut outgoing) = hub.open(remote);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + config.ping_interval,
        config.ping_interval,
    );
    let mut missed = 0u32;
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    missed = 0;
                    hub.frame(conn, text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    missed = 0;
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
                    let _ = sink.send(Message::text(protocol::fail("unknown", &info, None))).await;
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: "frame too large".into(),
                        })))
                        .await;
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(conn = conn.0, %remote, error = %e, "WebSocket error");
                    break;
                }
            },
            message = outgoing.recv() => match message {
                Some(Outgoing::Text(text)) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close(code, reason)) => {
                    // Flush what was queued before the close (final statuses).
                    while let Ok(Outgoing::Text(text)) = outgoing.try_recv() {
                        let _ = sink.send(Message::text(text)).await;
                    }
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
                None => break,
            },
            _ = ping.tick() => {
                if missed >= config.max_missed_pings {
                    tracing::info!(conn = conn.0, %remote, missed, "keep-alive timeout; closing");
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "keep-alive timeout".into(),
                        })))
                        .await;
                    break;
                }
                missed += 1;
                if sink.send(Message::text(protocol::ping())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
    hub.closed(conn);
    tracing::debug!(conn = conn.0, %remote, "signalling connection closed");
}
