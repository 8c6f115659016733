//! Datagram demultiplexing with 10,000 peers on one socket: the per-datagram lookup by source
//! address, the first STUN request from a new address (ufrag lookup and learning), and a
//! datagram from an unknown source.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relaycast_dataplane::PeerId;
use relaycast_dataplane::demux::Demux;

const PEERS: u32 = 10_000;

fn addr(i: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(0x7f00_0000 | i), port))
}

fn ufrag(i: u32) -> String {
    format!("uf{i:06}")
}

/// A STUN Binding request with USERNAME `local:remote`, as a browser's connectivity check.
fn binding_request(local: &str) -> Vec<u8> {
    let username = format!("{local}:remote1");
    let mut attrs = Vec::new();
    for (kind, value) in [
        (0x0006u16, username.as_bytes().to_vec()),
        (0x0024, vec![0x6e, 0, 1, 0xff]),
        (0x8029, vec![7; 8]),
        (0x0008, vec![0xab; 20]),
        (0x8028, vec![1, 2, 3, 4]),
    ] {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(&value);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    }
    let mut out = 0x0001u16.to_be_bytes().to_vec();
    out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    out.extend_from_slice(b"txn-id-12345");
    out.extend_from_slice(&attrs);
    out
}

fn demux(c: &mut Criterion) {
    let mut table = Demux::<PeerId>::new();
    for i in 0..PEERS {
        table.add_ufrag(ufrag(i), PeerId(u64::from(i)));
        table.add_address(addr(i, 50_000), PeerId(u64::from(i)));
    }
    let mut rtp = vec![0u8; 1200];
    rtp[0] = 0x80;
    rtp[1] = 96;
    let stun: Vec<Vec<u8>> = (0..PEERS).map(|i| binding_request(&ufrag(i))).collect();

    let mut group = c.benchmark_group("demux_10k");
    group.throughput(Throughput::Elements(1));
    let mut k = 0u32;
    group.bench_function("rtp_known_address", |b| {
        b.iter(|| {
            k = (k + 7919) % PEERS;
            black_box(table.route(addr(k, 50_000), &rtp))
        })
    });
    let mut port = 1u16;
    group.bench_function("stun_new_address", |b| {
        b.iter(|| {
            k = (k + 7919) % PEERS;
            port = port.wrapping_add(1).max(1);
            black_box(table.route(addr(k, port), &stun[k as usize]))
        })
    });
    group.bench_function("rtp_unknown_address", |b| {
        b.iter(|| black_box(table.route(addr(PEERS + 5, 9), &rtp)))
    });
    group.finish();
}

criterion_group!(benches, demux);
criterion_main!(benches);
