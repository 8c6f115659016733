//! Production features on real `relaycast` processes: TLS (wss publish/play, https REST,
//! relays over wss), REST authentication, signalling access control, every limit, config
//! errors, metrics that move with traffic, a media-port spray of forged and broken datagrams
//! while a stream plays, and a graceful stop that ends relays on the remote side.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    Server, TestCert, ended, endpoint, eventually, hook_backend, https_hook_backend, metric,
    metrics, player_figures, request, request_with, session, tls_addrs,
};
use relaycast_controlplane::client::{
    ClientError, ClientStream, ClientTimeouts, ClientTls, Session, StreamSignal,
};
use relaycast_controlplane::protocol::{AppKey, ConnectionRequest, StreamStatus};
use relaycast_dataplane::synth::{SynthConfig, VideoCodec};
use serde_json::{Value, json};

fn synth() -> SynthConfig {
    SynthConfig {
        video: Some(VideoCodec::Vp8),
        video_bitrate_bps: 1_000_000,
        ..SynthConfig::default()
    }
}

/// Media packets received and loss in percent.
async fn figures(player: &ClientStream) -> (u64, f64) {
    let (media, loss, _, _) = player_figures(player).await;
    (media, loss)
}

/// Pulls `remote` from `uri` onto `edge` as `local`, checks the relay plays, and plays the
/// pulled stream there. Returns the relay request body (to replay it elsewhere) and the
/// player.
async fn pull_and_play(
    edge: &Server,
    uri: &str,
    remote: &str,
    local: &str,
) -> (Value, Session, ClientStream) {
    let body = json!({"uri": uri, "remoteStreamName": remote, "localStreamName": local});
    let (code, reply) = edge.rest("/rest-api/pull/pull", &body.to_string()).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["status"], json!("PLAYING"), "{reply}");
    let viewers = session(edge).await;
    let player = viewers
        .play(&endpoint(), local)
        .await
        .unwrap_or_else(|e| panic!("play the stream pulled from {uri}: {e}"));
    (body, viewers, player)
}

/// Requests the pull relay `body` on `server`, which must refuse it: the relay never plays
/// and `find_all` lists it as FAILED. Returns that relay object.
async fn pull_fails(server: &Server, body: &Value) -> Value {
    let (_, reply) = server.rest("/rest-api/pull/pull", &body.to_string()).await;
    assert_ne!(reply["status"], json!("PLAYING"), "{reply}");
    eventually(Duration::from_secs(10), || async {
        let (_, list) = server.rest("/rest-api/pull/find_all", "").await;
        let relay = list.get(0)?.clone();
        (relay["status"] == json!("FAILED")).then_some(relay)
    })
    .await
    .unwrap_or_else(|| panic!("the refused relay {body} did not fail"))
}

async fn connect(url: &str, request: ConnectionRequest) -> Result<Session, ClientError> {
    Session::connect(url, &request, ClientTimeouts::default()).await
}

