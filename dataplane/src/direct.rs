//! The direct egress path: a player's media is sealed and queued by relaycast itself instead
//! of going through its str0m `Rtc` packet by packet (see docs/threading.md, "Direct egress").
//!
//! str0m keeps what it does well and seldom: ICE, DTLS, the sender reports, the player's RTCP
//! (keyframe requests, receiver reports). What it does for every packet (its send queue, RTX
//! cache, header writing and timers, some 40% of the server's CPU at 400 players) is replaced
//! by the three pieces here:
//! - [`build_rtc`] builds an `Rtc` whose DTLS hands relaycast the SRTP keying material, so
//!   that [`crate::srtp::SrtpSender`] can seal with the same keys str0m uses;
//! - [`write_header`] writes the RTP header and the header extensions the player accepted;
//! - [`ResendHistory`] keeps one core's last second of a stream's video, shared by all its
//!   subscribers there, for the packets they NACK (str0m kept a copy per subscriber).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::media::Mid;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Rtc, RtcConfig};

use crate::media::{MediaExt, MediaPacket};

/// The SRTP keys one DTLS handshake exported.
#[derive(Debug, Clone)]
pub struct SrtpKeys {
    pub profile: SrtpProfile,
    /// RFC 5764 4.2: both sides' master keys, then both sides' master salts.
    pub material: Vec<u8>,
    /// Whether this side was the DTLS client (and so sends with the client's key).
    pub client: bool,
}

/// Where an `Rtc` built by [`build_rtc`] puts its keys once its handshake is done.
pub type KeySlot = OnceLock<SrtpKeys>;

thread_local! {
    /// The slot the next DTLS instance made on this thread reports to: set by [`build_rtc`]
    /// around `RtcConfig::build`, which makes the `Rtc`'s one DTLS instance.
    static NEXT_SLOT: RefCell<Option<Arc<KeySlot>>> = const { RefCell::new(None) };
}

/// str0m's own crypto provider (aws-lc-rs), which everything but DTLS creation goes to.
fn base() -> &'static CryptoProvider {
    static BASE: OnceLock<CryptoProvider> = OnceLock::new();
    BASE.get_or_init(str0m::crypto::from_feature_flags)
}

/// The base provider with DTLS instances that report their keying material.
fn capturing_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static DTLS: CapturingDtlsProvider = CapturingDtlsProvider;
    PROVIDER
        .get_or_init(|| {
            let mut provider = base().clone();
            provider.dtls_provider = &DTLS;
            Arc::new(provider)
        })
        .clone()
}

/// Builds an `Rtc` from `config`; its SRTP keys appear in the returned slot when its DTLS
/// handshake completes, in the same `poll_output` that hands them to str0m.
pub fn build_rtc(config: RtcConfig, now: Instant) -> (Rtc, Arc<KeySlot>) {
    let slot = Arc::new(KeySlot::new());
    NEXT_SLOT.with(|next| *next.borrow_mut() = Some(Arc::clone(&slot)));
    let rtc = config.set_crypto_provider(capturing_provider()).build(now);
    // Normally taken by the DTLS instance; cleared in any case so no other Rtc gets it.
    NEXT_SLOT.with(|next| next.borrow_mut().take());
    (rtc, slot)
}

#[derive(Debug)]
struct CapturingDtlsProvider;

impl DtlsProvider for CapturingDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        base().dtls_provider.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = base()
            .dtls_provider
            .new_dtls(cert, now, dtls_version, mtu)?;
        Ok(match NEXT_SLOT.with(|next| next.borrow_mut().take()) {
            Some(slot) => Box::new(CapturingDtls { inner, slot }),
            None => inner,
        })
    }

    fn is_test(&self) -> bool {
        base().dtls_provider.is_test()
    }
}

/// A DTLS instance that copies the keying material it outputs into its slot.
#[derive(Debug)]
struct CapturingDtls {
    inner: Box<dyn DtlsInstance>,
    slot: Arc<KeySlot>,
}

