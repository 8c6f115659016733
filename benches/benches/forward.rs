//! Forwarding one RTP packet to N subscribers on one core, including SRTP: the data plane's
//! own per-packet path (`Peer::write_media`: str0m RTP write, SRTP seal, transmit) on N
//! egress peers connected in memory, without and with the core's `sendmmsg` flush; and the
//! seal alone (`SrtpSender::protect_rtp`) of one such packet in each SRTP profile.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relaycast_benches::pair::{PAYLOAD, Subscribers};
use relaycast_dataplane::srtp::SrtpSender;
use str0m::crypto::dtls::SrtpProfile;

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    for n in [1usize, 10, 100] {
        let mut subs = Subscribers::connect(n).expect("in-memory subscribers connect");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("srtp", n), &n, |b, _| {
            b.iter(|| {
                black_box(subs.forward(Instant::now()));
                subs.discard()
            })
        });
        group.bench_with_input(BenchmarkId::new("srtp+sendmmsg", n), &n, |b, _| {
            b.iter(|| {
                black_box(subs.forward(Instant::now()));
                subs.flush()
            })
        });
    }
    group.finish();
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Elements(1));
    let header = [0x80u8, 0x60, 0, 1, 0, 0, 0, 2, 0xca, 0xfe, 0xba, 0xbe];
    let payload = vec![0x42u8; PAYLOAD];
    for (name, profile, material) in [
        ("aes_cm_hmac_sha1_80", SrtpProfile::AES128_CM_SHA1_80, 60),
        ("aead_aes_128_gcm", SrtpProfile::AEAD_AES_128_GCM, 56),
        ("aead_aes_256_gcm", SrtpProfile::AEAD_AES_256_GCM, 88),
    ] {
        let mut sender =
            SrtpSender::new(profile, &vec![7u8; material], false).expect("the profile's length");
        let mut out = Vec::with_capacity(1500);
        let mut index = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                index += 1;
                out.clear();
                sender.protect_rtp(&header, black_box(&payload), 0xcafebabe, index, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward, seal);
criterion_main!(benches);
