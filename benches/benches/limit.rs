//! The machine's physical limit for forwarding, per 1200-byte packet on one core: `sendto`,
//! `sendmmsg` (32 per call), UDP GSO (32 segments per call), `sendmmsg` of 32 GSO messages
//! of 6 segments (a video frame per subscriber) over loopback; the two `sendmmsg` shapes again
//! to a receiver that another thread reads (`_read`); `sendmmsg` in a stream's shape (video
//! frames and single audio datagrams) to 100 receivers that one thread sweeps; and one SRTP
//! seal (AEAD-AES-128-GCM,
//! AEAD-AES-256-GCM, AES-CM + HMAC-SHA1-80, and AES-CM with the key set up per packet as
//! str0m's aws-lc-rs backend does).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relaycast_benches::limit::{
    BATCH, CmSealer, Drain, FRAME, GcmSealer, Gso, Loopback, Mmsg, SWEPT_RECEIVERS, pin_thread,
};

fn send(c: &mut Criterion) {
    let lo = Loopback::new().expect("loopback sockets");
    let payload = vec![0x5au8; relaycast_benches::limit::DATAGRAM];
    let mut group = c.benchmark_group("limit_send_1200B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sendto", |b| b.iter(|| lo.sendto(black_box(&payload))));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut mmsg = Mmsg::new(&lo);
    group.bench_function("sendmmsg_x32", |b| b.iter(|| mmsg.send(&lo)));
    let mut gso = Gso::new();
    gso.send(&lo).expect("UDP GSO is supported on this kernel");
    group.bench_function("gso_x32", |b| b.iter(|| gso.send(&lo)));
    group.throughput(Throughput::Elements((BATCH * FRAME) as u64));
    let mut frames = Mmsg::frames(&lo, FRAME);
    frames
        .send(&lo)
        .expect("UDP GSO is supported on this kernel");
    group.bench_function("sendmmsg_gso_frames_32x6", |b| b.iter(|| frames.send(&lo)));
    // The same two sends to a receiver that a thread on another CPU reads, as a subscriber's
    // socket is. Both ends are pinned, so the reader never takes the sender's CPU.
    let read = Loopback::new().expect("loopback sockets");
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if two_cpus {
        pin_thread(0);
    }
    let _drain = Drain::spawn(&read.receiver, two_cpus.then_some(1)).expect("reader thread");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut mmsg = Mmsg::new(&read);
    group.bench_function("sendmmsg_x32_read", |b| b.iter(|| mmsg.send(&read)));
    group.throughput(Throughput::Elements((BATCH * FRAME) as u64));
    let mut frames = Mmsg::frames(&read, FRAME);
    group.bench_function("sendmmsg_gso_frames_32x6_read", |b| {
        b.iter(|| frames.send(&read))
    });
    let receivers: Vec<std::net::UdpSocket> = (0..SWEPT_RECEIVERS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("loopback socket"))
        .collect();
    let _sweep = Drain::sweep(&receivers, two_cpus.then_some(1)).expect("reader thread");
    let mut stream = Mmsg::stream(&receivers).expect("loopback receivers");
    group.throughput(Throughput::Elements(stream.datagrams_per_call() as u64));
    group.bench_function("sendmmsg_stream_shape_read", |b| {
        b.iter(|| stream.send(&read))
    });
    group.finish();
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("limit_seal_1200B");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    let mut g128 = GcmSealer::aes128();
    group.bench_function("aead_aes_128_gcm", |b| {
        b.iter(|| {
            n += 1;
            g128.seal(n)
        })
    });
    let mut g256 = GcmSealer::aes256();
    group.bench_function("aead_aes_256_gcm", |b| {
        b.iter(|| {
            n += 1;
            g256.seal(n)
        })
    });
    let mut cm = CmSealer::new();
    group.bench_function("aes_cm_hmac_sha1_80", |b| {
        b.iter(|| {
            n += 1;
            cm.seal(n)
        })
    });
    group.bench_function("aes_cm_hmac_sha1_80_key_setup_per_packet", |b| {
        b.iter(|| {
            n += 1;
            cm.seal_with_key_setup(n)
        })
    });
    group.finish();
}

criterion_group!(benches, send, seal);
criterion_main!(benches);