impl DtlsInstance for CapturingDtls {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &output {
            let _ = self.slot.set(SrtpKeys {
                profile: *profile,
                material: material.to_vec(),
                client: self.inner.is_active(),
            });
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

/// The largest id the one-byte header extension form can carry (RFC 8285).
const MAX_ONE_BYTE_ID: u8 = 14;

/// The header extension ids a player's media line accepted, for the values relaycast writes
/// on a forwarded packet: its mid (so the player binds the SSRC to the media line) and the
/// source's audio level, video orientation and content type. Transport extensions (TWCC,
/// abs-send-time) are not written, as str0m does not write them for these peers either.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtIds {
    pub mid: Option<u8>,
    pub audio_level: Option<u8>,
    pub video_orientation: Option<u8>,
    pub video_content_type: Option<u8>,
}

impl ExtIds {
    /// The ids in `map`; None if one of them needs the two-byte form (then str0m sends).
    pub fn from_map(map: &ExtensionMap) -> Option<ExtIds> {
        let mut ids = ExtIds::default();
        for (id, ext) in map.iter() {
            let slot = match ext {
                Extension::RtpMid => &mut ids.mid,
                Extension::AudioLevel => &mut ids.audio_level,
                Extension::VideoOrientation => &mut ids.video_orientation,
                Extension::VideoContentType => &mut ids.video_content_type,
                _ => continue,
            };
            if id == 0 || id > MAX_ONE_BYTE_ID {
                return None;
            }
            *slot = Some(id);
        }
        Some(ids)
    }
}

/// Room for the longest header [`write_header`] writes: 12 bytes, the extension block's 4,
/// a 16-byte mid and three one-byte values with their id bytes, padded to a word.
pub const MAX_HEADER: usize = 12 + 4 + 17 + 3 * 2 + 3;

/// A mid as its header extension carries it, taken from str0m's `Mid` once: `Mid`'s `Deref`
/// checks and trims its string on every call, which the header of every packet would pay.
#[derive(Clone, Copy, Debug)]
pub struct MidBytes {
    bytes: [u8; 16],
    len: u8,
}

impl MidBytes {
    pub fn new(mid: &Mid) -> MidBytes {
        let text = mid.as_bytes();
        let len = text.len().min(16);
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&text[..len]);
        MidBytes {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The fields of one RTP header.
#[derive(Clone, Copy, Debug)]
pub struct HeaderFields<'a> {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    /// Written when the media line accepted the mid extension.
    pub mid: Option<&'a [u8]>,
    pub ext: MediaExt,
}

/// Writes an RTP header (RFC 3550) with the one-byte extension block (RFC 8285) into `buf`;
/// returns its length.
pub fn write_header(buf: &mut [u8; MAX_HEADER], ids: &ExtIds, h: &HeaderFields<'_>) -> usize {
    buf[1] = (h.pt & 0x7f) | if h.marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&h.seq.to_be_bytes());
    buf[4..8].copy_from_slice(&h.ts.to_be_bytes());
    buf[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
    let mut at = 16;
    let mut put = |id: Option<u8>, value: &[u8], buf: &mut [u8; MAX_HEADER]| {
        if let Some(id) = id
            && (1..=16).contains(&value.len())
        {
            buf[at] = (id << 4) | (value.len() as u8 - 1);
            buf[at + 1..at + 1 + value.len()].copy_from_slice(value);
            at += 1 + value.len();
        }
    };
    if let Some(mid) = h.mid {
        put(ids.mid, mid, buf);
    }
    if let (Some(level), Some(voice)) = (h.ext.audio_level, h.ext.voice_activity) {
        let v = if voice { 0x80 } else { 0 } | (level.unsigned_abs() & 0x7f);
        put(ids.audio_level, &[v], buf);
    }
    if let Some(o) = h.ext.video_orientation {
        put(ids.video_orientation, &[o as u8], buf);
    }
    if let Some(t) = h.ext.video_content_type {
        put(ids.video_content_type, &[t], buf);
    }
    if at == 16 {
        buf[0] = 0x80;
        return 12;
    }
    while at % 4 != 0 {
        buf[at] = 0;
        at += 1;
    }
    buf[0] = 0x90;
    buf[12..14].copy_from_slice(&[0xbe, 0xde]);
    buf[14..16].copy_from_slice(&(((at - 16) / 4) as u16).to_be_bytes());
    at
}

/// Widens a 16-bit sequence number a player reports to the 64-bit one nearest `last`, the
/// highest this side sent.
pub fn widen_seq(last: u64, seq16: u16) -> u64 {
    let behind = (last as u16).wrapping_sub(seq16) as u64;
    last.saturating_sub(behind)
}

/// The sequence numbers a NACK entry names (RFC 4585 6.2.1): `pid` and each bit of `blp`.
pub fn nacked(pid: u16, blp: u16) -> impl Iterator<Item = u16> {
    std::iter::once(pid).chain(
        (0..16)
            .filter(move |bit| blp & (1 << bit) != 0)
            .map(move |bit| pid.wrapping_add(bit + 1)),
    )
}

/// One core's recent video of one stream, in the stream's sequence space, shared by all the
/// stream's subscribers on the core: a packet a player NACKs is resent from here. Holds at
/// most `max_age` and `max_packets` of packets (the payloads are shared, not copied).
#[derive(Debug)]
pub struct ResendHistory {
    packets: VecDeque<MediaPacket>,
    max_age: Duration,
    max_packets: usize,
}

impl ResendHistory {
    pub fn new(max_age: Duration, max_packets: usize) -> Self {
        ResendHistory {
            packets: VecDeque::new(),
            max_age,
            max_packets,
        }
    }

    /// Keeps `packet`, in sequence order, and forgets what is too old.
    pub fn push(&mut self, packet: &MediaPacket) {
        while let Some(front) = self.packets.front() {
            let old = packet.arrival.saturating_duration_since(front.arrival) > self.max_age;
            if old || self.packets.len() >= self.max_packets {
                self.packets.pop_front();
            } else {
                break;
            }
        }
        match self.packets.back() {
            Some(last) if last.seq >= packet.seq => {
                // Reordered (or repeated) on the way in: placed by its number, once.
                if let Err(at) = self.position(packet.seq) {
                    self.packets.insert(at, packet.clone());
                }
            }
            _ => self.packets.push_back(packet.clone()),
        }
    }

