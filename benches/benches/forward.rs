//! Forwarding one RTP packet to N subscribers on one core, including SRTP: the data plane's
//! own per-packet path (`Peer::write_media`: str0m RTP write, SRTP seal, transmit) on N
//! egress peers connected in memory, without and with the core's `sendmmsg` flush.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relaycast_benches::pair::Subscribers;

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

criterion_group!(benches, forward);
criterion_main!(benches);
