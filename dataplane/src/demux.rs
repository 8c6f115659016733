//! Routes each datagram of a shared media socket to the peer connection it belongs to in O(1):
//! by source address once known, else by the ICE ufrag in a STUN Binding request. Owns the
//! address and ufrag tables, and caps what unauthenticated STUN can make it learn per peer.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{SocketAddr, SocketAddrV4};

/// Default cap on the source addresses remembered per peer; the oldest is evicted beyond it.
pub const MAX_ADDRESSES_PER_PEER: usize = 8;

/// Identifies a peer connection (an index, a slab key, ...).
pub trait PeerKey: Copy + Eq + Hash + Debug {}

impl<T: Copy + Eq + Hash + Debug> PeerKey for T {}

/// What a datagram carries, by the RFC 7983 first-byte ranges (RTP vs RTCP per RFC 5761).
/// Datagrams shorter than the smallest valid header of their class are `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Unknown,
}

/// Classifies a datagram from its first two bytes (and minimum header length).
pub fn classify(buf: &[u8]) -> Class {
    let Some(&first) = buf.first() else {
        return Class::Unknown;
    };
    match first {
        0..=3 if buf.len() >= STUN_HEADER_LEN => Class::Stun,
        20..=63 if buf.len() >= DTLS_HEADER_LEN => Class::Dtls,
        128..=191 => {
            // RTCP packet types 192..=223 fill the whole second byte; RTP puts the marker bit
            // and a 7-bit payload type there (payload types 64..=95 are avoided for this reason).
            let rtcp = matches!(buf.get(1), Some(192..=223));
            match (rtcp, buf.len()) {
                (true, len) if len >= RTCP_MIN_LEN => Class::Rtcp,
                (false, len) if len >= RTP_HEADER_LEN => Class::Rtp,
                _ => Class::Unknown,
            }
        }
        _ => Class::Unknown,
    }
}

/// For a well-formed STUN Binding request whose USERNAME is `local:remote`, the local ufrag.
///
/// Checks the header (type, magic cookie, a length that is a multiple of 4 and matches `buf`)
/// and that every attribute fits with its padding. USERNAME is only taken from before
/// MESSAGE-INTEGRITY. Integrity is not verified here; that is the ICE agent's job.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    let username = stun_binding_username(buf)?;
    let (local, _remote) = username.split_once(':')?;
    (!local.is_empty()).then_some(local)
}

/// Datagram-to-peer routing tables for one socket.
#[derive(Debug, Clone)]
pub struct Demux<K: PeerKey> {
    by_address: HashMap<SocketAddr, K>,
    by_ufrag: HashMap<String, K>,
    peers: HashMap<K, PeerRoutes>,
    address_cap: usize,
}

impl<K: PeerKey> Default for Demux<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: PeerKey> Demux<K> {
    /// An empty demux remembering up to [`MAX_ADDRESSES_PER_PEER`] addresses per peer.
    pub fn new() -> Self {
        Self::with_address_cap(MAX_ADDRESSES_PER_PEER)
    }

    /// An empty demux remembering up to `cap` (at least 1) addresses per peer.
    pub fn with_address_cap(cap: usize) -> Self {
        Self {
            by_address: HashMap::new(),
            by_ufrag: HashMap::new(),
            peers: HashMap::new(),
            address_cap: cap.max(1),
        }
    }

    /// Registers the local ufrag of `peer` (re-pointed if another peer had it).
    pub fn add_ufrag(&mut self, ufrag: String, peer: K) {
        match self.by_ufrag.entry(ufrag) {
            Entry::Occupied(mut entry) => {
                let previous = entry.insert(peer);
                if previous != peer {
                    if let Some(routes) = self.peers.get_mut(&previous) {
                        routes.ufrags.retain(|u| u != entry.key());
                    }
                    self.peers
                        .entry(peer)
                        .or_default()
                        .ufrags
                        .push(entry.key().clone());
                }
            }
            Entry::Vacant(entry) => {
                self.peers
                    .entry(peer)
                    .or_default()
                    .ufrags
                    .push(entry.key().clone());
                entry.insert(peer);
            }
        }
    }