    /// The packet with stream sequence number `seq`, if still held.
    pub fn get(&self, seq: u64) -> Option<&MediaPacket> {
        self.position(seq).ok().map(|i| &self.packets[i])
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.packets.binary_search_by_key(&seq, |p| p.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::MediaKind;
    use str0m::rtp::VideoOrientation;

    fn packet(seq: u64, arrival: Instant) -> MediaPacket {
        MediaPacket {
            kind: MediaKind::Video,
            seq,
            ts: 0,
            marker: false,
            ext: MediaExt::default(),
            payload: Arc::from(vec![seq as u8; 4]),
            arrival,
        }
    }

    #[test]
    fn a_header_without_extensions_is_twelve_bytes() {
        let mut buf = [0u8; MAX_HEADER];
        let h = HeaderFields {
            pt: 96,
            marker: true,
            seq: 0x1234,
            ts: 0xdeadbeef,
            ssrc: 0x01020304,
            mid: None,
            ext: MediaExt::default(),
        };
        let n = write_header(&mut buf, &ExtIds::default(), &h);
        assert_eq!(
            &buf[..n],
            &[0x80, 0xe0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]
        );
    }

    #[test]
    fn extensions_are_written_in_the_one_byte_form_and_padded() {
        let mut buf = [0u8; MAX_HEADER];
        let mid = MidBytes::new(&Mid::from("1"));
        let ids = ExtIds {
            mid: Some(4),
            audio_level: Some(1),
            video_orientation: Some(13),
            video_content_type: None,
        };
        let h = HeaderFields {
            pt: 111,
            marker: false,
            seq: 7,
            ts: 960,
            ssrc: 42,
            mid: Some(mid.as_slice()),
            ext: MediaExt {
                audio_level: Some(-37),
                voice_activity: Some(true),
                video_orientation: Some(VideoOrientation::Deg90),
                video_content_type: Some(1),
            },
        };
        let n = write_header(&mut buf, &ids, &h);
        // mid (id 4, 1 byte "1"), audio level (id 1: V bit and 37), orientation (id 13);
        // the content type has no id. 6 bytes of elements, padded to 8.
        assert_eq!(n, 12 + 4 + 8);
        assert_eq!(buf[0], 0x90);
        assert_eq!(&buf[12..16], &[0xbe, 0xde, 0, 2]);
        assert_eq!(
            &buf[16..24],
            &[
                0x40,
                b'1',
                0x10,
                0x80 | 37,
                0xd0,
                VideoOrientation::Deg90 as u8,
                0,
                0
            ]
        );
    }

    #[test]
    fn ids_that_need_the_two_byte_form_are_refused() {
        let mut map = ExtensionMap::empty();
        map.set(4, Extension::RtpMid);
        map.set(13, Extension::VideoOrientation);
        let ids = ExtIds::from_map(&map).expect("one-byte ids");
        assert_eq!(ids.mid, Some(4));
        assert_eq!(ids.video_orientation, Some(13));
        map.set(15, Extension::AudioLevel);
        assert_eq!(ExtIds::from_map(&map), None);
    }

    #[test]
    fn nack_entries_name_pid_and_the_bits_after_it() {
        assert_eq!(nacked(100, 0).collect::<Vec<_>>(), vec![100]);
        assert_eq!(nacked(65535, 0b101).collect::<Vec<_>>(), vec![65535, 0, 2]);
    }

    #[test]
    fn sequence_numbers_widen_to_the_nearest_sent() {
        assert_eq!(widen_seq(70_000, 70_000u64 as u16), 70_000);
        assert_eq!(widen_seq(70_000, (69_990u64) as u16), 69_990);
        // Across a wrap of the 16-bit number.
        assert_eq!(widen_seq(65_540, 65_530u16), 65_530);
        assert_eq!(widen_seq(5, 65_535), 0);
    }

    #[test]
    fn the_history_keeps_a_second_in_order_and_finds_by_number() {
        let t0 = Instant::now();
        let mut h = ResendHistory::new(Duration::from_secs(1), 100);
        for seq in 10..20 {
            h.push(&packet(seq, t0));
        }
        h.push(&packet(25, t0));
        h.push(&packet(21, t0)); // reordered
        h.push(&packet(21, t0)); // repeated
        assert_eq!(h.len(), 12);
        assert_eq!(h.get(21).map(|p| p.seq), Some(21));
        assert!(h.get(22).is_none());
        assert_eq!(&*h.get(12).unwrap().payload, &[12u8; 4]);
        // 1.5 s later everything before is gone.
        h.push(&packet(26, t0 + Duration::from_millis(1500)));
        assert_eq!(h.len(), 1);
        assert!(h.get(12).is_none());
    }

    #[test]
    fn the_history_is_bounded_in_packets() {
        let t0 = Instant::now();
        let mut h = ResendHistory::new(Duration::from_secs(1), 5);
        for seq in 0..12 {
            h.push(&packet(seq, t0));
        }
        assert_eq!(h.len(), 5);
        assert!(h.get(6).is_none());
        assert!(h.get(7).is_some());
    }
}
