//! Signalling messages: parsing a client's `publishStream` (with a real str0m offer) and
//! `playStream`, parsing a server's `setRemoteSDP`, serializing `setRemoteSDP` and
//! `StreamStatusEvent` frames, and the frames of one 16 KiB `sendData` event for 1,000
//! players (serialized per player, against once for all).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relaycast_controlplane::protocol::{
    self, MediaSessionId, StreamEventFrames, StreamName, StreamRequest, StreamStatus,
    StreamStatusEvent, TrackState,
};
use relaycast_dataplane::peer::{Peer, PeerSetup};
use relaycast_dataplane::synth::SynthConfig;
use relaycast_dataplane::{CoreId, DataPlaneConfig, PeerId, Role};

/// An offer exactly as relaycast's own client makes it.
fn real_offer() -> String {
    let config = DataPlaneConfig::default();
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate");
    let candidates = ["127.0.0.1:40000".parse().expect("an address")];
    let setup = PeerSetup {
        core: CoreId(0),
        now: Instant::now(),
        config: &config,
        cert: &cert,
        candidates: &candidates,
    };
    Peer::offer(PeerId(1), Role::Generate(SynthConfig::default()), &setup)
        .expect("a synthetic offer")
        .1
}

fn signalling(c: &mut Criterion) {
    let sdp = real_offer();
    let id = MediaSessionId("b0f1d3c2-5e6a-4f7b-8c9d-0e1f2a3b4c5d".to_owned());
    let request = StreamRequest {
        media_session_id: Some(id.clone()),
        name: Some(StreamName::from("stream1")),
        sdp: Some(sdp.clone()),
        has_audio: Some(true),
        has_video: Some(true),
        published: Some(true),
        ..StreamRequest::default()
    };
    let publish = protocol::publish_stream(&request);
    let play = protocol::play_stream(&StreamRequest {
        published: Some(false),
        ..request.clone()
    });
    let answer = protocol::set_remote_sdp(&id, &sdp);

    let mut group = c.benchmark_group("signalling");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_publishStream", |b| {
        b.iter(|| protocol::parse_client_frame(black_box(&publish)))
    });
    group.bench_function("parse_playStream", |b| {
        b.iter(|| protocol::parse_client_frame(black_box(&play)))
    });
    group.bench_function("parse_setRemoteSDP", |b| {
        b.iter(|| protocol::parse_server_frame(black_box(&answer)))
    });
    group.bench_function("serialize_setRemoteSDP", |b| {
        b.iter(|| protocol::set_remote_sdp(black_box(&id), black_box(&sdp)))
    });
    group.bench_function("serialize_publishStream", |b| {
        b.iter(|| protocol::publish_stream(black_box(&request)))
    });
    let status = StreamStatusEvent {
        media_session_id: id.clone(),
        name: StreamName::from("stream1"),
        published: false,
        status: StreamStatus::Playing,
        info: None,
        has_audio: true,
        has_video: true,
        audio_codec: Some("opus".to_owned()),
        video_codec: Some("VP8".to_owned()),
        audio_state: Some(TrackState::default()),
        video_state: Some(TrackState::default()),
    };
    group.bench_function("serialize_streamStatusEvent", |b| {
        b.iter(|| protocol::stream_status(black_box(&status)))
    });
    group.finish();

    // One `sendData` event of the largest payload the default limit lets through, to 1,000
    // players: the frames the registry queues.
    let payload = serde_json::json!({"text": "x".repeat(16 * 1024 - 12)});
    let players: Vec<MediaSessionId> = (0..1000)
        .map(|n| MediaSessionId(format!("b0f1d3c2-5e6a-4f7b-8c9d-{n:012}")))
        .collect();
    let mut group = c.benchmark_group("stream_event_16KiB_to_1000_players");
    group.throughput(Throughput::Elements(players.len() as u64));
    group.bench_function("serialize_per_player", |b| {
        b.iter(|| {
            players
                .iter()
                .map(|id| protocol::stream_event(id, "data", payload.clone()).len())
                .sum::<usize>()
        })
    });
    group.bench_function("serialize_once", |b| {
        b.iter(|| {
            let frames = StreamEventFrames::new("data", black_box(&payload));
            players
                .iter()
                .map(|id| frames.frame(id).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, signalling);
criterion_main!(benches);
