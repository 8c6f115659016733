//! Server-to-server relays between real `relaycast` processes on loopback: push and pull
//! with fan-out on the far side, chains, terminate from either end, the source ending,
//! bad requests, an unreachable remote, and self-healing across a remote restart.

mod common;

use std::time::{Duration, Instant};

use common::{
    Server, ended, endpoint, eventually, hook_backend, keyframe_requests, metric, metrics,
    player_figures, session,
};
use relaycast_controlplane::client::{ClientStream, Session, StreamSignal};
use relaycast_controlplane::protocol::{StreamStatus, TrackState};
use relaycast_dataplane::synth::{SynthConfig, VideoCodec};
use serde_json::{Value, json};

fn synth() -> SynthConfig {
    SynthConfig {
        video: Some(VideoCodec::Vp8),
        video_bitrate_bps: 1_500_000,
        ..SynthConfig::default()
    }
}

async fn relay(server: &Server, kind: &str, body: Value) -> (u16, Value) {
    let started = Instant::now();
    let reply = server
        .rest(&format!("/rest-api/pull/{kind}"), &body.to_string())
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "/pull/{kind} took {:?}",
        started.elapsed()
    );
    reply
}

/// Pushes local stream `name` of `from` to `to` under the same name; the relay must be up.
async fn push(from: &Server, to: &Server, name: &str) -> Value {
    let (code, body) = relay(
        from,
        "push",
        json!({"uri": to.ws_url(), "localStreamName": name}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], json!("PUBLISHING"), "{body}");
    body
}

/// Waits for the relay of `server` to report its link, and checks that its media flows in
/// `direction` (`bitrateOut` for a push, `bitrateIn` for a pull) at about the source's rate,
/// and that `/metrics` shows the same relay.
async fn check_link(server: &Server, direction: &str) -> Value {
    let link = eventually(Duration::from_secs(8), || async {
        let relays = relay_status(server).await;
        let link = relays.first()?.get("link")?.clone();
        (link[direction].as_u64()? > 0).then_some(link)
    })
    .await;
    let Some(link) = link else {
        panic!(
            "no {direction} on the relay link: {:?}",
            relay_status(server).await
        );
    };
    eprintln!("relay link: {link}");
    let bits = link[direction].as_u64().unwrap();
    assert!(
        (500_000..5_000_000).contains(&bits),
        "a 1.5 Mbit/s source relayed at {bits} bit/s: {link}"
    );
    let way = if direction == "bitrateOut" {
        "out"
    } else {
        "in"
    };
    let text = metrics(server).await;
    let label = format!("direction=\"{way}\"");
    let value = metric(&text, "relaycast_relay_bitrate_bits_per_second", &[&label]);
    assert!(
        value > 100_000.0,
        "relay bitrate {way} in /metrics: {value}\n{text}"
    );
    link
}