    /// Routes one datagram: by source address if known; else, for a STUN Binding request whose
    /// local ufrag is registered, learns `source -> peer` and returns the peer. A STUN request
    /// from a known address naming another registered peer re-points the address. `None`: the
    /// datagram belongs to no peer.
    pub fn route(&mut self, source: SocketAddr, buf: &[u8]) -> Option<K> {
        let source = canonical(source);
        let known = self.by_address.get(&source).copied();
        if known.is_some() && classify(buf) != Class::Stun {
            return known;
        }
        let ufrag_peer = stun_local_ufrag(buf).and_then(|ufrag| self.by_ufrag.get(ufrag).copied());
        let Some(peer) = ufrag_peer else {
            return known;
        };
        self.learn(source, peer);
        Some(peer)
    }

    /// Associates `addr` with `peer` ahead of traffic (e.g. a known remote candidate); counts
    /// against the per-peer cap like a learned address.
    pub fn add_address(&mut self, addr: SocketAddr, peer: K) {
        self.learn(canonical(addr), peer);
    }

    /// Forgets every ufrag and address of `peer`, in O(its own entries).
    pub fn remove_peer(&mut self, peer: K) {
        let Some(routes) = self.peers.remove(&peer) else {
            return;
        };
        for ufrag in &routes.ufrags {
            self.by_ufrag.remove(ufrag.as_str());
        }
        for addr in &routes.addresses {
            self.by_address.remove(addr);
        }
    }

    /// Number of peers known (given a ufrag or an address and not removed since).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The addresses currently routed to `peer`, oldest first (empty if unknown).
    pub fn addresses(&self, peer: K) -> &[SocketAddr] {
        self.peers
            .get(&peer)
            .map_or(&[], |routes| &routes.addresses)
    }

    /// Points `addr` at `peer`, taking it from any other peer, and marks it most recent; evicts
    /// the peer's oldest address beyond the cap.
    fn learn(&mut self, addr: SocketAddr, peer: K) {
        if let Some(previous) = self.by_address.insert(addr, peer)
            && let Some(routes) = self.peers.get_mut(&previous)
        {
            routes.addresses.retain(|a| *a != addr);
        }
        let routes = self.peers.entry(peer).or_default();
        routes.addresses.push(addr);
        if routes.addresses.len() > self.address_cap {
            let evicted = routes.addresses.remove(0);
            self.by_address.remove(&evicted);
        }
    }
}

/// The reverse index of one peer, so removal touches only its own entries.
#[derive(Debug, Clone, Default)]
struct PeerRoutes {
    ufrags: Vec<String>,
    /// Oldest first; at most `address_cap` entries.
    addresses: Vec<SocketAddr>,
}

const STUN_HEADER_LEN: usize = 20;
const DTLS_HEADER_LEN: usize = 13;
const RTP_HEADER_LEN: usize = 12;
const RTCP_MIN_LEN: usize = 8;

const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_MAGIC_COOKIE: [u8; 4] = 0x2112_A442_u32.to_be_bytes();
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// RFC 8489: USERNAME is less than 513 bytes.
const MAX_USERNAME_LEN: usize = 512;

