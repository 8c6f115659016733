//! The core server end to end: real `relaycast` processes, the project's protocol client
//! publishing synthetic media over real WebRTC (ICE, DTLS, SRTP) and players measuring it.

mod common;

use std::time::{Duration, Instant};

use common::{
    Server, ended, endpoint, eventually, keyframe_requests, keyframes_received, metric, metrics,
    player_figures, session,
};
use relaycast_controlplane::client::ClientError;
use relaycast_controlplane::protocol::StreamStatus;
use relaycast_dataplane::synth::{SynthConfig, VideoCodec};
use relaycast_loadgen::procfs;
use serde_json::{Value, json};

fn synth(codec: VideoCodec) -> SynthConfig {
    SynthConfig {
        video: Some(codec),
        video_bitrate_bps: 1_500_000,
        ..SynthConfig::default()
    }
}

async fn fanout(codec: VideoCodec, players: usize) {
    let server = Server::start(&[]);
    let ep = endpoint();
    let publisher_session = session(&server).await;
    let publisher = publisher_session
        .publish(&ep, "fan", synth(codec))
        .await
        .expect("publish");
    assert_eq!(publisher.handle.status(), StreamStatus::Publishing);

    let mut sessions = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..players {
        let s = session(&server).await;
        let player = s.play(&ep, "fan").await.expect("play");
        assert_eq!(player.handle.status(), StreamStatus::Playing);
        sessions.push(s);
        streams.push(player);
    }
    // The server's CPU per datagram it sent over the window, as the loadgen measures it.
    let datagrams_out =
        |text: &str| metric(text, "relaycast_core_packets_total", &["direction=\"out\""]);
    let cpu_before = procfs::sample(Some(server.pid())).expect("server /proc");
    let out_before = datagrams_out(&metrics(&server).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out_after = datagrams_out(&metrics(&server).await);
    let cpu_after = procfs::sample(Some(server.pid())).expect("server /proc");
    let (cpu_us, cpu_pct) = procfs::cpu_between(&cpu_before, &cpu_after);
    let forwarded = out_after - out_before;
    assert!(forwarded > 0.0, "the server sent nothing in 3 s");
    // The synthetic frames' packets differ in size by a byte, as a browser's do: the server
    // pads them to one size so that each frame goes to a player as one GSO message.
    let padded = metric(
        &metrics(&server).await,
        "relaycast_core_padded_packets_total",
        &[],
    );
    assert!(padded > 0.0, "no packet was padded for GSO");
    eprintln!(
        "{codec}: server sent {forwarded} datagrams in the window; CPU {:.1} us per datagram ({cpu_pct:.1}% of a core)",
        cpu_us as f64 / forwarded
    );

    let sent = publisher.report().await.unwrap().generator.unwrap();
    let mut total_media = 0;
    let mut p99s = Vec::new();
    for (n, player) in streams.iter().enumerate() {
        let (media, loss, p50, p99) = player_figures(player).await;
        eprintln!(
            "{codec} player {n}: {media} packets, loss {loss:.3}%, latency p50 {p50} us p99 {p99} us"
        );
        assert!(media > 100, "player {n} received only {media} packets");
        assert!(loss < 1.0, "player {n} lost {loss:.3}% of packets");
        let probe = player.report().await.unwrap().probe.unwrap();
        assert!(probe.keyframes > 0, "player {n} got no keyframe");
        total_media += media;
        p99s.push(p99);
    }
    eprintln!(
        "{codec}: publisher sent {} packets; {players} players received {total_media}",
        sent.audio_packets + sent.video_packets
    );
    p99s.sort_unstable();
    eprintln!(
        "{codec}: median of players' p99 latency {} us",
        p99s[p99s.len() / 2]
    );

    // The stream is listed with its codecs while it plays.
    let (code, body) = server
        .rest("/rest-api/stream/find", r#"{"name":"fan"}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    let list = body.as_array().expect("find answers a list");
    assert!(list.iter().any(|s| s["published"] == json!(true)), "{body}");
    // The picture size read from the keyframes is reported (the SDK's resize event too).
    let publisher_info = list.iter().find(|s| s["published"] == json!(true)).unwrap();
    assert!(publisher_info["width"].as_u64().unwrap_or(0) > 0, "{body}");
    assert!(publisher_info["height"].as_u64().unwrap_or(0) > 0, "{body}");
}

#[tokio::test]
async fn one_publisher_one_player_vp8() {
    fanout(VideoCodec::Vp8, 1).await;
}

#[tokio::test]
async fn one_publisher_ten_players_over_two_cores_h264() {
    fanout(VideoCodec::H264, 10).await;
}

#[tokio::test]
async fn registry_rules_duplicate_name_unknown_stream_reused_id() {
    let server = Server::start(&[]);
    let ep = endpoint();
    let a = session(&server).await;
    let mut publisher = a.publish(&ep, "dup", synth(VideoCodec::Vp8)).await.unwrap();

    let b = session(&server).await;
    match b.publish(&ep, "dup", synth(VideoCodec::Vp8)).await {
        Err(ClientError::Stream { status, info }) => {
            assert_eq!(status, StreamStatus::Failed);
            assert_eq!(info, "Stream name is already in use");
        }
        other => panic!("second publisher of a name: {:?}", other.map(|_| ())),
    }
    match b.play(&ep, "no-such-stream").await {
        Err(ClientError::Stream { status, info }) => {
            assert_eq!(status, StreamStatus::Failed);
            assert_eq!(info, "Stream not found");
        }
        other => panic!("play of an unknown name: {:?}", other.map(|_| ())),
    }

    // Reusing a live mediaSessionId is refused and the live stream is untouched.
    let id = publisher.handle.media_session_id().to_owned();
    a.send_raw(
        json!({"message": "publishStream", "data": [{
            "mediaSessionId": id, "name": "other", "published": true,
            "sdp": publisher.peer.sdp, "hasAudio": true, "hasVideo": true
        }]})
        .to_string(),
    )
    .unwrap();
    let e = publisher
        .handle
        .wait_for(&[StreamStatus::Failed], Duration::from_secs(3))
        .await
        .expect("FAILED for the reused id");
    assert_eq!(e.info.as_deref(), Some("MediaSessionId is already in use"));
    let (code, body) = server
        .rest("/rest-api/stream/find", r#"{"name":"dup"}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body[0]["status"], json!("PUBLISHING"), "{body}");
    let (code, _) = server
        .rest("/rest-api/stream/find", r#"{"name":"other"}"#)
        .await;
    assert_eq!(code, 404);

    // The session is still usable: a player joins the original stream.
    let player = b.play(&ep, "dup").await.expect("play after refusals");
    assert_eq!(player.handle.status(), StreamStatus::Playing);
}

#[tokio::test]
async fn publisher_end_stops_players() {
    let server = Server::start(&[]);
    let ep = endpoint();

    // Unpublish: the publisher sees UNPUBLISHED, the player STOPPED.
    let a = session(&server).await;
    let publisher = a.publish(&ep, "s1", synth(VideoCodec::Vp8)).await.unwrap();
    let b = session(&server).await;
    let mut player = b.play(&ep, "s1").await.unwrap();
    let done = publisher.stop(Duration::from_secs(3)).await.unwrap();
    assert_eq!(done.status, StreamStatus::Unpublished);
    let e = player
        .handle
        .wait_for(
            &[StreamStatus::Stopped, StreamStatus::Failed],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(e.status, StreamStatus::Stopped);
    assert_eq!(e.info.as_deref(), Some("Stopped by publisher stop"));

    // The publisher's WebSocket closes: players are STOPPED within 2 s.
    let c = session(&server).await;
    let _publisher = c.publish(&ep, "s2", synth(VideoCodec::Vp8)).await.unwrap();
    let d = session(&server).await;
    let mut players = Vec::new();
    for _ in 0..3 {
        players.push(d.play(&ep, "s2").await.unwrap());
    }
    let closed_at = Instant::now();
    c.close();
    for player in &mut players {
        let e = ended(
            &mut player.handle,
            Duration::from_secs(2),
            "STOPPED within 2 s of the publisher's disconnect",
        )
        .await;
        assert_eq!(e.status, StreamStatus::Stopped);
        assert_eq!(e.info.as_deref(), Some("Stopped by publisher stop"));
    }
    eprintln!(
        "players stopped {:?} after the publisher's disconnect",
        closed_at.elapsed()
    );
    let gone = eventually(Duration::from_secs(2), || async {
        let (code, _) = server
            .rest("/rest-api/stream/find", r#"{"name":"s2"}"#)
            .await;
        (code == 404).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "stream s2 still listed after its session closed"
    );

    // A player that stops itself gets STOPPED and the publisher keeps publishing.
    let e2 = session(&server).await;
    let mut publisher = e2.publish(&ep, "s3", synth(VideoCodec::Vp8)).await.unwrap();
    let player = d.play(&ep, "s3").await.unwrap();
    let e = player.stop(Duration::from_secs(3)).await.unwrap();
    assert_eq!(e.status, StreamStatus::Stopped);
    assert!(
        publisher
            .handle
            .wait_for(
                &[StreamStatus::Unpublished, StreamStatus::Failed],
                Duration::from_millis(500)
            )
            .await
            .is_err(),
        "publisher ended when its player stopped"
    );
}

#[tokio::test]
async fn publisher_media_lost_fails_stream_and_stops_players() {
    let server = Server::with_config(
        "[media]\nrtp_timeout_secs = 2\nice_disconnect_grace_secs = 2\n",
        &[],
    );
    let publisher_ep = endpoint();
    let player_ep = endpoint();
    let a = session(&server).await;
    let mut publisher = a
        .publish(&publisher_ep, "lost", synth(VideoCodec::Vp8))
        .await
        .unwrap();
    let b = session(&server).await;
    let mut player = b.play(&player_ep, "lost").await.unwrap();

    // The publisher's media stops dead (no DTLS close, no STUN) while its WebSocket lives.
    let halted = Instant::now();
    publisher_ep.halt();
    let e = publisher
        .handle
        .wait_for(
            &[StreamStatus::Failed, StreamStatus::Unpublished],
            Duration::from_secs(10),
        )
        .await
        .expect("the publisher fails when its media stops");
    assert_eq!(e.status, StreamStatus::Failed);
    let info = e.info.unwrap_or_default();
    assert!(
        info == "Failed by RTP activity" || info == "Failed by ICE keep alive",
        "info: {info}"
    );
    let s = ended(
        &mut player.handle,
        Duration::from_secs(2),
        "the player stops with its publisher",
    )
    .await;
    assert_eq!(s.status, StreamStatus::Stopped);
    assert_eq!(s.info.as_deref(), Some("Stopped by publisher stop"));
    eprintln!("media loss detected after {:?}: {info}", halted.elapsed());
    assert!(
        a.closed_reason().is_none(),
        "the publisher's session stays up"
    );
}

#[tokio::test]
async fn rest_stream_and_connection_calls() {
    let server = Server::start(&[]);
    let ep = endpoint();
    let (code, body) = server.rest("/rest-api/stream/find_all", "").await;
    assert_eq!(code, 404, "{body}");

    let a = session(&server).await;
    let mut publisher = a.publish(&ep, "r1", synth(VideoCodec::Vp8)).await.unwrap();
    let b = session(&server).await;
    let mut player = b.play(&ep, "r1").await.unwrap();

    let (code, body) = server.rest("/rest-api/stream/find_all", "{}").await;
    assert_eq!(code, 200, "{body}");
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    let published: Vec<&Value> = list
        .iter()
        .filter(|s| s["published"] == json!(true))
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["name"], json!("r1"));
    assert_eq!(published[0]["status"], json!("PUBLISHING"));
    assert_eq!(
        published[0]["mediaSessionId"],
        json!(publisher.handle.media_session_id())
    );

    let (code, body) = server.rest("/rest-api/connection/find_all", "{}").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");

    // Malformed and incomplete bodies.
    for (path, body) in [
        ("/rest-api/stream/find", "{not json"),
        ("/rest-api/stream/find", "[1,2]"),
        ("/rest-api/stream/find", r#"{"name": 5}"#),
        ("/rest-api/stream/terminate", "{}"),
        ("/rest-api/connection/terminate", "{}"),
    ] {
        let (code, reply) = server.rest(path, body).await;
        assert_eq!(code, 400, "{path} {body}: {reply}");
        assert!(reply["error"].is_string(), "{path} {body}: {reply}");
    }
    let (code, _) = server.rest("/rest-api/no/such", "{}").await;
    assert_eq!(code, 404);
    let (code, _) = server
        .rest("/rest-api/stream/terminate", r#"{"name":"nope"}"#)
        .await;
    assert_eq!(code, 404);

    // Terminating the stream: the publisher is told, its player stops.
    let (code, body) = server
        .rest("/rest-api/stream/terminate", r#"{"name":"r1"}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    let e = publisher
        .handle
        .wait_for(
            &[StreamStatus::Unpublished, StreamStatus::Failed],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(e.status, StreamStatus::Unpublished);
    let e = player
        .handle
        .wait_for(&[StreamStatus::Stopped], Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(e.info.as_deref(), Some("Stopped by publisher stop"));

    // Terminating a connection closes its WebSocket.
    let session_id = b.session_id().unwrap().to_owned();
    let (code, body) = server
        .rest(
            "/rest-api/connection/terminate",
            &json!({ "sessionId": session_id }).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let reason = tokio::time::timeout(Duration::from_secs(2), b.wait_closed())
        .await
        .expect("the terminated session closes");
    eprintln!("terminated session closed: {reason}");
}

#[tokio::test]
async fn bad_input_is_answered_and_other_clients_keep_playing() {
    let server = Server::start(&[]);
    let ep = endpoint();
    let a = session(&server).await;
    let _publisher = a
        .publish(&ep, "safe", synth(VideoCodec::Vp8))
        .await
        .unwrap();
    let b = session(&server).await;
    let player = b.play(&ep, "safe").await.unwrap();

    // Garbage on the signalling socket of a third session: it stays up.
    let c = session(&server).await;
    for frame in [
        "{not json",
        r#"{"message":"noSuchMethod","data":[{}]}"#,
        r#"{"message":"publishStream","data":"x"}"#,
        r#"{"message":"playStream","data":[{"name":7,"mediaSessionId":false}]}"#,
        "[]",
    ] {
        c.send_raw(frame.to_owned()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.closed_reason().is_none(), "garbage closed the session");
    let late = c.play(&ep, "safe").await.expect("play after garbage");
    assert_eq!(late.handle.status(), StreamStatus::Playing);

    // An oversized frame (2 MiB) closes only that session.
    let d = session(&server).await;
    d.send_raw("x".repeat(2 << 20)).unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(3), d.wait_closed())
        .await
        .expect("oversized frame closes its session");
    eprintln!("oversized frame: {reason}");

    // A client that vanishes (TCP reset without a close frame).
    {
        let raw = tokio::net::TcpStream::connect(server.ws).await.unwrap();
        drop(raw);
    }

    // Garbage datagrams at every media port.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for addr in &server.media {
        for n in 0..500u32 {
            let len = (n as usize * 7) % 1400 + 1;
            let mut datagram: Vec<u8> = (0..len).map(|i| (i as u32 * 31 + n) as u8).collect();
            match n % 4 {
                0 => datagram[0] = 0x00, // STUN-like
                1 => datagram[0] = 22,   // DTLS-like
                2 => datagram[0] = 0x80, // RTP-like
                _ => {}
            }
            let _ = sock.send_to(&datagram, addr).await;
        }
    }

    let (before, _, _, _) = player_figures(&player).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, loss, _, _) = player_figures(&player).await;
    assert!(after > before + 20, "player stalled: {before} -> {after}");
    assert!(loss < 1.0, "player lost {loss:.3}%");
    let (code, body) = server.rest("/rest-api/stream/find_all", "{}").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.as_array().unwrap().len() >= 3, "{body}");
}

#[tokio::test]
async fn sigterm_sends_final_statuses_and_exits() {
    let mut server = Server::start(&[]);
    let ep = endpoint();
    let a = session(&server).await;
    let mut publisher = a.publish(&ep, "bye", synth(VideoCodec::Vp8)).await.unwrap();
    let b = session(&server).await;
    let mut player = b.play(&ep, "bye").await.unwrap();

    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate(Duration::from_secs(5));
        (status, server)
    });
    let p = publisher
        .handle
        .wait_for(
            &[StreamStatus::Unpublished, StreamStatus::Failed],
            Duration::from_secs(5),
        )
        .await
        .expect("publisher gets a final status");
    assert_eq!(p.status, StreamStatus::Unpublished);
    let s = ended(
        &mut player.handle,
        Duration::from_secs(5),
        "player gets a final status",
    )
    .await;
    assert_eq!(s.status, StreamStatus::Stopped);
    let (status, _server) = status.await.unwrap();
    let status = status.expect("relaycast exits within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
}

/// Removes every payload type of `codec` (and its RTX) from an SDP.
fn strip_codec(sdp: &str, codec: &str) -> String {
    let mut pts: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.starts_with(codec))
        })
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let rtx: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=fmtp:"))
        .filter(|l| pts.iter().any(|pt| l.contains(&format!("apt={pt}"))))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    pts.extend(rtx);
    let attr_pt = |l: &str| {
        ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let mut out = String::new();
    for line in sdp.lines() {
        if let Some(pt) = attr_pt(line)
            && pts.contains(&pt)
        {
            continue;
        }
        if line.starts_with("m=video") {
            let kept: Vec<&str> = line
                .split(' ')
                .enumerate()
                .filter(|(i, f)| *i < 3 || !pts.iter().any(|pt| pt == f))
                .map(|(_, f)| f)
                .collect();
            out.push_str(&kept.join(" "));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

#[tokio::test]
async fn player_without_the_stream_codec_gets_no_common_codecs() {
    let server = Server::start(&[]);
    let ep = endpoint();
    let a = session(&server).await;
    let _publisher = a
        .publish(&ep, "vp8only", synth(VideoCodec::Vp8))
        .await
        .unwrap();

    let b = session(&server).await;
    let peer = ep
        .offer(relaycast_dataplane::Role::Probe)
        .await
        .expect("probe offer");
    let offer = strip_codec(&peer.sdp, "VP8");
    assert!(!offer.contains("VP8/90000"));
    match b.negotiate("vp8only", &offer, false, Value::Null).await {
        Err(ClientError::Stream { status, info }) => {
            assert_eq!(status, StreamStatus::Failed);
            assert_eq!(info, "No common codecs");
        }
        Ok(_) => panic!("a player without VP8 was answered"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    // The publisher is unaffected and a capable player still plays.
    let player = b.play(&ep, "vp8only").await.expect("play with VP8");
    assert_eq!(player.handle.status(), StreamStatus::Playing);
}

/// A player joining soon after another gets its own keyframe once the first one's request
/// was answered, instead of waiting out the interval for unanswered requests (here set to a
/// minute, so only the answered interval can let the second request through).
#[tokio::test]
async fn a_player_joining_after_an_answered_keyframe_request_gets_its_own_soon() {
    let server = Server::with_config(
        "[media]\nkeyframe_min_interval_ms = 60000\nkeyframe_answered_interval_ms = 200\n",
        &[],
    );
    let ep = endpoint();
    let publisher_session = session(&server).await;
    // Keyframes only on request.
    let config = SynthConfig {
        keyframe_interval: Duration::from_secs(600),
        ..synth(VideoCodec::Vp8)
    };
    let publisher = publisher_session
        .publish(&ep, "kf", config)
        .await
        .expect("publish");
    let requests = || keyframe_requests(&publisher);

    let viewers = session(&server).await;
    let first = viewers.play(&ep, "kf").await.expect("first play");
    let answered = eventually(Duration::from_secs(5), || async {
        (keyframes_received(&first).await > 0).then_some(())
    })
    .await;
    assert!(answered.is_some(), "the first player got no keyframe");
    let before = requests().await;
    assert!(before >= 1, "the first player's join asked for no keyframe");

    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = viewers.play(&ep, "kf").await.expect("second play");
    let got = eventually(Duration::from_secs(5), || async {
        (keyframes_received(&second).await > 0).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "the second player got no keyframe within 5 s (requests to the publisher: {})",
        requests().await
    );
    assert!(
        requests().await > before,
        "the second join asked for no keyframe"
    );
}

/// A publisher's answer keeps the transport-wide sequence number (its bandwidth estimation
/// runs on the server's feedback); a player's answer leaves it out (the server does not
/// estimate bandwidth towards players, so their feedback would only cost datagrams), and the
/// player still plays.
#[tokio::test]
async fn twcc_is_negotiated_with_publishers_not_with_players() {
    const TWCC: &str = "transport-wide-cc";
    let server = Server::start(&[]);
    let ep = endpoint();
    // The server's answer to a client offer (which always proposes TWCC) for `role`.
    let answer_to = async |role: relaycast_dataplane::Role, publish: bool| {
        let offer = ep.offer(role).await.expect("client offer");
        assert!(offer.sdp.contains(TWCC), "the client offers TWCC");
        let s = session(&server).await;
        let (_stream, answer) = s
            .negotiate("twcc", &offer.sdp, publish, Value::Null)
            .await
            .expect("answered");
        (s, answer)
    };
    let (_a, answer) = answer_to(
        relaycast_dataplane::Role::Generate(synth(VideoCodec::Vp8)),
        true,
    )
    .await;
    assert!(answer.contains(TWCC), "publisher answer:\n{answer}");

    let (b, answer) = answer_to(relaycast_dataplane::Role::Probe, false).await;
    assert!(!answer.contains(TWCC), "player answer:\n{answer}");
    assert!(
        answer.contains("urn:ietf:params:rtp-hdrext:sdes:mid"),
        "other extensions stay:\n{answer}"
    );

    let c = session(&server).await;
    let _publisher = c
        .publish(&ep, "twcc-media", synth(VideoCodec::Vp8))
        .await
        .unwrap();
    let player = b.play(&ep, "twcc-media").await.expect("play");
    let got = eventually(Duration::from_secs(5), || async {
        (player.report().await?.probe?.video_packets > 50).then_some(())
    })
    .await;
    assert!(got.is_some(), "the player receives media without TWCC");
}

/// A near-silent stream (one small frame a second, no audio) leaves its core quiet: the core
/// then reads and answers its peers on a 100 ms grid. Its players still get every frame, and
/// a full-rate stream started on the same quiet server plays at once.
#[tokio::test]
async fn a_quiet_core_still_delivers_and_wakes_up_for_media() {
    let server = Server::start(&["--cores", "1"]);
    let ep = endpoint();
    let quiet = SynthConfig {
        video: Some(VideoCodec::Vp8),
        audio: false,
        video_bitrate_bps: 8_000,
        fps: 1,
        ..SynthConfig::default()
    };
    let a = session(&server).await;
    let _slow = a.publish(&ep, "slow", quiet).await.expect("publish slow");
    let mut sessions = Vec::new();
    let mut players = Vec::new();
    for _ in 0..3 {
        let s = session(&server).await;
        players.push(s.play(&ep, "slow").await.expect("play slow"));
        sessions.push(s);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (n, player) in players.iter().enumerate() {
        let (media, loss, _, _) = player_figures(player).await;
        assert!(
            media >= 3,
            "player {n} got {media} packets of the 1 frame/s stream"
        );
        assert!(loss < 1.0, "player {n} lost {loss:.3}%");
    }

    let b = session(&server).await;
    let _fast = b
        .publish(&ep, "fast", synth(VideoCodec::Vp8))
        .await
        .expect("publish fast");
    let c = session(&server).await;
    let player = c.play(&ep, "fast").await.expect("play fast");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (media, loss, _, _) = player_figures(&player).await;
    assert!(media > 100, "the full-rate player got {media} packets");
    assert!(loss < 1.0, "the full-rate player lost {loss:.3}%");
}

/// A player that loses a video packet on the way NACKs it, and the server resends it (as
/// RTX) from its core's history of the stream: the direct egress path's resend, end to end.
/// The player is a plain str0m peer on its own socket, so the test can drop a datagram.
#[tokio::test]
async fn a_lost_packet_is_resent_from_the_cores_history() {
    use std::net::UdpSocket;
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    let server = Server::start(&[]);
    let ep = endpoint();
    let publisher_session = session(&server).await;
    let _publisher = publisher_session
        .publish(&ep, "lossy", synth(VideoCodec::Vp8))
        .await
        .expect("publish");

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = socket.local_addr().unwrap();
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let player_session = session(&server).await;
    let (_handle, answer) = player_session
        .negotiate("lossy", &offer.to_sdp_string(), false, Value::Null)
        .await
        .expect("play");
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let vp8 = rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == str0m::format::Codec::Vp8)
        .map(|p| *p.pt())
        .unwrap();

    // The player's loop: the 60th VP8 datagram is dropped; it ends once that packet came
    // back (str0m unwraps the RTX) or after 15 s.
    let outcome = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = vec![0u8; 2000];
        let (mut video, mut dropped, mut repaired, mut received) = (0, None::<u16>, false, 0);
        while Instant::now() < deadline && !repaired {
            let timeout = loop {
                match rtc.poll_output().unwrap() {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        socket.send_to(&t.contents, t.destination).unwrap();
                    }
                    Output::Event(Event::RtpPacket(p)) => {
                        received += 1;
                        if Some(p.header.sequence_number) == dropped {
                            repaired = true;
                        }
                    }
                    Output::Event(_) => {}
                }
            };
            let wait = timeout
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(50));
            socket.set_read_timeout(Some(wait)).unwrap();
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let data = &buf[..n];
                    let is_vp8 = n > 12 && data[0] >> 6 == 2 && data[1] & 0x7f == vp8;
                    if is_vp8 {
                        video += 1;
                        if video == 60 {
                            dropped = Some(u16::from_be_bytes([data[2], data[3]]));
                            continue;
                        }
                    }
                    let r = Receive::new(Protocol::Udp, from, local, data).unwrap();
                    rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
                }
                Err(_) => rtc.handle_input(Input::Timeout(Instant::now())).unwrap(),
            }
        }
        (dropped, repaired, received)
    })
    .await
    .unwrap();
    let (dropped, repaired, received) = outcome;
    assert!(
        dropped.is_some(),
        "the player got {received} packets, never 60"
    );
    assert!(
        repaired,
        "packet {dropped:?} was not resent ({received} packets)"
    );
    let text = metrics(&server).await;
    assert!(
        metric(&text, "relaycast_core_resent_packets_total", &[]) >= 1.0,
        "the resend is counted"
    );
}