async fn relay_status(server: &Server) -> Vec<Value> {
    let (code, body) = server.rest("/rest-api/pull/find_all", "").await;
    if code == 404 {
        return Vec::new();
    }
    assert_eq!(code, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

/// Plays `name` on `server` with `n` players and checks they all receive media.
async fn check_players(label: &str, players: &[ClientStream]) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut p99 = Vec::new();
    for (i, player) in players.iter().enumerate() {
        let (media, loss, p50, p) = player_figures(player).await;
        eprintln!("{label} player {i}: {media} packets, loss {loss:.3}%, p50 {p50} us, p99 {p} us");
        assert!(media > 100, "{label} player {i} received {media} packets");
        assert!(loss < 1.0, "{label} player {i} lost {loss:.3}%");
        p99.push(p);
    }
    p99.sort_unstable();
    eprintln!(
        "{label}: median p99 latency {} us over {} players",
        p99[p99.len() / 2],
        players.len()
    );
}

#[tokio::test]
async fn push_a_to_b_with_ten_players_on_b() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let publisher = pub_session.publish(&ep, "test", synth()).await.unwrap();

    let (code, body) = relay(
        &a,
        "push",
        json!({"uri": b.ws_url(), "localStreamName": "test", "remoteStreamName": "test"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], json!("PUBLISHING"), "{body}");
    assert!(body["remoteMediaSessionId"].is_string(), "{body}");

    // B lists the pushed stream as an ordinary published stream.
    let (code, streams) = b.rest("/rest-api/stream/find", r#"{"name":"test"}"#).await;
    assert_eq!(code, 200, "{streams}");
    assert_eq!(streams[0]["status"], json!("PUBLISHING"));

    // A player joining on B makes the original publisher on A send a keyframe: the request
    // crosses the hop.
    let requests = || keyframe_requests(&publisher);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = requests().await;
    let viewers = session(&b).await;
    let mut players = Vec::new();
    players.push(viewers.play(&ep, "test").await.expect("play on B"));
    let asked = eventually(Duration::from_secs(2), || async {
        (requests().await > before).then_some(())
    })
    .await;
    assert!(asked.is_some(), "no keyframe request reached A's publisher");
    for _ in 1..10 {
        players.push(viewers.play(&ep, "test").await.expect("play on B"));
    }
    check_players("push A->B", &players).await;

    // A's relay reports its link: the stream going out, and B's receiver reports giving the
    // round-trip time and loss.
    let link = check_link(&a, "bitrateOut").await;
    assert!(
        link["rttMs"].as_f64().is_some_and(|ms| ms < 100.0),
        "{link}"
    );
    assert!(link["lossPct"].as_f64().is_some_and(|l| l < 1.0), "{link}");

    // A duplicate push is refused.
    let (code, body) = relay(
        &a,
        "push",
        json!({"uri": b.ws_url(), "localStreamName": "test", "remoteStreamName": "test"}),
    )
    .await;
    assert_eq!(code, 409, "{body}");

    // The source ends: the relay ends, B unpublishes, B's players stop.
    publisher.stop(Duration::from_secs(2)).await.unwrap();
    for player in &mut players {
        let e = ended(
            &mut player.handle,
            Duration::from_secs(5),
            "B's players stop when A's source ends",
        )
        .await;
        assert_eq!(e.info.as_deref(), Some("Stopped by publisher stop"));
    }
    let gone = eventually(Duration::from_secs(3), || async {
        let (code, _) = b.rest("/rest-api/stream/find", r#"{"name":"test"}"#).await;
        (code == 404).then_some(())
    })
    .await;
    assert!(gone.is_some(), "B still lists the stream");
    let ended = eventually(Duration::from_secs(3), || async {
        let relays = relay_status(&a).await;
        relays
            .iter()
            .all(|r| r["status"] != json!("PUBLISHING"))
            .then_some(())
    })
    .await;
    assert!(ended.is_some(), "{:?}", relay_status(&a).await);
}

#[tokio::test]
async fn pull_a_to_b_with_ten_players_then_terminate_and_remote_end() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let publisher = pub_session.publish(&ep, "cam", synth()).await.unwrap();

    // A player on B before the relay exists gets `Stream not found`.
    let viewers = session(&b).await;
    assert!(viewers.play(&ep, "cam-b").await.is_err());

    let (code, body) = relay(
        &b,
        "pull",
        json!({"uri": a.ws_url(), "remoteStreamName": "cam", "localStreamName": "cam-b"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], json!("PLAYING"), "{body}");

    let mut players = Vec::new();
    for _ in 0..10 {
        players.push(
            viewers
                .play(&ep, "cam-b")
                .await
                .expect("play the pulled stream"),
        );
    }
    check_players("pull A->B", &players).await;
    let link = check_link(&b, "bitrateIn").await;
    assert!(link["lossPct"].as_f64().is_some_and(|l| l < 1.0), "{link}");

    // Local name in use: 409.
    let (code, body) = relay(
        &b,
        "pull",
        json!({"uri": a.ws_url(), "remoteStreamName": "cam", "localStreamName": "cam-b"}),
    )
    .await;
    assert_eq!(code, 409, "{body}");

    // Terminate on B: A sees its player stop; B's players stop.
    let (code, body) = b
        .rest("/rest-api/pull/terminate", r#"{"localStreamName":"cam-b"}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    for player in &mut players {
        let e = ended(
            &mut player.handle,
            Duration::from_secs(5),
            "players of a terminated pull stop",
        )
        .await;
        assert_eq!(e.status, StreamStatus::Stopped);
    }
    let a_players = eventually(Duration::from_secs(3), || async {
        let (code, _) = a
            .rest(
                "/rest-api/stream/find",
                r#"{"name":"cam","published":false}"#,
            )
            .await;
        (code == 404).then_some(())
    })
    .await;
    assert!(a_players.is_some(), "A still has the relay's player");
    assert!(relay_status(&b).await.is_empty());

    // Pull again, then the remote stream ends: B's players get STOPPED.
    let (code, body) = relay(
        &b,
        "pull",
        json!({"uri": a.ws_url(), "remoteStreamName": "cam", "localStreamName": "cam-b"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut player = viewers.play(&ep, "cam-b").await.unwrap();
    publisher.stop(Duration::from_secs(2)).await.unwrap();
    let e = ended(
        &mut player.handle,
        Duration::from_secs(5),
        "B's player stops when A's stream ends",
    )
    .await;
    assert_eq!(e.status, StreamStatus::Stopped);
    assert_eq!(e.info.as_deref(), Some("Stopped by publisher stop"));
}

#[tokio::test]
async fn chains_push_push_and_push_pull() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let c = Server::start(&[]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let _publisher = pub_session.publish(&ep, "chain", synth()).await.unwrap();

    push(&a, &b, "chain").await;
    push(&b, &c, "chain").await;
    let (code, body) = relay(
        &c,
        "pull",
        json!({"uri": b.ws_url(), "remoteStreamName": "chain", "localStreamName": "chain2"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    let viewers = session(&c).await;
    let players = vec![
        viewers
            .play(&ep, "chain")
            .await
            .expect("play after push, push"),
        viewers
            .play(&ep, "chain2")
            .await
            .expect("play after push, pull"),
    ];
    check_players("chain A->B->C", &players).await;

    // A loop back to the origin is refused, not relayed forever.
    let (code, body) = relay(
        &c,
        "push",
        json!({"uri": a.ws_url(), "localStreamName": "chain", "remoteStreamName": "looped"}),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["status"], json!("FAILED"), "{body}");
    assert!(
        body["info"].as_str().unwrap_or("").contains("Relay loop"),
        "{body}"
    );
}

/// The next publisher's stream event (`notifyStreamEvent`, skipping the server's own
/// `resize`) a player gets within 5 s: (type, payload).
async fn next_event(player: &mut ClientStream, what: &str) -> (String, Value) {
    let wait = async {
        loop {
            match player.handle.next_signal().await {
                Ok(StreamSignal::Event(e)) if e["type"] == "resize" => {}
                Ok(StreamSignal::Event(e)) => {
                    return (
                        e["type"].as_str().unwrap_or("").to_owned(),
                        e["payload"].clone(),
                    );
                }
                Ok(StreamSignal::Status(s)) => panic!("{what}: status {} instead", s.status),
                Err(e) => panic!("{what}: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: no stream event within 5 s"))
}

/// The (audio, video) mute state a new player of `name` on `viewers` gets with PLAYING.
async fn mute_state(viewers: &Session, name: &str) -> (bool, bool) {
    let player = viewers.play(&endpoint(), name).await.expect("play");
    let status = player.handle.last_status().expect("a PLAYING status");
    let muted = |t: Option<TrackState>| t.expect("a player's status has the track state").muted;
    let state = (muted(status.audio_state), muted(status.video_state));
    player
        .stop(Duration::from_secs(2))
        .await
        .expect("stop the player");
    state
}

/// A publisher's stream events (mute, unmute, `sendData`) cross push and pull relays, and a
/// relay brings the mute state along when it starts: a player joining far away later sees
/// the stream muted.
#[tokio::test]
async fn stream_events_cross_push_and_pull_relays() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let c = Server::start(&[]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let publisher = pub_session.publish(&ep, "ev", synth()).await.unwrap();
    let on_a = session(&a).await;
    let mut local = on_a.play(&ep, "ev").await.unwrap();

    // Muted before any relay exists: A's player sees it, so A has it.
    publisher
        .handle
        .send_stream_event("videoMuted", None)
        .unwrap();
    assert_eq!(next_event(&mut local, "A's player").await.0, "videoMuted");

    push(&a, &b, "ev").await;
    let on_b = session(&b).await;
    let synced = eventually(Duration::from_secs(5), || async {
        (mute_state(&on_b, "ev").await == (false, true)).then_some(())
    });
    assert!(
        synced.await.is_some(),
        "the push relay did not bring the mute state to B"
    );
    push(&b, &c, "ev").await;
    let (code, body) = relay(
        &c,
        "pull",
        json!({"uri": b.ws_url(), "remoteStreamName": "ev", "localStreamName": "ev2"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let viewers = session(&c).await;
    let synced = eventually(Duration::from_secs(5), || async {
        let both = (
            mute_state(&viewers, "ev").await,
            mute_state(&viewers, "ev2").await,
        );
        (both == ((false, true), (false, true))).then_some(())
    });
    assert!(
        synced.await.is_some(),
        "the mute state did not reach C (push, push and push, pull)"
    );

    let mut pushed = viewers.play(&ep, "ev").await.unwrap();
    let mut pulled = viewers.play(&ep, "ev2").await.unwrap();
    publisher
        .handle
        .send_stream_event("audioMuted", None)
        .unwrap();
    let data = json!({"number": 33, "list": [1, "two"], "nested": {"ok": true}});
    publisher
        .handle
        .send_stream_event("data", Some(&data))
        .unwrap();
    publisher
        .handle
        .send_stream_event("videoUnmuted", None)
        .unwrap();
    for (label, player) in [("push, push", &mut pushed), ("push, pull", &mut pulled)] {
        assert_eq!(
            next_event(player, label).await,
            ("audioMuted".into(), json!({}))
        );
        assert_eq!(
            next_event(player, label).await,
            ("data".into(), data.clone())
        );
        assert_eq!(
            next_event(player, label).await,
            ("videoUnmuted".into(), json!({}))
        );
    }
    // A player joining now sees the latest state, on both paths.
    assert_eq!(mute_state(&viewers, "ev").await, (true, false));
    assert_eq!(mute_state(&viewers, "ev2").await, (true, false));
    // Each server counts the events its streams passed on: A's one stream, C's two.
    let data = ["type=\"data\""];
    let counted = |text: String| metric(&text, "relaycast_stream_events_total", &data);
    assert_eq!(counted(metrics(&a).await), 1.0);
    assert_eq!(counted(metrics(&c).await), 2.0);
    // Media kept flowing to the relayed players.
    check_players("events A->B->C", &[pushed, pulled]).await;
}

#[tokio::test]
async fn bad_requests_and_unreachable_remote() {
    let a = Server::start(&[]);
    let ep = endpoint();
    let s = session(&a).await;
    let _publisher = s.publish(&ep, "here", synth()).await.unwrap();

    for (kind, body, want) in [
        ("push", "{oops", 400),
        ("push", r#"{"localStreamName":"here"}"#, 400),
        (
            "push",
            r#"{"uri":"http://127.0.0.1:1/","localStreamName":"here"}"#,
            400,
        ),
        ("push", r#"{"uri":5,"localStreamName":"here"}"#, 400),
        ("push", r#"{"uri":"ws://127.0.0.1:9/"}"#, 400),
        (
            "push",
            r#"{"uri":"ws://127.0.0.1:9/","localStreamName":"nope"}"#,
            404,
        ),
        (
            "pull",
            r#"{"uri":"ws://127.0.0.1:9/","localStreamName":"here"}"#,
            409,
        ),
        ("terminate", "{}", 400),
        ("terminate", r#"{"localStreamName":"none"}"#, 404),
    ] {
        let (code, reply) = a.rest(&format!("/rest-api/pull/{kind}"), body).await;
        assert_eq!(code, want, "{kind} {body}: {reply}");
        assert!(reply["error"].is_string(), "{kind} {body}: {reply}");
    }
    let (code, _) = a.rest("/rest-api/pull/find_all", "").await;
    assert_eq!(code, 404);

    // Nothing listens on the port: FAILED with a clear info, quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let started = Instant::now();
    let (code, body) = relay(
        &a,
        "push",
        json!({"uri": format!("ws://127.0.0.1:{port}/"), "localStreamName": "here"}),
    )
    .await;
    eprintln!(
        "unreachable push answered in {:?}: {body}",
        started.elapsed()
    );
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["status"], json!("FAILED"));
    assert!(
        body["info"]
            .as_str()
            .unwrap_or("")
            .starts_with("Failed to connect to origin stream"),
        "{body}"
    );
    let relays = relay_status(&a).await;
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0]["status"], json!("FAILED"));
    assert!(relays[0]["lastError"].is_string());

    // A server that accepts TCP and never answers: the REST call still answers in time.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let (code, body) = relay(
        &a,
        "push",
        json!({"uri": format!("ws://127.0.0.1:{silent_port}/"), "localStreamName": "here"}),
    )
    .await;
    assert!(code == 200 || code == 500, "{code} {body}");
    assert_ne!(body["status"], json!("PUBLISHING"), "{body}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn pull_heals_when_the_origin_restarts_and_players_keep_their_peers() {
    let port = free_port();
    let port_arg = port.to_string();
    let mut a = Server::start(&["--ws-port", &port_arg]);
    let b = Server::start(&[]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let publisher = pub_session.publish(&ep, "live", synth()).await.unwrap();
    let (code, body) = relay(
        &b,
        "pull",
        json!({"uri": a.ws_url(), "remoteStreamName": "live", "localStreamName": "live"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let viewers = session(&b).await;
    let player = viewers.play(&ep, "live").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, _, _, _) = player_figures(&player).await;
    assert!(before > 0);

    // The origin dies without a goodbye and comes back on the same port.
    a.kill();
    drop(publisher);
    drop(pub_session);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a2 = Server::start(&["--ws-port", &port_arg]);
    let restarted = Instant::now();
    let pub_session = session(&a2).await;
    let _publisher = pub_session.publish(&ep, "live", synth()).await.unwrap();

    // B's player, untouched, receives media again.
    let (stalled, _, _, _) = player_figures(&player).await;
    let resumed = eventually(Duration::from_secs(10), || async {
        let (now, _, _, _) = player_figures(&player).await;
        (now > stalled + 100).then_some(now)
    })
    .await;
    assert!(
        resumed.is_some(),
        "B's player got no media within 10 s of the origin's restart; relays: {:?}",
        relay_status(&b).await
    );
    eprintln!(
        "pull healed: player receiving again {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(player.handle.status(), StreamStatus::Playing);
    let probe = player.report().await.unwrap().probe.unwrap();
    eprintln!(
        "player across the reconnect: rtp_out_of_order {} duplicates {}",
        probe.rtp_out_of_order, probe.duplicates
    );
    assert_eq!(probe.rtp_out_of_order, 0, "sequence numbers went backwards");
    let relays = relay_status(&b).await;
    assert_eq!(relays[0]["status"], json!("PLAYING"), "{relays:?}");
    assert!(relays[0]["attempts"].as_u64().unwrap() >= 2, "{relays:?}");
}

#[tokio::test]
async fn push_heals_when_the_remote_restarts() {
    let port = free_port();
    let port_arg = port.to_string();
    let a = Server::start(&[]);
    let mut b = Server::start(&["--ws-port", &port_arg]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let publisher = pub_session.publish(&ep, "up", synth()).await.unwrap();
    push(&a, &b, "up").await;

    b.kill();
    // Muted while the remote is away: the relay brings the state along when it is back.
    publisher
        .handle
        .send_stream_event("audioMuted", None)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b2 = Server::start(&["--ws-port", &port_arg]);
    let restarted = Instant::now();
    let viewers = session(&b2).await;
    let player = eventually(Duration::from_secs(10), || async {
        viewers.play(&ep, "up").await.ok()
    })
    .await
    .expect("the stream is pushed again to the restarted remote");
    let got = eventually(Duration::from_secs(10), || async {
        let (media, _, _, _) = player_figures(&player).await;
        (media > 50).then_some(())
    })
    .await;
    assert!(got.is_some(), "no media on the restarted remote");
    eprintln!(
        "push healed: media on the restarted remote {:?} after restart",
        restarted.elapsed()
    );
    let relays = relay_status(&a).await;
    assert_eq!(relays[0]["status"], json!("PUBLISHING"), "{relays:?}");
    let synced = eventually(Duration::from_secs(5), || async {
        (mute_state(&viewers, "up").await == (true, false)).then_some(())
    });
    assert!(
        synced.await.is_some(),
        "the restarted remote does not know the stream is muted"
    );
}

#[tokio::test]
async fn push_terminated_from_either_end() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let ep = endpoint();
    let pub_session = session(&a).await;
    let _publisher = pub_session.publish(&ep, "t", synth()).await.unwrap();

    // From the pushing end: B sees an ordinary unpublish and its player stops.
    let body = push(&a, &b, "t").await;
    let viewers = session(&b).await;
    let mut player = viewers.play(&ep, "t").await.unwrap();
    let id = body["localMediaSessionId"].as_str().unwrap().to_owned();
    let (code, reply) = a
        .rest(
            "/rest-api/pull/terminate",
            &json!({ "localMediaSessionId": id }).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    let e = ended(
        &mut player.handle,
        Duration::from_secs(3),
        "B's player stops",
    )
    .await;
    assert_eq!(e.info.as_deref(), Some("Stopped by publisher stop"));
    let (code, _) = b.rest("/rest-api/stream/find", r#"{"name":"t"}"#).await;
    assert_eq!(code, 404, "B still lists the stream after terminate");
    assert!(relay_status(&a).await.is_empty());

    // From the receiving end: B's operator terminates the stream; A's relay ends for good.
    push(&a, &b, "t").await;
    let (code, reply) = b
        .rest("/rest-api/stream/terminate", r#"{"name":"t"}"#)
        .await;
    assert_eq!(code, 200, "{reply}");
    let ended = eventually(Duration::from_secs(3), || async {
        let relays = relay_status(&a).await;
        relays
            .first()
            .filter(|r| r["status"] == json!("FAILED"))
            .cloned()
    })
    .await
    .expect("A's relay ends when B terminates the stream");
    assert!(
        ended["info"]
            .as_str()
            .unwrap_or("")
            .contains("Stopped by rest /terminate"),
        "{ended}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, _) = b.rest("/rest-api/stream/find", r#"{"name":"t"}"#).await;
    assert_eq!(code, 404, "A pushed the terminated stream again");
}

/// The remote's REST hooks decide about a relay as about any client: its publishStream hook
/// refuses a push, with the backend's reason in the relay's status, and lets another through;
/// the backend sees the relay's `custom.relaycastVia`.
#[tokio::test]
async fn the_remotes_rest_hooks_decide_about_a_relay() {
    let (backend, mut posts, _) = hook_backend().await;
    let a = Server::start(&[]);
    let b = Server::with_config(
        &format!(
            "[hooks]\nurl = \"http://{backend}/app\"\nmethods = [\"connect\", \"publishStream\"]\n"
        ),
        &[],
    );
    let ep = endpoint();
    let pub_session = session(&a).await;
    let _refused = pub_session
        .publish(&ep, "forbidden-cam", synth())
        .await
        .unwrap();
    let _allowed = pub_session.publish(&ep, "cam", synth()).await.unwrap();

    let (code, body) = relay(
        &a,
        "push",
        json!({"uri": b.ws_url(), "localStreamName": "forbidden-cam"}),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["status"], json!("FAILED"), "{body}");
    assert!(
        body["info"]
            .as_str()
            .unwrap_or("")
            .contains("Refused by the backend (403)"),
        "{body}"
    );
    assert_eq!(posts.next("connect").await.path, "/app/connect");
    let refused = posts.next("publishStream").await;
    assert_eq!(refused.body["name"], "forbidden-cam");

    push(&a, &b, "cam").await;
    let _ = posts.next("connect").await;
    let allowed = posts.next("publishStream").await;
    assert_eq!(allowed.body["name"], "cam");
    let via = allowed.body["custom"]["relaycastVia"].as_array().cloned();
    assert!(via.is_some_and(|v| !v.is_empty()), "{}", allowed.body);
    let (code, streams) = b.rest("/rest-api/stream/find", r#"{"name":"cam"}"#).await;
    assert_eq!((code, &streams[0]["status"]), (200, &json!("PUBLISHING")));
}