/// The USERNAME of a structurally valid STUN Binding request.
fn stun_binding_username(buf: &[u8]) -> Option<&str> {
    let (header, mut attributes) = buf.split_at_checked(STUN_HEADER_LEN)?;
    let &[t0, t1, l0, l1, c0, c1, c2, c3, ..] = header else {
        return None;
    };
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    if u16::from_be_bytes([t0, t1]) != STUN_BINDING_REQUEST
        || [c0, c1, c2, c3] != STUN_MAGIC_COOKIE
        || length % 4 != 0
        || length != attributes.len()
    {
        return None;
    }

    let mut username = None;
    let mut integrity_seen = false;
    while !attributes.is_empty() {
        let &[k0, k1, v0, v1, ref rest @ ..] = attributes else {
            return None;
        };
        let kind = u16::from_be_bytes([k0, k1]);
        let value_len = usize::from(u16::from_be_bytes([v0, v1]));
        let padded = value_len.next_multiple_of(4);
        let (value, next) = (rest.get(..value_len)?, rest.get(padded..)?);
        match kind {
            ATTR_USERNAME if !integrity_seen && username.is_none() => {
                if value_len > MAX_USERNAME_LEN {
                    return None;
                }
                username = Some(std::str::from_utf8(value).ok()?);
            }
            ATTR_MESSAGE_INTEGRITY | ATTR_MESSAGE_INTEGRITY_SHA256 => integrity_seen = true,
            _ => {}
        }
        attributes = next;
    }
    username
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so one peer has one key.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn stun(kind: u16, attributes: &[Vec<u8>]) -> Vec<u8> {
        let body = attributes.concat();
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&STUN_MAGIC_COOKIE);
        out.extend_from_slice(b"txn-id-12345"); // 12-byte transaction id
        out.extend_from_slice(&body);
        out
    }

    /// A Binding request shaped like a browser's connectivity check.
    fn binding_request(username: &str) -> Vec<u8> {
        stun(
            STUN_BINDING_REQUEST,
            &[
                attribute(ATTR_USERNAME, username.as_bytes()),
                attribute(0xC057, &[0, 1, 0, 10]), // GOOG-NETWORK-INFO
                attribute(0x8029, &[7; 8]),        // ICE-CONTROLLED
                attribute(0x0024, &[0x6e, 0, 1, 0xff]), // PRIORITY
                attribute(ATTR_MESSAGE_INTEGRITY, &[0xab; 20]),
                attribute(0x8028, &[1, 2, 3, 4]), // FINGERPRINT
            ],
        )
    }

    fn rtp(pt: u8) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42];
        p.extend_from_slice(&[0; 160]);
        p
    }

    #[test]
    fn classify_first_bytes() {
        let request = binding_request("abcd:efgh");
        assert_eq!(classify(&request), Class::Stun);
        let mut response = request.clone();
        response[0] = 0x01;
        assert_eq!(classify(&response), Class::Stun);
        for first in [20, 22, 23, 63] {
            let mut dtls = vec![first, 0xfe, 0xfd];
            dtls.resize(40, 0);
            assert_eq!(classify(&dtls), Class::Dtls, "{first}");
        }
        for pt in [96, 111, 96 | 0x80, 111 | 0x80] {
            assert_eq!(classify(&rtp(pt)), Class::Rtp, "{pt}");
        }
        let mut with_extension = rtp(96);
        with_extension[0] = 0x90;
        assert_eq!(classify(&with_extension), Class::Rtp);
        for pt in [200, 201, 205, 206] {
            let rtcp = [0x81, pt, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2];
            assert_eq!(classify(&rtcp), Class::Rtcp, "{pt}");
        }
        for junk in [
            &[][..],
            &[0x00; 19][..],
            &[22, 0xfe][..],
            &[0x80; 11][..],
            &[0x80, 200, 0][..],
        ] {
            assert_eq!(classify(junk), Class::Unknown, "{junk:?}");
        }
        assert_eq!(classify(&[0xff; 30]), Class::Unknown);
        assert_eq!(classify(&[17; 30]), Class::Unknown); // ZRTP range
        assert_eq!(classify(&[64; 30]), Class::Unknown); // TURN channel range
    }

    #[test]
    fn ufrag_from_binding_request() {
        assert_eq!(
            stun_local_ufrag(&binding_request("abcd:efgh")),
            Some("abcd")
        );
        // Odd lengths are padded: 9 and 7 bytes.
        assert_eq!(
            stun_local_ufrag(&binding_request("x9Zk+/a:b")),
            Some("x9Zk+/a")
        );
        assert_eq!(stun_local_ufrag(&binding_request("u1:r2:r3")), Some("u1"));
    }

    #[test]
    fn ufrag_rejects_malformed_input() {
        let good = binding_request("abcd:efgh");
        for cut in 0..good.len() {
            assert_eq!(stun_local_ufrag(&good[..cut]), None, "truncated at {cut}");
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(stun_local_ufrag(&longer), None, "trailing bytes");

        let patched = |offset: usize, bytes: &[u8]| {
            let mut p = good.clone();
            p[offset..offset + bytes.len()].copy_from_slice(bytes);
            p
        };
        let length = u16::from_be_bytes([good[2], good[3]]);
        assert_eq!(
            stun_local_ufrag(&patched(2, &(length + 4).to_be_bytes())),
            None,
            "oversized"
        );
        assert_eq!(
            stun_local_ufrag(&patched(2, &(length - 1).to_be_bytes())),
            None,
            "unaligned"
        );
        assert_eq!(
            stun_local_ufrag(&patched(2, &0xffff_u16.to_be_bytes())),
            None,
            "huge"
        );
        assert_eq!(
            stun_local_ufrag(&patched(4, &[0x21, 0x12, 0xa4, 0x43])),
            None,
            "cookie"
        );
        assert_eq!(
            stun_local_ufrag(&patched(0, &[0x01, 0x01])),
            None,
            "response"
        );
        assert_eq!(
            stun_local_ufrag(&patched(0, &[0x00, 0x11])),
            None,
            "indication"
        );
        assert_eq!(
            stun_local_ufrag(&patched(22, &[0xff, 0xff])),
            None,
            "attribute huge"
        );

        // A last attribute whose declared length (with padding) runs past the message.
        let mut overrun = stun(STUN_BINDING_REQUEST, &[attribute(ATTR_USERNAME, b"ab:cd")]);
        overrun[23] = 9; // 5 -> 9 bytes: 12 with padding, only 8 present
        assert_eq!(stun_local_ufrag(&overrun), None, "attribute overrun");
        overrun[23] = 8; // fits exactly, but the value now includes padding bytes
        assert_eq!(stun_local_ufrag(&overrun), Some("ab"));

        // An attribute whose padding is missing entirely at the end of the message.
        let mut unpadded = stun(STUN_BINDING_REQUEST, &[attribute(ATTR_USERNAME, b"ab:cd")]);
        unpadded.truncate(unpadded.len() - 3);
        unpadded[3] -= 3;
        assert_eq!(stun_local_ufrag(&unpadded), None, "unpadded");

        for username in ["abcd", ":efgh", ""] {
            assert_eq!(
                stun_local_ufrag(&binding_request(username)),
                None,
                "{username:?}"
            );
        }
        let not_utf8 = stun(
            STUN_BINDING_REQUEST,
            &[attribute(ATTR_USERNAME, &[0xff, b':', b'a'])],
        );
        assert_eq!(stun_local_ufrag(&not_utf8), None);
        let too_long = "a:".repeat(300);
        assert_eq!(stun_local_ufrag(&binding_request(&too_long)), None);
        let after_integrity = stun(
            STUN_BINDING_REQUEST,
            &[
                attribute(ATTR_MESSAGE_INTEGRITY, &[0; 20]),
                attribute(ATTR_USERNAME, b"ab:cd"),
            ],
        );
        assert_eq!(stun_local_ufrag(&after_integrity), None);
        assert_eq!(stun_local_ufrag(&rtp(96)), None);
    }

    #[test]
    fn ufrag_never_panics_on_noise() {
        let good = binding_request("abcd:efgh");
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut buf = good.clone();
            for _ in 0..(next() % 4) {
                let i = next() as usize % buf.len();
                buf[i] = next() as u8;
            }
            buf.truncate(next() as usize % (good.len() + 1));
            let _ = stun_local_ufrag(&buf);
            let _ = classify(&buf);
            let noise: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let _ = stun_local_ufrag(&noise);
        }
    }

    #[test]
    fn route_learns_from_stun_then_routes_media() {
        let mut demux = Demux::new();
        demux.add_ufrag("abcd".to_owned(), 7_u32);
        let peer = addr("198.51.100.7:50000");
        assert_eq!(
            demux.route(peer, &rtp(96)),
            None,
            "unknown address, not STUN"
        );
        assert_eq!(
            demux.route(peer, &binding_request("zzzz:efgh")),
            None,
            "unknown ufrag"
        );
        assert_eq!(demux.route(peer, &binding_request("abcd:efgh")), Some(7));
        assert_eq!(demux.addresses(7), [peer]);
        assert_eq!(demux.route(peer, &rtp(111)), Some(7));
        assert_eq!(
            demux.route(peer, &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Some(7)
        );
        assert_eq!(demux.route(addr("198.51.100.7:50001"), &rtp(96)), None);
        assert_eq!(demux.len(), 1);
    }

    #[test]
    fn stun_for_another_peer_repoints_the_address() {
        let mut demux = Demux::new();
        demux.add_ufrag("aaaa".to_owned(), 1_u32);
        demux.add_ufrag("bbbb".to_owned(), 2_u32);
        let shared = addr("203.0.113.9:4000");
        assert_eq!(demux.route(shared, &binding_request("aaaa:x")), Some(1));
        assert_eq!(demux.route(shared, &binding_request("bbbb:x")), Some(2));
        assert_eq!(demux.route(shared, &rtp(96)), Some(2));
        assert!(demux.addresses(1).is_empty());
        assert_eq!(demux.addresses(2), [shared]);
        // A STUN request naming an unregistered ufrag does not disturb the route.
        assert_eq!(demux.route(shared, &binding_request("cccc:x")), Some(2));
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_address() {
        let mut demux = Demux::new();
        demux.add_address(addr("[::ffff:192.0.2.1]:9"), 'p');
        assert_eq!(demux.route(addr("192.0.2.1:9"), &rtp(96)), Some('p'));
        assert_eq!(demux.addresses('p'), [addr("192.0.2.1:9")]);
    }

    #[test]
    fn remove_peer_clears_everything() {
        let mut demux = Demux::new();
        demux.add_ufrag("aaaa".to_owned(), 1_u32);
        demux.add_ufrag("aaab".to_owned(), 1); // after an ICE restart
        demux.add_ufrag("bbbb".to_owned(), 2);
        let a = addr("192.0.2.1:1000");
        assert_eq!(demux.route(a, &binding_request("aaaa:r")), Some(1));
        demux.add_address(addr("192.0.2.1:1001"), 1);
        demux.add_address(addr("192.0.2.2:1000"), 2);
        assert_eq!(demux.len(), 2);

        demux.remove_peer(1);
        assert_eq!(demux.len(), 1);
        assert!(demux.addresses(1).is_empty());
        assert_eq!(demux.route(a, &rtp(96)), None);
        assert_eq!(demux.route(addr("192.0.2.1:1001"), &rtp(96)), None);
        for ufrag in ["aaaa", "aaab"] {
            assert_eq!(
                demux.route(a, &binding_request(&format!("{ufrag}:r"))),
                None
            );
        }
        assert_eq!(demux.route(addr("192.0.2.2:1000"), &rtp(96)), Some(2));
        demux.remove_peer(2);
        demux.remove_peer(2);
        assert!(demux.is_empty());
        assert!(demux.by_address.is_empty() && demux.by_ufrag.is_empty());
    }

    #[test]
    fn ufrag_moved_to_another_peer() {
        let mut demux = Demux::new();
        demux.add_ufrag("aaaa".to_owned(), 1_u32);
        demux.add_ufrag("aaaa".to_owned(), 2);
        assert_eq!(
            demux.route(addr("192.0.2.1:1"), &binding_request("aaaa:r")),
            Some(2)
        );
        demux.remove_peer(1);
        assert_eq!(
            demux.route(addr("192.0.2.1:2"), &binding_request("aaaa:r")),
            Some(2)
        );
    }

    #[test]
    fn ten_thousand_peers() {
        let mut demux = Demux::new();
        let address = |i: u32| {
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            SocketAddr::new(IpAddr::V4(ip), 10_000 + (i % 50_000) as u16)
        };
        for i in 0..10_000_u32 {
            demux.add_ufrag(format!("u{i}"), i);
        }
        for i in 0..10_000_u32 {
            let learned = demux.route(address(i), &binding_request(&format!("u{i}:remote")));
            assert_eq!(learned, Some(i));
            demux.add_address(
                SocketAddr::new(IpAddr::V6("2001:db8::1".parse().unwrap()), i as u16),
                i,
            );
        }
        assert_eq!(demux.len(), 10_000);
        for i in (0..10_000_u32).rev() {
            assert_eq!(demux.route(address(i), &rtp(96)), Some(i));
            assert_eq!(demux.addresses(i).len(), 2);
        }
        for i in (0..10_000_u32).step_by(2) {
            demux.remove_peer(i);
        }
        assert_eq!(demux.len(), 5_000);
        for i in 0..10_000_u32 {
            let expected = (i % 2 == 1).then_some(i);
            assert_eq!(demux.route(address(i), &rtp(96)), expected);
        }
        assert_eq!(demux.by_address.len(), 10_000);
        assert_eq!(demux.by_ufrag.len(), 5_000);
    }

    #[test]
    fn learned_addresses_are_capped_oldest_first() {
        let mut demux = Demux::new();
        demux.add_ufrag("victim".to_owned(), 1_u32);
        let port = |p: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), p);
        for p in 0..1_000 {
            assert_eq!(demux.route(port(p), &binding_request("victim:x")), Some(1));
        }
        let expected: Vec<_> = (992..1_000).map(port).collect();
        assert_eq!(demux.addresses(1), expected);
        assert_eq!(demux.by_address.len(), MAX_ADDRESSES_PER_PEER);
        assert_eq!(demux.route(port(991), &rtp(96)), None);
        assert_eq!(demux.route(port(992), &rtp(96)), Some(1));

        // A STUN refresh makes an address most recent, so it survives the next eviction.
        assert_eq!(
            demux.route(port(992), &binding_request("victim:x")),
            Some(1)
        );
        assert_eq!(
            demux.route(port(5_000), &binding_request("victim:x")),
            Some(1)
        );
        assert_eq!(demux.route(port(992), &rtp(96)), Some(1));
        assert_eq!(demux.route(port(993), &rtp(96)), None);

        let mut small = Demux::with_address_cap(0);
        small.add_address(port(1), 'a');
        small.add_address(port(2), 'a');
        assert_eq!(small.addresses('a'), [port(2)]);
    }
}