fn wss_url(addr: SocketAddr) -> String {
    format!("wss://localhost:{}/", addr.port())
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wss_publish_and_play_and_https_rest() {
    let cert = TestCert::generate();
    let server = Server::with_config(&cert.toml(), &[]);
    let (wss, https) = tls_addrs(&server).await;
    let ep = endpoint();
    let trust = ClientTls::with_ca_pem(cert.cert_pem.as_bytes(), "test CA").unwrap();
    let request = ConnectionRequest::default();
    let timeouts = ClientTimeouts::default();

    let publisher_session = Session::connect_with(&wss_url(wss), &request, timeouts, &trust)
        .await
        .expect("wss connect with the CA");
    let publisher = publisher_session
        .publish(&ep, "secure", synth())
        .await
        .expect("publish over wss");
    let player_session = Session::connect_with(&wss_url(wss), &request, timeouts, &trust)
        .await
        .unwrap();
    let player = player_session
        .play(&ep, "secure")
        .await
        .expect("play over wss");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (media, loss) = figures(&player).await;
    assert!(
        media > 50,
        "player received {media} packets over a wss session"
    );
    assert!(loss < 1.0, "loss {loss}%");

    // The system roots do not know a self-signed certificate; the explicit opt-in skips it.
    let e = Session::connect_with(&wss_url(wss), &request, timeouts, &ClientTls::system())
        .await
        .err()
        .expect("an unknown certificate is refused");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    Session::connect_with(&wss_url(wss), &request, timeouts, &ClientTls::insecure())
        .await
        .expect("insecure opt-in connects");

    // REST over TLS, and plain REST still works beside it.
    let (code, body) = common::https_request(
        https,
        &cert.cert_pem,
        "POST",
        "/rest-api/stream/find_all",
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    let (code, _) = server.rest("/rest-api/stream/find_all", "").await;
    assert_eq!(code, 200);
    drop(publisher);
}

#[tokio::test]
async fn relay_pulls_over_wss_verifying_the_configured_ca() {
    let cert = TestCert::generate();
    let origin = Server::with_config(&cert.toml(), &[]);
    let (wss, _) = tls_addrs(&origin).await;
    let edge = Server::with_config(
        &format!(
            "[relay]\ntls_ca_file = {:?}\n",
            cert.cert_file.display().to_string()
        ),
        &[],
    );
    let strict = Server::with_config("[relay]\nmax_attempts = 1\nreconnect = false\n", &[]);
    let ep = endpoint();
    let publisher_session = session(&origin).await;
    let _publisher = publisher_session
        .publish(&ep, "cam", synth())
        .await
        .unwrap();

    let (body, _viewers, player) = pull_and_play(&edge, &wss_url(wss), "cam", "cam-e").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (media, loss) = figures(&player).await;
    assert!(media > 50, "relay over wss delivered {media} packets");
    assert!(loss < 1.0, "loss {loss}%");

    // A server trusting only the system roots refuses the self-signed origin.
    let failed = pull_fails(&strict, &body).await;
    assert!(
        failed.to_string().to_lowercase().contains("certificate"),
        "{failed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication and access control
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rest_auth_basic_and_bearer() {
    let server = Server::with_config(
        "[auth]\nrest_user = \"admin\"\nrest_password = \"pa55\"\nrest_token = \"t0ken\"\n",
        &[],
    );
    let path = "/rest-api/stream/find_all";
    let (code, body, headers) = request_with(server.rest, "POST", path, "", &[]).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["status"], json!(401));
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let wrong = [("authorization", "Basic YWRtaW46bm9wZQ==")]; // admin:nope
    assert_eq!(
        request_with(server.rest, "POST", path, "", &wrong).await.0,
        401
    );
    let wrong = [("authorization", "Bearer t0ke")];
    assert_eq!(
        request_with(server.rest, "POST", path, "", &wrong).await.0,
        401
    );
    let basic = [("authorization", "Basic YWRtaW46cGE1NQ==")]; // admin:pa55
    let (code, body, _) = request_with(server.rest, "POST", path, "", &basic).await;
    assert_eq!(code, 404, "accepted: no streams yet, {body}");
    let bearer = [("authorization", "Bearer t0ken")];
    let (code, _, _) = request_with(server.rest, "POST", path, "", &bearer).await;
    assert_eq!(code, 404);
    // Relay methods are REST methods too.
    let (code, _, _) = request_with(server.rest, "POST", "/rest-api/pull/find_all", "", &[]).await;
    assert_eq!(code, 401);
    // Health, metrics and the web apps stay open (metrics unless auth.metrics).
    assert_eq!(request(server.rest, "GET", "/health", "").await.0, 200);
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "relaycast_rest_auth_failures_total", &[]),
        4.0
    );
    assert_eq!(request(server.rest, "GET", "/", "").await.0, 200);
    assert!(server.log_text().contains("REST request refused: 401"));

    let closed = Server::with_config("[auth]\nrest_token = \"t\"\nmetrics = true\n", &[]);
    assert_eq!(request(closed.rest, "GET", "/metrics", "").await.0, 401);
    let bearer = [("authorization", "Bearer t")];
    assert_eq!(
        request_with(closed.rest, "GET", "/metrics", "", &bearer)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn signalling_app_keys_and_token() {
    let server = Server::with_config("[auth]\napp_keys = [\"live\"]\ntoken = \"s3cret\"\n", &[]);
    let ep = endpoint();
    let url = server.ws_url();
    // The SDK's default appKey is not allowed.
    let e = connect(&url, ConnectionRequest::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e, ClientError::Fail("Restricted access".into()));
    // A wrong token in connection is refused at once.
    let e = connect(
        &url,
        ConnectionRequest {
            app_key: AppKey::from("live"),
            custom: json!({"token": "guess"}),
            ..ConnectionRequest::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e, ClientError::Fail("Restricted access".into()));
    // No token in connection: each publish/play must carry it.
    let bare = connect(
        &url,
        ConnectionRequest {
            app_key: AppKey::from("live"),
            ..ConnectionRequest::default()
        },
    )
    .await
    .expect("allowed appKey connects");
    let e = bare.publish(&ep, "s", synth()).await.err().unwrap();
    assert_eq!(
        e,
        ClientError::Stream {
            status: StreamStatus::Failed,
            info: "Restricted access".into()
        }
    );
    let e = bare
        .negotiate("s", "v=0\r\n", true, json!({"token": "s3cret"}))
        .await
        .err()
        .unwrap();
    assert!(
        !e.to_string().contains("Restricted access"),
        "the token in publishStream passes the check: {e}"
    );
    // The token in connection covers the session's publish and play.
    let good = connect(
        &url,
        ConnectionRequest {
            app_key: AppKey::from("live"),
            custom: json!({"token": "s3cret"}),
            ..ConnectionRequest::default()
        },
    )
    .await
    .unwrap();
    let _publisher = good.publish(&ep, "ok", synth()).await.expect("publish");
    let _player = good.play(&ep, "ok").await.expect("play");
    let text = metrics(&server).await;
    assert_eq!(
        metric(
            &text,
            "relaycast_requests_refused_total",
            &["kind=\"restricted_access\""]
        ),
        3.0
    );
    assert!(
        server
            .log_text()
            .contains("connection refused: restricted access")
    );
}

#[tokio::test]
async fn relays_carry_the_token_of_a_protected_origin() {
    let origin = Server::with_config("[auth]\ntoken = \"s3cret\"\n", &[]);
    let edge = Server::with_config("[relay]\ntoken = \"s3cret\"\n", &[]);
    let tokenless = Server::with_config("[relay]\nreconnect = false\nmax_attempts = 1\n", &[]);
    let ep = endpoint();
    let publisher_session = connect(
        &origin.ws_url(),
        ConnectionRequest {
            custom: json!({"token": "s3cret"}),
            ..ConnectionRequest::default()
        },
    )
    .await
    .unwrap();
    let _publisher = publisher_session
        .publish(&ep, "cam", synth())
        .await
        .unwrap();
    let (body, _viewers, player) = pull_and_play(&edge, &origin.ws_url(), "cam", "cam-e").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(figures(&player).await.0 > 20);

    let failed = pull_fails(&tokenless, &body).await;
    assert!(failed.to_string().contains("Restricted access"), "{failed}");
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn frame_and_body_limits() {
    let server = Server::with_config(
        "[limits]\nmax_frame_bytes = 2048\nmax_body_bytes = 512\n",
        &[],
    );
    let s = session(&server).await;
    s.send_raw(format!(
        r#"{{"message":"ping","data":["{}"]}}"#,
        "x".repeat(4096)
    ))
    .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), s.wait_closed())
        .await
        .expect("an oversized frame closes the session");
    assert!(
        reason.contains("1009") || reason.contains("too large"),
        "{reason}"
    );

    let body = format!(r#"{{"name":"{}"}}"#, "n".repeat(1024));
    let (code, reply) = server.rest("/rest-api/stream/find", &body).await;
    assert_eq!(code, 413, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("512"), "{reply}");
    let text = metrics(&server).await;
    assert_eq!(
        metric(
            &text,
            "relaycast_signalling_errors_total",
            &["kind=\"oversized_frame\""]
        ),
        1.0
    );
}

/// A session keeps the memory of a large frame it sent only until a few more frames have
/// come (here the size of a few keep-alive answers): sessions that each send one 512 KiB
/// frame and then eight small ones, in turn, leave the server about one such buffer larger,
/// not one per session.
#[tokio::test]
async fn an_idle_session_does_not_keep_its_largest_frame() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    const SESSIONS: u64 = 24;
    const LARGE: usize = 512 * 1024;
    let server = Server::start(&[]);
    let rss = || {
        relaycast_loadgen::procfs::sample(Some(server.pid()))
            .unwrap()
            .rss_bytes
    };
    let ping = |fill: usize| {
        Message::text(json!({"message": "ping", "data": ["x".repeat(fill)]}).to_string())
    };
    let mut sessions = Vec::new();
    let mut before = 0;
    // The first session's round is outside the measure: the allocator's first growth.
    for n in 0..=SESSIONS {
        if n == 1 {
            before = rss();
        }
        let mut ws = raw_connect(&server, json!({})).await;
        for fill in std::iter::once(LARGE).chain([10; 8]) {
            ws.send(ping(fill)).await.unwrap();
            next_message(&mut ws, "pong").await;
        }
        sessions.push(ws);
    }
    let grown = rss().saturating_sub(before);
    assert!(
        grown < SESSIONS * LARGE as u64 / 4,
        "{SESSIONS} idle sessions that each sent one {LARGE}-byte frame grew the server's RSS \
         by {grown} bytes"
    );
}

#[tokio::test]
async fn message_rate_limit() {
    let server = Server::with_config("[limits]\nmax_messages_per_sec = 5\n", &[]);
    let s = session(&server).await;
    for _ in 0..8 {
        s.send_raw(r#"{"message":"ping","data":[]}"#.into())
            .unwrap();
    }
    let dropped = eventually(Duration::from_secs(5), || async {
        let text = metrics(&server).await;
        let n = metric(
            &text,
            "relaycast_signalling_errors_total",
            &["kind=\"rate_limited\""],
        );
        (n > 0.0).then_some(n)
    })
    .await
    .expect("messages beyond the rate are dropped and counted");
    assert!(dropped <= 8.0);
    assert!(
        s.closed_reason().is_none(),
        "a short burst does not close the session"
    );
    // A session that keeps flooding is closed.
    for _ in 0..100 {
        if s.send_raw(r#"{"message":"ping","data":[]}"#.into())
            .is_err()
        {
            break;
        }
    }
    // The client may see its own write fail before it reads the close frame: the server's
    // log says why the session ended.
    tokio::time::timeout(Duration::from_secs(5), s.wait_closed())
        .await
        .expect("a flooding session is closed");
    let closed = server
        .log_once_it_shows("closing a session that keeps exceeding the message rate")
        .await;
    assert!(closed.is_some(), "{}", server.log_text());
    assert!(server.log_text().contains("messages per second limit"));
}

/// A client that stops reading while its stream's publisher sends large `sendData` payloads
/// is dropped once more than the queue bound waits for it; a player that reads gets every
/// event, and the publisher goes on.
#[tokio::test]
async fn a_player_that_stops_reading_is_dropped_and_the_others_get_every_event() {
    // The queue bound: 24 MB of events is far more than loopback TCP buffers plus 4 MiB.
    stalled_player_is_dropped(
        "",
        "slow_consumer",
        "dropping a session that does not read what it is sent",
    )
    .await;
}

#[tokio::test]
async fn a_player_whose_socket_stays_shut_is_dropped_after_the_write_timeout() {
    // The queue may hold all 24 MB here, so only the write timeout (1 s) can drop it.
    stalled_player_is_dropped(
        "max_queued_bytes = 268435456\n[keepalive]\nwrite_timeout_secs = 1\n",
        "write_timeout",
        "dropping a session that stopped reading",
    )
    .await;
}

/// A raw WebSocket player that never reads, while its publisher sends 40 events of 600 KB
/// to it and to a reading player: the stalled one is dropped for `kind` (with `log` in the
/// log), the reading one gets every event, and the publisher and its media go on. `limits`
/// is more of the `[limits]` section (and may open other sections).
async fn stalled_player_is_dropped(limits: &str, kind: &str, log: &str) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::with_config(
        &format!(
            "[media]\nconnect_timeout_secs = 60\n\
             [limits]\nmax_stream_event_bytes = 700000\nmax_stream_events_per_sec = 0\n{limits}"
        ),
        &[],
    );
    let ep = endpoint();
    let pub_session = session(&server).await;
    let publisher = pub_session.publish(&ep, "big", synth()).await.unwrap();
    let readers = session(&server).await;
    let mut reader = readers.play(&ep, "big").await.unwrap();

    // A raw WebSocket that asks to play and then never reads: its peer never connects (the
    // offer is fake), but the registry counts it a player from the answer on.
    let (mut stalled, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("connect the raw WebSocket");
    let connection = json!({"message": "connection", "data": [{"appKey": "defaultApp",
        "mediaProviders": ["WebRTC"], "clientVersion": "2.0"}]});
    let play = json!({"message": "playStream", "data": [{"mediaSessionId": "stalled",
        "name": "big", "sdp": fake_offer(), "hasVideo": true, "hasAudio": false}]});
    for frame in [connection, play] {
        stalled
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    let listed = eventually(Duration::from_secs(5), || async {
        let (_, body) = server
            .rest("/rest-api/stream/find", r#"{"name":"big"}"#)
            .await;
        (body.as_array()?.len() == 3).then_some(())
    })
    .await;
    assert!(listed.is_some(), "the raw player was not accepted");

    // 40 payloads of 600 KB: far more than loopback TCP buffers plus the 4 MiB queue hold.
    let payload = json!({"blob": "x".repeat(600_000)});
    let sent = 40;
    for _ in 0..sent {
        publisher
            .handle
            .send_stream_event("data", Some(&payload))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = 0;
    while got < sent {
        let signal = tokio::time::timeout(Duration::from_secs(10), reader.handle.next_signal())
            .await
            .expect("the reading player gets every event")
            .expect("the reading player's session stays up");
        if let StreamSignal::Event(e) = signal
            && e["type"] == "data"
        {
            assert_eq!(e["payload"], payload);
            got += 1;
        }
    }
    let label = format!("kind=\"{kind}\"");
    let dropped = eventually(Duration::from_secs(5), || async {
        let text = metrics(&server).await;
        let n = metric(&text, "relaycast_signalling_errors_total", &[&label]);
        (n == 1.0).then_some(())
    })
    .await;
    assert!(dropped.is_some(), "{}", server.log_text());
    assert!(server.log_text().contains(log), "{}", server.log_text());
    // Dropped once, for that reason only.
    let text = metrics(&server).await;
    for other in ["slow_consumer", "write_timeout"]
        .into_iter()
        .filter(|k| *k != kind)
    {
        let label = format!("kind=\"{other}\"");
        assert_eq!(
            metric(&text, "relaycast_signalling_errors_total", &[&label]),
            0.0,
            "{other}"
        );
    }
    // Its player is gone; the publisher and the reading player stay.
    let gone = eventually(Duration::from_secs(5), || async {
        let (_, body) = server
            .rest("/rest-api/stream/find", r#"{"name":"big"}"#)
            .await;
        (body.as_array()?.len() == 2).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the stalled player is still listed");
    assert!(pub_session.closed_reason().is_none() && readers.closed_reason().is_none());
    assert!(
        figures(&reader).await.0 > 0,
        "media still reaches the reading player"
    );
    drop(stalled);
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket that sends `connection` as the SDK does, with `custom`.
async fn raw_connect(server: &Server, custom: Value) -> RawWs {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("connect the raw WebSocket");
    let connection = json!({"message": "connection", "data": [{"appKey": "chatApp",
        "mediaProviders": ["WebRTC"], "clientVersion": "2.0", "custom": custom}]});
    ws.send(Message::text(connection.to_string()))
        .await
        .unwrap();
    ws
}

/// The first object of the next frame named `message` (other frames are skipped).
async fn next_message(ws: &mut RawWs, message: &str) -> Value {
    use futures_util::StreamExt;

    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {message} within 10 s"))
            .expect("the session is open")
            .expect("a frame");
        let Ok(text) = frame.to_text() else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if frame["message"] == message {
            return frame["data"][0].clone();
        }
    }
}

/// `WCS <hex>`: the HMAC-MD5 of `body` with `key`, as the backend checks it.
fn wcs_signature(key: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<md5::Md5>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("WCS {hex}")
}

#[tokio::test]
async fn rest_hooks_let_the_backend_decide_and_carry_data_both_ways() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (backend, mut posts, connections) = hook_backend().await;
    let server = Server::with_config(
        &format!(
            "[hooks]\nurl = \"http://{backend}/rest/my_api\"\ntimeout_ms = 700\n\
             secret_key = \"wcs-secret\"\n"
        ),
        &[],
    );

    // connect: the backend sees the session and its custom object, signed.
    let mut ws = raw_connect(&server, json!({"login": "ann"})).await;
    let user_data = next_message(&mut ws, "getUserData").await;
    let session_id = user_data["sessionId"].as_str().unwrap().to_owned();
    let post = posts.next("connect").await;
    assert_eq!(post.path, "/rest/my_api/connect");
    assert_eq!(post.body["sessionId"], session_id.as_str());
    assert_eq!(post.body["appKey"], "chatApp");
    assert_eq!(post.body["custom"], json!({"login": "ann"}));
    let raw = serde_json::to_vec(&post.body).unwrap();
    assert_eq!(post.authorization, Some(wcs_signature("wcs-secret", &raw)));

    // A connection the backend refuses gets `fail` and is closed.
    let mut refused = raw_connect(&server, json!({"login": "mallory"})).await;
    let fail = next_message(&mut refused, "fail").await;
    assert_eq!(fail["info"], "Refused by the backend (403)");
    let post = posts.next("connect").await;
    assert_eq!(post.body["custom"]["login"], "mallory");

    // OnDataEvent: accepted, refused, unanswered.
    let cases = [
        (
            "op-ok",
            json!({"answer": 200, "text": "hello"}),
            "ACCEPTED",
            None,
        ),
        (
            "op-403",
            json!({"answer": 403}),
            "FAILED",
            Some("Refused by the backend (403)"),
        ),
        (
            "op-slow",
            json!({"answer": "never"}),
            "FAILED",
            Some("Backend unavailable: no answer within 700 ms"),
        ),
    ];
    for (operation, payload, status, info) in cases {
        let frame = json!({"message": "sendData",
            "data": [{"operationId": operation, "payload": payload}]});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let answer = next_message(&mut ws, "DataStatusEvent").await;
        assert_eq!(answer["operationId"], operation);
        assert_eq!(answer["status"], status, "{answer}");
        assert_eq!(answer["info"].as_str(), info, "{answer}");
        let post = posts.next("OnDataEvent").await;
        assert_eq!(post.path, "/rest/my_api/OnDataEvent");
        assert_eq!(post.body["sessionId"], session_id.as_str());
        assert_eq!(post.body["appKey"], "chatApp");
        assert_eq!(post.body["operationId"], operation);
        assert_eq!(post.body["payload"], payload);
        assert!(!post.body["nodeId"].as_str().unwrap().is_empty());
    }

    // The backend answers a client through REST.
    let (status, reply) = server
        .rest(
            "/rest-api/data/send",
            &json!({"sessionId": session_id, "operationId": "back-1",
                    "payload": {"reply": "hi there"}})
            .to_string(),
        )
        .await;
    assert_eq!((status, reply), (200, json!({"operationId": "back-1"})));
    let event = next_message(&mut ws, "OnDataEvent").await;
    assert_eq!(event["payload"], json!({"reply": "hi there"}));
    assert_eq!(event["sessionId"], session_id.as_str());
    assert_eq!(event["operationId"], "back-1");
    let (status, _) = server
        .rest(
            "/rest-api/data/send",
            r#"{"sessionId":"no-such-session","payload":1}"#,
        )
        .await;
    assert_eq!(status, 404);
    let (status, reply) = server
        .rest(
            "/rest-api/data/send",
            &json!({"sessionId": session_id}).to_string(),
        )
        .await;
    assert_eq!(
        (status, &reply["error"]),
        (400, &json!("payload is required"))
    );

    // publishStream and playStream: the backend's 403 fails the stream with its reason; an
    // allowed stream plays with media.
    let ep = endpoint();
    let client = session(&server).await;
    let client_connect = posts.next("connect").await;
    match client.publish(&ep, "forbidden-cam", synth()).await {
        Err(ClientError::Stream { status, info }) => {
            assert_eq!(status, StreamStatus::Failed);
            assert_eq!(info, "Refused by the backend (403)");
        }
        Err(other) => panic!("the backend's refusal did not fail the publish: {other}"),
        Ok(_) => panic!("the backend's refusal did not fail the publish"),
    }
    let post = posts.next("publishStream").await;
    assert_eq!(post.path, "/rest/my_api/publishStream");
    assert_eq!(post.body["name"], "forbidden-cam");
    let _publisher = client.publish(&ep, "cam", synth()).await.unwrap();
    let post = posts.next("publishStream").await;
    assert_eq!(
        (&post.body["name"], &post.body["published"]),
        (&json!("cam"), &json!(true))
    );
    let player = client.play(&ep, "cam").await.unwrap();
    let post = posts.next("playStream").await;
    assert_eq!(post.path, "/rest/my_api/playStream");
    assert_eq!(
        (&post.body["name"], &post.body["published"]),
        (&json!("cam"), &json!(false))
    );
    let got = eventually(Duration::from_secs(10), || async {
        (figures(&player).await.0 > 0).then_some(())
    })
    .await;
    assert!(got.is_some(), "no media after the hooks passed");

    // Notifications: sessions established, streams live, and the ends when they close.
    let client_session = client_connect.body["sessionId"].clone();
    let mut established = Vec::new();
    for _ in 0..2 {
        let post = posts.next("ConnectionStatusEvent").await;
        assert_eq!(post.body["status"], "ESTABLISHED");
        established.push(post.body["sessionId"].clone());
    }
    assert!(established.contains(&json!(session_id)) && established.contains(&client_session));
    let mut live = Vec::new();
    for _ in 0..2 {
        let post = posts.next("StreamStatusEvent").await;
        assert_eq!(post.body["sessionId"], client_session);
        assert_eq!(post.body["name"], "cam");
        live.push((
            post.body["status"].as_str().unwrap().to_owned(),
            post.body["mediaType"].as_str().unwrap().to_owned(),
        ));
    }
    live.sort();
    assert_eq!(
        live,
        [
            ("PLAYING".to_owned(), "play".to_owned()),
            ("PUBLISHING".to_owned(), "publish".to_owned())
        ]
    );
    drop(player);
    drop(_publisher);
    client.close();
    let mut ended = Vec::new();
    for _ in 0..2 {
        let post = posts.next("StreamStatusEvent").await;
        assert_eq!(post.body["sessionId"], client_session, "{:?}", post.body);
        ended.push(post.body["status"].as_str().unwrap().to_owned());
    }
    ended.sort();
    // A session that disconnects ends its streams as STOPPED.
    assert_eq!(ended, ["STOPPED", "STOPPED"]);
    let post = posts.next("ConnectionStatusEvent").await;
    assert_eq!(
        (&post.body["sessionId"], &post.body["status"]),
        (&client_session, &json!("DISCONNECTED"))
    );
    // The hooks went over a few kept-alive connections, not one each.
    let connections = connections.load(std::sync::atomic::Ordering::Relaxed);
    let total = posts.taken + posts.aside.len();
    assert!(
        connections * 2 < total,
        "{connections} connections for at least {total} posts"
    );

    let text = metrics(&server).await;
    for (result, n) in [("accepted", 1.0), ("failed", 2.0), ("sent", 1.0)] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            metric(&text, "relaycast_app_data_total", &[&label]),
            n,
            "{result}"
        );
    }
    for (method, result, n) in [
        ("connect", "passed", 2.0),
        ("connect", "refused", 1.0),
        ("OnDataEvent", "failed", 1.0),
        ("publishStream", "refused", 1.0),
        ("playStream", "passed", 1.0),
    ] {
        let labels = [
            format!("method=\"{method}\""),
            format!("result=\"{result}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            metric(&text, "relaycast_hook_calls_total", &labels),
            n,
            "{method} {result}"
        );
    }
    assert!(
        server
            .log_text()
            .contains("connection refused by the backend")
    );
}

/// An `https://` backend: trusted through `tls_ca_file`, its hooks go through; a server that
/// trusts only the system roots refuses to talk to it, and says so.
#[tokio::test]
async fn hooks_reach_an_https_backend_verified_against_the_configured_ca() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let cert = TestCert::generate();
    let (backend, mut posts) = https_hook_backend(&cert).await;
    let hooks = format!("[hooks]\nurl = \"https://{backend}/app\"\nmethods = [\"OnDataEvent\"]\n");
    let trusting = Server::with_config(
        &format!(
            "{hooks}tls_ca_file = {:?}\n",
            cert.cert_file.display().to_string()
        ),
        &[],
    );
    let untrusting = Server::with_config(&hooks, &[]);
    for (server, status) in [(&trusting, "ACCEPTED"), (&untrusting, "FAILED")] {
        let mut ws = raw_connect(server, Value::Null).await;
        next_message(&mut ws, "getUserData").await;
        let frame = json!({"message": "sendData",
            "data": [{"operationId": "op", "payload": {"over": "tls"}}]});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let answer = next_message(&mut ws, "DataStatusEvent").await;
        assert_eq!(answer["status"], status, "{answer}");
        if status == "ACCEPTED" {
            let post = posts.next("OnDataEvent").await;
            assert_eq!(post.path, "/app/OnDataEvent");
            assert_eq!(post.body["payload"], json!({"over": "tls"}));
        } else {
            let info = answer["info"].as_str().unwrap();
            assert!(info.starts_with("Backend unavailable: TLS: "), "{info}");
        }
    }
}

/// Each appKey's sessions go to its own backend when it has one (`[hooks.apps]`), the others
/// to the default one.
#[tokio::test]
async fn each_app_key_goes_to_its_own_backend() {
    let (default_backend, mut default_posts, _) = hook_backend().await;
    let (chat_backend, mut chat_posts, _) = hook_backend().await;
    let server = Server::with_config(
        &format!(
            "[hooks]\nurl = \"http://{default_backend}/app\"\nmethods = [\"connect\"]\n\
             [hooks.apps]\nchatApp = \"http://{chat_backend}/chat\"\n"
        ),
        &[],
    );
    let mut ws = raw_connect(&server, Value::Null).await;
    next_message(&mut ws, "getUserData").await;
    let post = chat_posts.next("connect").await;
    assert_eq!(
        (post.path.as_str(), &post.body["appKey"]),
        ("/chat/connect", &json!("chatApp"))
    );
    let _client = session(&server).await;
    let post = default_posts.next("connect").await;
    assert_eq!(
        (post.path.as_str(), &post.body["appKey"]),
        ("/app/connect", &json!("defaultApp"))
    );
    assert!(chat_posts.aside.is_empty() && default_posts.aside.is_empty());
}

/// An answer with a huge body still counts (its status), but its connection is not kept: the
/// server reads at most 64 KiB of a body it does not use.
#[tokio::test]
async fn a_huge_answer_body_is_not_read_and_its_connection_not_kept() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (backend, mut posts, connections) = hook_backend().await;
    let server = Server::with_config(
        &format!("[hooks]\nurl = \"http://{backend}/app\"\nmethods = [\"OnDataEvent\"]\n"),
        &[],
    );
    let mut ws = raw_connect(&server, Value::Null).await;
    next_message(&mut ws, "getUserData").await;
    let mut send = async |n: u32, big: bool| {
        let frame = json!({"message": "sendData",
            "data": [{"operationId": format!("op-{n}"), "payload": {"big": big}}]});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let answer = next_message(&mut ws, "DataStatusEvent").await;
        assert_eq!(answer["status"], "ACCEPTED", "{answer}");
        posts.next("OnDataEvent").await;
    };
    // Small answers share one connection; each huge one costs its connection.
    send(0, false).await;
    send(1, false).await;
    send(2, true).await;
    send(3, true).await;
    send(4, false).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "one kept connection, dropped after each huge answer"
    );
}

/// A graceful stop waits for the backend to take the last notifications: the sessions the
/// stop closes are reported DISCONNECTED before the process exits.
#[tokio::test]
async fn a_graceful_stop_delivers_the_last_notifications() {
    let (backend, mut posts, _) = hook_backend().await;
    let mut server = Server::with_config(
        &format!(
            "[hooks]\nurl = \"http://{backend}/app\"\n\
             methods = [\"ConnectionStatusEvent\"]\n"
        ),
        &[],
    );
    let mut ws = raw_connect(&server, Value::Null).await;
    let session = next_message(&mut ws, "getUserData").await["sessionId"].clone();
    assert_eq!(
        posts.next("ConnectionStatusEvent").await.body["status"],
        "ESTABLISHED"
    );
    let stopped = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let post = tokio::time::timeout(Duration::from_secs(1), posts.next("ConnectionStatusEvent"))
        .await
        .expect("the DISCONNECTED notification was posted before the server exited");
    assert_eq!(
        (&post.body["sessionId"], &post.body["status"]),
        (&session, &json!("DISCONNECTED"))
    );
}

/// A backend that answers 200 and closes each connection 50 ms later: the server's kept
/// connection is gone by its next hook, which must still arrive, once.
#[tokio::test]
async fn hooks_survive_a_backend_that_closes_idle_connections() {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = std::sync::Arc::clone(&counted);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // One request: headers, then the Content-Length body.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    let server = Server::with_config(
        &format!("[hooks]\nurl = \"http://{backend}/app\"\nmethods = [\"OnDataEvent\"]\n"),
        &[],
    );
    let mut ws = raw_connect(&server, Value::Null).await;
    next_message(&mut ws, "getUserData").await;
    for n in 0..3 {
        let frame = json!({"message": "sendData",
            "data": [{"operationId": format!("op-{n}"), "payload": {"n": n}}]});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let answer = next_message(&mut ws, "DataStatusEvent").await;
        assert_eq!(answer["status"], "ACCEPTED", "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn without_hooks_data_is_accepted_and_an_unreachable_backend_refuses() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    // No hooks: sendData is accepted, as WCS's default application does.
    let plain = Server::start(&[]);
    let mut ws = raw_connect(&plain, Value::Null).await;
    next_message(&mut ws, "getUserData").await;
    let frame = json!({"message": "sendData",
        "data": [{"operationId": "op", "payload": {"n": 1}}]});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let answer = next_message(&mut ws, "DataStatusEvent").await;
    assert_eq!(answer["status"], "ACCEPTED", "{answer}");

    // A backend nobody listens on: only the hooks listed are asked, and they refuse.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let broken = Server::with_config(
        &format!("[hooks]\nurl = \"http://127.0.0.1:{port}/app\"\nmethods = [\"OnDataEvent\"]\n"),
        &[],
    );
    let mut ws = raw_connect(&broken, Value::Null).await;
    next_message(&mut ws, "getUserData").await;
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let answer = next_message(&mut ws, "DataStatusEvent").await;
    assert_eq!(answer["status"], "FAILED", "{answer}");
    let info = answer["info"].as_str().unwrap();
    assert!(info.starts_with("Backend unavailable: "), "{info}");
    // The session goes on: it still answers a ping.
    ws.send(Message::text(r#"{"message":"ping","data":[]}"#))
        .await
        .unwrap();
    next_message(&mut ws, "pong").await;

    // With allow_unavailable, the same unreachable backend lets connections and data through,
    // and the failures are still counted.
    let lenient = Server::with_config(
        &format!(
            "[hooks]\nurl = \"http://127.0.0.1:{port}/app\"\n\
             methods = [\"connect\", \"OnDataEvent\"]\nallow_unavailable = true\n"
        ),
        &[],
    );
    let mut ws = raw_connect(&lenient, Value::Null).await;
    next_message(&mut ws, "getUserData").await;
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let answer = next_message(&mut ws, "DataStatusEvent").await;
    assert_eq!(answer["status"], "ACCEPTED", "{answer}");
    let text = metrics(&lenient).await;
    for method in ["connect", "OnDataEvent"] {
        let labels = [
            format!("method=\"{method}\""),
            "result=\"failed\"".to_owned(),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            metric(&text, "relaycast_hook_calls_total", &labels),
            1.0,
            "{method}"
        );
    }
    assert!(
        lenient
            .log_text()
            .contains("the request goes on (allow_unavailable)")
    );
}

#[tokio::test]
async fn sessions_per_ip_limit() {
    let server = Server::with_config("[limits]\nmax_sessions_per_ip = 2\n", &[]);
    let url = server.ws_url();
    let a = session(&server).await;
    let _b = session(&server).await;
    let e = connect(&url, ConnectionRequest::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        e,
        ClientError::Fail("Too many sessions from 127.0.0.1 (limit 2)".into())
    );
    a.close();
    let c = eventually(Duration::from_secs(5), || async {
        connect(&url, ConnectionRequest::default()).await.ok()
    })
    .await;
    assert!(c.is_some(), "a freed slot can be used again");
    assert!(server.log_text().contains("sessions per IP address limit"));
}

#[tokio::test]
async fn streams_players_and_peers_limits() {
    let server = Server::with_config(
        "[limits]\nmax_streams_per_session = 1\nmax_players_per_stream = 1\n",
        &[],
    );
    let ep = endpoint();
    let s = session(&server).await;
    let _publisher = s.publish(&ep, "one", synth()).await.unwrap();
    let e = s.publish(&ep, "two", synth()).await.err().unwrap();
    assert_eq!(
        e,
        ClientError::Stream {
            status: StreamStatus::Failed,
            info: "Too many streams in this session (limit 1)".into()
        }
    );
    let p1 = session(&server).await;
    let _player = p1.play(&ep, "one").await.expect("first player");
    let p2 = session(&server).await;
    let e = p2.play(&ep, "one").await.err().unwrap();
    assert_eq!(
        e,
        ClientError::Stream {
            status: StreamStatus::Failed,
            info: "Too many players of this stream (limit 1)".into()
        }
    );

    let full = Server::with_config("[limits]\nmax_peers_per_core = 1\n", &["--cores", "1"]);
    let s = session(&full).await;
    let _publisher = s.publish(&ep, "x", synth()).await.unwrap();
    let viewer = session(&full).await;
    let e = viewer.play(&ep, "x").await.err().unwrap();
    assert_eq!(
        e,
        ClientError::Stream {
            status: StreamStatus::Failed,
            info: "Server is full (limit 1 peers per core)".into()
        }
    );
    let text = metrics(&full).await;
    assert_eq!(
        metric(
            &text,
            "relaycast_requests_refused_total",
            &["kind=\"peers_per_core\""]
        ),
        1.0
    );
    assert!(full.log_text().contains("every core is full"));
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

/// Runs `relaycast --config <toml> --print-config`: exit code, stdout, stderr.
fn print_config(toml: &str) -> (i32, String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("relaycast-print-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .arg("--config")
        .arg(&path)
        .arg("--print-config")
        .output()
        .expect("run relaycast");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_the_key() {
    let cert = TestCert::generate();
    let garbage = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let cases: Vec<(String, &str)> = vec![
        ("[tls]\ncert = \"x\"\n".into(), "cert"),
        (
            format!(
                "[tls]\ncert_file = {:?}\n",
                cert.cert_file.display().to_string()
            ),
            "tls.key_file",
        ),
        (
            "[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n".into(),
            "/nonexistent/c.pem",
        ),
        (
            format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                garbage.display().to_string(),
                cert.key_file.display().to_string()
            ),
            "tls.cert_file",
        ),
        (
            "[auth]\nrest_user = \"admin\"\n".into(),
            "auth.rest_password",
        ),
        ("[auth]\nmetrics = true\n".into(), "auth.metrics"),
        (
            "[auth]\nrest_user = \"a:b\"\nrest_password = \"p\"\n".into(),
            "auth.rest_user",
        ),
        (
            "[limits]\nmax_streams_per_session = 0\n".into(),
            "limits.max_streams_per_session",
        ),
        (
            "[limits]\nmax_sessions_per_ip = -1\n".into(),
            "max_sessions_per_ip",
        ),
        (
            "[relay]\ntls_ca_file = \"/nonexistent/ca.pem\"\n".into(),
            "relay.tls_ca_file",
        ),
        (
            "[relay]\ntls_insecure = true\ntls_ca_file = \"/x\"\n".into(),
            "relay.tls_insecure",
        ),
        (
            "[media]\nkeyframe_min_interval_ms = 100\nkeyframe_answered_interval_ms = 300\n".into(),
            "media.keyframe_answered_interval_ms",
        ),
    ];
    for (toml, key) in cases {
        let (code, _, stderr) = print_config(&toml);
        assert_eq!(code, 2, "{toml:?} must be refused: {stderr}");
        assert!(
            stderr.contains(key),
            "{toml:?}: {stderr:?} should name {key}"
        );
    }
    let (code, stdout, stderr) = print_config(&format!(
        "{}[auth]\nrest_token = \"t\"\n[limits]\nmax_players_per_stream = 7\n",
        cert.toml()
    ));
    assert_eq!(code, 0, "{stderr}");
    for key in [
        "[tls]",
        "wss_port = 0",
        "[auth]",
        "rest_token = \"<redacted>\"",
        "max_players_per_stream = 7",
        "max_messages_per_sec",
        "tls_insecure = false",
    ] {
        assert!(stdout.contains(key), "{key} missing from:\n{stdout}");
    }
    // Secrets are never printed.
    assert!(!stdout.contains("rest_token = \"t\""), "{stdout}");
}

#[test]
fn the_example_config_is_valid_and_complete() {
    let example = include_str!("../examples/relaycast.toml");
    let (code, stdout, stderr) = print_config(example);
    assert_eq!(code, 0, "examples/relaycast.toml: {stderr}");
    // Every key printed by --print-config is documented (set or commented) in the example.
    for line in stdout.lines() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        assert!(
            example.contains(&format!("{key} =")),
            "examples/relaycast.toml does not mention {key}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and health
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_move_with_traffic() {
    let server = Server::start(&[]);
    let before = metrics(&server).await;
    assert_eq!(metric(&before, "relaycast_streams", &[]), 0.0);
    assert_eq!(
        metric(
            &before,
            "relaycast_core_packets_total",
            &["direction=\"in\""]
        ),
        0.0
    );
    assert!(
        before.contains("relaycast_core_peers{core=\"1\"}"),
        "{before}"
    );
    assert_eq!(request(server.rest, "GET", "/health", "").await.0, 200);
    assert_eq!(request(server.rest, "GET", "/health/live", "").await.0, 200);

    let ep = endpoint();
    let s = session(&server).await;
    let _publisher = s.publish(&ep, "m", synth()).await.unwrap();
    let v = session(&server).await;
    let _player = v.play(&ep, "m").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = metrics(&server).await;
    assert_eq!(metric(&during, "relaycast_streams", &[]), 1.0);
    assert_eq!(metric(&during, "relaycast_sessions", &[]), 2.0);
    assert_eq!(
        metric(&during, "relaycast_signalling_connections", &[]),
        2.0
    );
    assert_eq!(
        metric(&during, "relaycast_media_sessions", &["kind=\"player\""]),
        1.0
    );
    assert_eq!(metric(&during, "relaycast_core_peers", &[]), 2.0);
    assert_eq!(
        metric(&during, "relaycast_streams_published_total", &[]),
        1.0
    );
    assert_eq!(metric(&during, "relaycast_streams_played_total", &[]), 1.0);
    let rx = metric(
        &during,
        "relaycast_core_packets_total",
        &["direction=\"in\""],
    );
    let tx = metric(
        &during,
        "relaycast_core_packets_total",
        &["direction=\"out\""],
    );
    let bytes = metric(&during, "relaycast_core_bytes_total", &["direction=\"in\""]);
    let forwarded = metric(&during, "relaycast_core_forwarded_packets_total", &[]);
    assert!(rx > 100.0 && tx > 100.0, "rx {rx} tx {tx}");
    assert!(bytes > rx * 100.0, "bytes in {bytes}");
    assert!(forwarded > 100.0, "forwarded {forwarded}");
    // Every datagram out left in a message (several per message with GSO); every datagram
    // in arrived on a wake-up.
    let messages = metric(&during, "relaycast_core_send_messages_total", &[]);
    let wakeups = metric(&during, "relaycast_core_receive_wakeups_total", &[]);
    assert!(
        messages > 0.0 && messages <= tx,
        "messages {messages} tx {tx}"
    );
    assert!(wakeups > 0.0 && wakeups <= rx, "wake-ups {wakeups} rx {rx}");
    assert!(
        metric(&during, "relaycast_core_keyframe_requests_total", &[]) >= 0.0
            && during
                .contains("relaycast_core_dropped_packets_total{core=\"0\",reason=\"ring_full\"}")
            && during.contains("relaycast_core_nacks_total{core=\"1\",direction=\"in\"}")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = metrics(&server).await;
    assert!(
        metric(
            &later,
            "relaycast_core_packets_total",
            &["direction=\"in\""]
        ) > rx
    );

    drop(_player);
    v.close();
    let ended = eventually(Duration::from_secs(5), || async {
        let text = metrics(&server).await;
        (metric(&text, "relaycast_media_sessions", &["kind=\"player\""]) == 0.0).then_some(text)
    })
    .await
    .expect("the player's end shows");
    assert_eq!(
        metric(
            &ended,
            "relaycast_stream_ends_total",
            &["status=\"STOPPED\""]
        ),
        1.0
    );
    let (code, _) = server.rest("/rest-api/stream/nope", "").await;
    assert_eq!(code, 404);
    let text = metrics(&server).await;
    assert!(metric(&text, "relaycast_rest_requests_total", &["status=\"404\""]) >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// Garbage on the media ports
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift), so a failing spray can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn stun_binding(rng: &mut Rng, username: &[u8], declared_extra: u16) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username);
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    // A MESSAGE-INTEGRITY that cannot be right.
    attrs.extend_from_slice(&0x0008u16.to_be_bytes());
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&rng.bytes(20));
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16 + declared_extra).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&rng.bytes(12));
    m.extend_from_slice(&attrs);
    m
}

/// One hostile datagram: garbage, truncated or forged STUN, DTLS, RTP or RTCP.
fn hostile(rng: &mut Rng, ufrags: &[String]) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let n = rng.below(1500);
            rng.bytes(n)
        }
        1 => Vec::new(),
        2 => {
            // A binding request naming a real server ufrag, with a forged integrity.
            let ufrag = &ufrags[rng.below(ufrags.len())];
            stun_binding(rng, format!("{ufrag}:evil").as_bytes(), 0)
        }
        3 => {
            let mut m = stun_binding(rng, b"nobody:evil", 0);
            let cut = rng.below(m.len());
            m.truncate(cut);
            m
        }
        4 => {
            let extra = 4 + rng.below(400) as u16;
            let len = rng.below(600);
            let user = rng.bytes(len);
            stun_binding(rng, &user, extra)
        }
        5 => {
            // DTLS records: handshake, alert, application data; lengths that lie.
            let mut m = vec![[20u8, 21, 22, 23][rng.below(4)], 0xfe, 0xfd];
            m.extend_from_slice(&rng.bytes(8));
            m.extend_from_slice(&(rng.below(20_000) as u16).to_be_bytes());
            let n = rng.below(300);
            m.extend_from_slice(&rng.bytes(n));
            m
        }
        6 => {
            // A DTLS ClientHello header, truncated anywhere.
            let mut m = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 1, 0, 0, 48];
            m.extend_from_slice(&rng.bytes(60));
            let cut = rng.below(m.len());
            m.truncate(cut);
            m
        }
        7 => {
            // RTP with the stream's likely payload types and random SSRCs.
            let pt = [96u8, 97, 100, 102, 111, 0x80 | 96][rng.below(6)];
            let mut m = vec![0x80 | (rng.next() as u8 & 0x3f), pt];
            let n = 10 + rng.below(1200);
            m.extend_from_slice(&rng.bytes(n));
            m
        }
        8 => {
            // RTCP SR/RR/SDES/BYE/RTPFB/PSFB with lengths that lie.
            let mut m = vec![0x80 | (rng.next() as u8 & 0x1f), 200 + rng.below(7) as u8];
            m.extend_from_slice(&(rng.below(1000) as u16).to_be_bytes());
            let n = rng.below(100);
            m.extend_from_slice(&rng.bytes(n));
            m
        }
        _ => {
            // Short headers of every class.
            let first = [0u8, 1, 20, 23, 64, 127, 128, 191, 255][rng.below(9)];
            let n = rng.below(12);
            let mut m = vec![first];
            m.extend_from_slice(&rng.bytes(n));
            m
        }
    }
}

/// The ICE ufrags in an answer SDP's `a=ice-ufrag:` lines.
fn ufrags_in(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn media_ports_survive_a_spray_of_broken_and_forged_datagrams() {
    let server = Server::start(&[]);
    let ep = endpoint();
    let s = session(&server).await;
    let publisher = s.publish(&ep, "target", synth()).await.unwrap();
    let v = session(&server).await;
    let player = v.play(&ep, "target").await.unwrap();
    // A server ufrag to forge STUN with: a separate play whose answer we read.
    let probe_session = session(&server).await;
    let (_handle, answer) = probe_session
        .negotiate("target", &fake_offer(), false, Value::Null)
        .await
        .map_or_else(|_| (None, String::new()), |(h, a)| (Some(h), a));
    let mut ufrags = ufrags_in(&answer);
    if ufrags.is_empty() {
        ufrags.push("abcd".into());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (media_before, _) = figures(&player).await;

    // Bounded: at most 4000 datagrams per port, at most 4 s, loopback only.
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let mut sent = 0usize;
    'spray: for round in 0..4000 {
        for port in &server.media {
            assert!(port.ip().is_loopback());
            let datagram = hostile(&mut rng, &ufrags);
            let _ = socket.send_to(&datagram, port).await;
            sent += 1;
        }
        if round % 100 == 99 {
            // About 20 000 datagrams a second: hostile, not a flood the kernel would drop.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if started.elapsed() > Duration::from_secs(4) {
            break 'spray;
        }
    }
    eprintln!("sprayed {sent} datagrams in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (code, _) = server.rest("/rest-api/server/info", "").await;
    assert_eq!(code, 200, "the server still answers");
    assert_eq!(publisher.handle.status(), StreamStatus::Publishing);
    assert_eq!(player.handle.status(), StreamStatus::Playing);
    let (media_after, loss) = figures(&player).await;
    eprintln!("player: {media_before} -> {media_after} packets, loss {loss:.3}%");
    assert!(
        media_after > media_before + 100,
        "media kept flowing: {media_before} -> {media_after}"
    );
    assert!(loss < 1.0, "the player lost {loss:.3}% during the spray");
    let text = metrics(&server).await;
    let dropped = metric(&text, "relaycast_core_dropped_packets_total", &[]);
    assert!(dropped > 0.0, "the spray shows as dropped datagrams");
    // A new player still works after the spray.
    let late = session(&server).await;
    let late_player = late
        .play(&ep, "target")
        .await
        .expect("play after the spray");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(figures(&late_player).await.0 > 20);
}

/// A minimal browser-like recvonly offer (its DTLS fingerprint is never used).
fn fake_offer() -> String {
    let fp = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:spry\r\n\
         a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 {fp}\r\n\
         a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Graceful stop with relays
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_ends_relays_on_the_remote_side_within_5_seconds() {
    let mut origin = Server::start(&[]);
    let edge = Server::start(&[]);
    let ep = endpoint();
    let s = session(&origin).await;
    let mut publisher = s.publish(&ep, "cam", synth()).await.unwrap();
    let body =
        json!({"uri": edge.ws_url(), "localStreamName": "cam", "remoteStreamName": "cam-pushed"});
    let (code, reply) = origin.rest("/rest-api/pull/push", &body.to_string()).await;
    assert_eq!(code, 200, "{reply}");
    let viewers = session(&edge).await;
    let mut player = viewers
        .play(&ep, "cam-pushed")
        .await
        .expect("play the pushed stream");

    let started = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        let status = origin.terminate(Duration::from_secs(5));
        (status, origin)
    });
    let p = publisher
        .handle
        .wait_for(&[StreamStatus::Unpublished], Duration::from_secs(5))
        .await
        .expect("the publisher gets UNPUBLISHED");
    assert_eq!(p.status, StreamStatus::Unpublished);
    let e = ended(
        &mut player.handle,
        Duration::from_secs(5),
        "the remote player of the pushed stream is stopped",
    )
    .await;
    assert_eq!(
        e.info.as_deref(),
        Some("Stopped by publisher stop"),
        "{e:?}"
    );
    let (status, _origin) = stopped.await.unwrap();
    let status = status.expect("exits within 5 s");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The edge no longer lists the pushed stream.
    let (code, _) = edge
        .rest("/rest-api/stream/find", r#"{"name":"cam-pushed"}"#)
        .await;
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------------
// Resource limits, CPUs and start-up errors
// ---------------------------------------------------------------------------------------------

/// The soft and hard "Max open files" of a process, from /proc/PID/limits.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn a_low_soft_open_file_limit_is_raised_to_the_hard_one() {
    // Linux's usual soft limit of 1,024 would stop a server at about a thousand players.
    let server = Server::start_with_limit(&[], libc::RLIMIT_NOFILE, 256, 8192);
    assert_eq!(open_file_limits(server.pid()), (8192, 8192));
    let _s = session(&server).await;
    let log = server.log_text();
    assert!(
        log.contains("open-file limit raised to the hard limit") && log.contains("to=8192"),
        "{log}"
    );
    assert!(!log.contains("low open-file limit: at most about"), "{log}");
}

#[tokio::test]
async fn out_of_descriptors_the_server_says_so_once_and_serves_again_once_some_close() {
    const LIMIT: u64 = 128;
    let server = Server::start_with_limit(&[], libc::RLIMIT_NOFILE, LIMIT, LIMIT);
    assert!(
        server
            .log_text()
            .contains("low open-file limit: at most about"),
        "a limit this low is said at start: {}",
        server.log_text()
    );
    // More connections than the process has descriptors left: the kernel completes them
    // in the listen backlog, the server accepts until it runs out.
    let hogs: Vec<std::net::TcpStream> = (0..LIMIT)
        .map(|_| std::net::TcpStream::connect(server.ws).expect("connect"))
        .collect();
    let failing = server
        .log_once_it_shows("accept failed: new connections wait")
        .await;
    assert!(
        failing.is_some(),
        "no accept failure: {}",
        server.log_text()
    );
    // A second of failed tries, one every 50 ms: still one line.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = server.log_text();
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
    assert!(!log.contains("accepts still failing"), "{log}");

    drop(hogs);
    let s = tokio::time::timeout(Duration::from_secs(10), session(&server))
        .await
        .expect("a session once the idle connections closed");
    drop(s);
    let again = server
        .log_once_it_shows("accepting connections again")
        .await;
    assert!(again.is_some(), "{}", server.log_text());
}

#[tokio::test]
async fn a_low_soft_locked_memory_limit_is_raised_for_io_uring() {
    // 64 KiB, the old default, is below what a core's io_uring registers; the hard limit
    // stays this process's (raising it needs privilege).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) },
        0
    );
    assert!(
        limit.rlim_max >= 2 << 20,
        "this test needs a hard limit of 2 MiB or more"
    );
    let server = Server::start_with_limit(&[], libc::RLIMIT_MEMLOCK, 64 << 10, limit.rlim_max);
    let _s = session(&server).await;
    assert!(
        server
            .log_text()
            .contains("locked-memory limit raised to the hard limit"),
        "{}",
        server.log_text()
    );
}

#[tokio::test]
async fn cores_are_pinned_within_the_cpus_the_server_was_started_on() {
    // As `taskset -c LAST relaycast`: the core must not go to CPU 0.
    let last = relaycast_dataplane::process::allowed_cpus()
        .unwrap()
        .into_iter()
        .max()
        .unwrap();
    let server = Server::start_on_cpu(&["--cores", "2"], last);
    let _s = session(&server).await;
    let mut cores = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("rc-core") {
            continue;
        }
        cores += 1;
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        assert_eq!(allowed, last.to_string(), "{} on {allowed}", comm.trim());
    }
    assert!(cores >= 2, "{cores} core threads");
    let log = server.log_text();
    assert!(log.contains(&format!("cpus=[{last}, {last}]")), "{log}");
    assert!(
        log.contains("more data-plane cores than CPUs this process may run on"),
        "{log}"
    );
}

#[test]
fn a_media_port_in_use_stops_the_server_with_one_clear_line() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    let port = taken.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args(Server::args(&["--cores", "1", "--media-port-base", &port]))
        .output()
        .expect("run relaycast");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("relaycast: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(
        line,
        format!(
            "relaycast: could not start the data plane: cannot bind UDP socket to \
             127.0.0.1:{port}: Address already in use (os error 98)"
        )
    );
}

#[test]
fn too_little_locked_memory_stops_the_server_with_what_to_raise() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relaycast"));
    command.args(Server::args(&["--cores", "1"]));
    common::set_limit(&mut command, libc::RLIMIT_MEMLOCK, 64 << 10, 64 << 10);
    let out = command.output().expect("run relaycast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("io_uring needs a locked-memory limit of at least 512 KiB")
            && stderr.contains("ulimit -l"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never ready"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn text_logs_written_to_a_file_carry_no_terminal_colour_codes() {
    let server = Server::start(&[]);
    let _s = session(&server).await;
    let text = server
        .log_once_it_shows("session established")
        .await
        .expect("a session line in the log");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a log file: {text:?}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("session established"))
        .unwrap();
    assert!(line.contains(" INFO "), "{line}");
}

#[tokio::test]
async fn json_logs_carry_one_line_per_lifecycle_event_with_ids() {
    let server = Server::start(&["--log-format", "json"]);
    let ep = endpoint();
    let s = session(&server).await;
    let publisher = s.publish(&ep, "logged", synth()).await.unwrap();
    let id = publisher.handle.media_session_id().to_owned();
    publisher
        .stop(Duration::from_secs(5))
        .await
        .expect("unpublish");
    let lines = eventually(Duration::from_secs(5), || async {
        let lines: Vec<Value> = server
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["media_session"] == json!(id))
            .collect();
        (lines.len() >= 3).then_some(lines)
    })
    .await
    .expect("lifecycle lines for the media session");
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|v| v["fields"]["message"].as_str())
        .collect();
    for want in ["publish requested", "stream live", "stream ended"] {
        assert!(messages.contains(&want), "{want} missing from {messages:?}");
    }
    let ended = lines
        .iter()
        .find(|v| v["fields"]["message"] == json!("stream ended"))
        .unwrap();
    assert_eq!(ended["fields"]["stream"], json!("logged"));
    assert_eq!(ended["fields"]["status"], json!("UNPUBLISHED"));
    assert_eq!(ended["fields"]["info"], json!("Stopped by user"));
    let requested = lines
        .iter()
        .find(|v| v["fields"]["message"] == json!("publish requested"))
        .unwrap();
    assert!(
        requested["fields"]["session"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}
