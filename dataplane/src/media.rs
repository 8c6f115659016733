//! What a stream carries and how its packets travel: the codec chosen per kind
//! ([`StreamMedia`]), the decrypted packet shared by every subscriber ([`MediaPacket`]), and
//! the rewriting that keeps a stream's sequence numbers and timestamps continuous when its
//! source is replaced ([`TrackRewriter`]). See docs/sdp.md for why one codec per kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::MediaKind;
use str0m::rtp::{ExtensionValues, VideoOrientation};

/// The codec of each kind a stream carries, with the payload type its source uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamMedia {
    pub audio: Option<PayloadParams>,
    pub video: Option<PayloadParams>,
}

/// Where a stream's tracks left off when its source went away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Continuity {
    pub audio: Option<TrackEnd>,
    pub video: Option<TrackEnd>,
}

/// The last sequence number and timestamp a stream track emitted, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackEnd {
    pub seq: u64,
    pub ts: u32,
    pub at: Instant,
}

/// One decrypted RTP packet of a stream, in the stream's own sequence and timestamp space.
/// The payload is shared (never copied) by every subscriber on every core.
#[derive(Clone, Debug)]
pub struct MediaPacket {
    pub kind: MediaKind,
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub ext: MediaExt,
    pub payload: Arc<[u8]>,
    pub arrival: Instant,
}

/// The header extensions a forwarded packet keeps; transport ones (TWCC, abs-send-time, mid)
/// are per hop and written by str0m itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaExt {
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
    pub video_content_type: Option<u8>,
}

/// Audio codecs the server forwards, in order of preference when a client offers several.
pub const AUDIO_CODECS: [Codec; 4] = [Codec::Opus, Codec::G722, Codec::PCMU, Codec::PCMA];
/// Video codecs the server forwards.
pub const VIDEO_CODECS: [Codec; 5] = [Codec::Vp8, Codec::H264, Codec::Vp9, Codec::Av1, Codec::H265];

impl StreamMedia {
    /// The codec of one kind.
    pub fn track(&self, kind: MediaKind) -> Option<&PayloadParams> {
        match kind {
            MediaKind::Audio => self.audio.as_ref(),
            MediaKind::Video => self.video.as_ref(),
        }
    }

    /// Whether the stream has no track at all.
    pub fn is_empty(&self) -> bool {
        self.audio.is_none() && self.video.is_none()
    }

    /// WCS's name for the audio codec (`opus`, `PCMU`, ...).
    pub fn audio_codec(&self) -> Option<&'static str> {
        self.audio.map(|p| codec_label(p.spec().codec))
    }

    /// WCS's name for the video codec (`VP8`, `H264`, ...).
    pub fn video_codec(&self) -> Option<&'static str> {
        self.video.map(|p| codec_label(p.spec().codec))
    }

    /// Whether a replacement source carries the same codecs (payload types may differ).
    pub fn same_codecs(&self, other: &StreamMedia) -> bool {
        let spec = |p: Option<PayloadParams>| p.map(|p| p.spec());
        spec(self.audio) == spec(other.audio) && spec(self.video) == spec(other.video)
    }
}

/// The name WCS uses for a codec in status events and REST objects.
pub fn codec_label(codec: Codec) -> &'static str {
    match codec {
        Codec::Opus => "opus",
        Codec::PCMU => "PCMU",
        Codec::PCMA => "PCMA",
        Codec::G722 => "G722",
        Codec::H264 => "H264",
        Codec::H265 => "H265",
        Codec::Vp8 => "VP8",
        Codec::Vp9 => "VP9",
        Codec::Av1 => "AV1",
        _ => "unknown",
    }
}

/// Picks, for a publisher's offer, the first codec of each kind the offer lists (in the
/// order of its `m=` line, i.e. the client's preference) that the server forwards. RTX,
/// RED, FEC and orphan payload types are never chosen: matching is by codec name.
pub fn choose_ingest_codecs(offer: &SdpOffer) -> StreamMedia {
    let mut media = StreamMedia::default();
    for line in offer.media_lines.iter() {
        if line.disabled || !line.direction().is_sending() {
            continue;
        }
        let mut params = line.rtp_params();
        params.retain(|p| {
            let codec = p.spec().codec;
            AUDIO_CODECS.contains(&codec) || VIDEO_CODECS.contains(&codec)
        });
        params.sort_by_key(|p| line.pts.iter().position(|pt| *pt == p.pt()));
        let Some(first) = params.first().copied() else {
            continue;
        };
        let slot = if first.spec().codec.is_audio() {
            &mut media.audio
        } else {
            &mut media.video
        };
        if slot.is_none() {
            *slot = Some(first);
        }
    }
    media
}

/// Kinds a player's offer asks to receive.
pub fn offered_kinds(offer: &SdpOffer) -> (bool, bool) {
    let mut audio = false;
    let mut video = false;
    for line in offer.media_lines.iter() {
        if line.disabled || !line.direction().is_receiving() {
            continue;
        }
        for p in line.rtp_params() {
            let codec = p.spec().codec;
            audio |= codec.is_audio() && AUDIO_CODECS.contains(&codec);
            video |= codec.is_video() && VIDEO_CODECS.contains(&codec);
        }
    }
    (audio, video)
}

impl MediaExt {
    /// Keeps the media-level extensions of a received packet.
    pub fn from_values(v: &ExtensionValues) -> Self {
        MediaExt {
            audio_level: v.audio_level,
            voice_activity: v.voice_activity,
            video_orientation: v.video_orientation,
            video_content_type: v.video_content_type,
        }
    }

    /// The values to write on a forwarded packet.
    pub fn to_values(self) -> ExtensionValues {
        ExtensionValues {
            audio_level: self.audio_level,
            voice_activity: self.voice_activity,
            video_orientation: self.video_orientation,
            video_content_type: self.video_content_type,
            ..Default::default()
        }
    }
}

/// Maps a source's (SSRC, extended sequence number, timestamp) into the stream's own space.
/// While the source stays the same the mapping is a constant offset (gaps and reordering
/// pass through); when a new SSRC appears, the offsets are chosen so that the stream's
/// sequence continues at the next number and its timestamp advances by the wall time that
/// passed, so subscribers see one continuous track across a source change.
#[derive(Debug)]
pub struct TrackRewriter {
    clock_rate: u32,
    source: Option<u32>,
    seq_offset: i64,
    ts_offset: u32,
    last: Option<TrackEnd>,
}

/// Where a brand-new stream's sequence numbers start: far enough from zero that packets
/// reordered before the first one still map to a positive number.
const FIRST_STREAM_SEQ: u64 = 1 << 20;

impl TrackRewriter {
    /// A rewriter for a track with the given RTP clock rate, continuing `previous` if the
    /// stream had an earlier source.
    pub fn new(clock_rate: u32, previous: Option<TrackEnd>) -> Self {
        TrackRewriter {
            clock_rate,
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            last: previous,
        }
    }

    /// The stream sequence number and timestamp for one packet of the source.
    pub fn rewrite(&mut self, ssrc: u32, seq: u64, ts: u32, now: Instant) -> (u64, u32) {
        if self.source != Some(ssrc) {
            let (next_seq, next_ts) = match self.last {
                Some(end) => {
                    let elapsed = now.saturating_duration_since(end.at);
                    (end.seq + 1, end.ts.wrapping_add(self.ticks(elapsed).max(1)))
                }
                None => (FIRST_STREAM_SEQ, ts),
            };
            self.seq_offset = next_seq as i64 - seq as i64;
            self.ts_offset = next_ts.wrapping_sub(ts);
            self.source = Some(ssrc);
        }
        let out_seq = (seq as i64 + self.seq_offset).max(0) as u64;
        let out_ts = ts.wrapping_add(self.ts_offset);
        if self.last.is_none_or(|l| out_seq > l.seq) {
            self.last = Some(TrackEnd {
                seq: out_seq,
                ts: out_ts,
                at: now,
            });
        }
        (out_seq, out_ts)
    }

    /// Where the track left off.
    pub fn end(&self) -> Option<TrackEnd> {
        self.last
    }

    fn ticks(&self, d: Duration) -> u32 {
        (d.as_micros() as u64 * self.clock_rate as u64 / 1_000_000) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_PUBLISH_H264_FIRST: &str = "v=0\r\n\
o=- 1 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS s\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 97 102 103 96 98\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=sendonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:103 rtx/90000\r\n\
a=fmtp:103 apt=102\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtpmap:98 VP9/90000\r\n";

    #[test]
    fn chooses_first_named_codec_not_orphan_rtx() {
        let offer = SdpOffer::from_sdp_string(CHROME_PUBLISH_H264_FIRST).unwrap();
        let media = choose_ingest_codecs(&offer);
        let video = media.video.expect("video chosen");
        assert_eq!(video.spec().codec, Codec::H264);
        assert_eq!(*video.pt(), 102);
        assert_eq!(video.resend().map(|p| *p), Some(103));
        let audio = media.audio.expect("audio chosen");
        assert_eq!(audio.spec().codec, Codec::Opus);
        assert_eq!(media.video_codec(), Some("H264"));
        assert_eq!(media.audio_codec(), Some("opus"));
    }

    #[test]
    fn rewriter_passes_gaps_and_continues_after_source_change() {
        let t0 = Instant::now();
        let mut rw = TrackRewriter::new(90_000, None);
        let (a, ta) = rw.rewrite(1, 100, 5_000, t0);
        let (b, _) = rw.rewrite(1, 102, 8_000, t0);
        assert_eq!(b, a + 2, "gap preserved");
        let (late, _) = rw.rewrite(1, 101, 6_500, t0);
        assert_eq!(late, a + 1, "reordered packet keeps its place");
        // New source after 1 s: continues at b + 1, timestamp advanced by ~90_000.
        let t1 = t0 + Duration::from_secs(1);
        let (c, tc) = rw.rewrite(2, 7, 123, t1);
        assert_eq!(c, b + 1);
        let advanced = tc.wrapping_sub(ta.wrapping_add(3_000));
        assert!((89_000..=91_000).contains(&advanced), "advanced {advanced}");
        let (d, td) = rw.rewrite(2, 8, 123 + 3_000, t1);
        assert_eq!((d, td), (c + 1, tc.wrapping_add(3_000)));
    }

    #[test]
    fn rewriter_continues_a_previous_track() {
        let t0 = Instant::now();
        let prev = TrackEnd {
            seq: 5_000,
            ts: u32::MAX - 10,
            at: t0,
        };
        let mut rw = TrackRewriter::new(48_000, Some(prev));
        let (s, t) = rw.rewrite(9, 1, 0, t0 + Duration::from_millis(20));
        assert_eq!(s, 5_001);
        assert_eq!(t, (u32::MAX - 10).wrapping_add(960));
    }
}

/// The picture size a video keyframe announces: VP8 from its keyframe header (RFC 6386
/// 9.1, behind the RFC 7741 payload descriptor), H264 from a sequence parameter set sent
/// alone or in a STAP-A (RFC 6184). `None` for other packets and codecs.
pub fn video_resolution(codec: Codec, payload: &[u8]) -> Option<(u32, u32)> {
    match codec {
        Codec::Vp8 => vp8_resolution(payload),
        Codec::H264 => h264_resolution(payload),
        _ => None,
    }
}

fn vp8_resolution(p: &[u8]) -> Option<(u32, u32)> {
    let first = *p.first()?;
    // Only the first packet of a partition-0 frame (S=1, PID=0) carries the frame header.
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return None;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let ext = *p.get(1)?;
        at = 2;
        if ext & 0x80 != 0 {
            at += if *p.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    let frame = p.get(at..at + 10)?;
    // Frame tag bit 0 clear: keyframe; then the start code 9d 01 2a.
    if frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    (width > 0 && height > 0).then_some((width, height))
}

fn h264_resolution(p: &[u8]) -> Option<(u32, u32)> {
    let nal_type = p.first()? & 0x1f;
    match nal_type {
        7 => sps_resolution(p),
        // STAP-A: 16-bit sizes, each followed by a NAL unit.
        24 => {
            let mut rest = &p[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + size)?;
                if nal.first().is_some_and(|b| b & 0x1f == 7) {
                    return sps_resolution(nal);
                }
                rest = &rest[2 + size..];
            }
            None
        }
        _ => None,
    }
}

fn sps_resolution(nal: &[u8]) -> Option<(u32, u32)> {
    use h264_reader::nal::sps::SeqParameterSet;
    use h264_reader::rbsp::{BitReader, decode_nal};
    let rbsp = decode_nal(nal).ok()?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&*rbsp)).ok()?;
    sps.pixel_dimensions().ok()
}

#[cfg(test)]
mod resolution_tests {
    use super::*;

    #[test]
    fn vp8_keyframe_header_gives_the_size() {
        // Descriptor with X, I (15-bit picture id), then a keyframe tag and 640x480.
        let payload = [
            0x90, 0x80, 0x80, 0x01, // X+S, I, picture id
            0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0x00,
        ];
        assert_eq!(video_resolution(Codec::Vp8, &payload), Some((640, 480)));
        // A delta frame (tag bit 0 set) and a continuation packet (S=0) say nothing.
        let mut delta = payload;
        delta[4] |= 1;
        assert_eq!(video_resolution(Codec::Vp8, &delta), None);
        let mut cont = payload;
        cont[0] &= !0x10;
        assert_eq!(video_resolution(Codec::Vp8, &cont), None);
        assert_eq!(video_resolution(Codec::Vp8, &[0x10, 0x00]), None);
    }

    #[test]
    fn h264_sps_gives_the_size_alone_and_in_stap_a() {
        // A Constrained Baseline 640x480 SPS (level 3.0) as browsers send it.
        let sps = [
            0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xa1, 0x00, 0x00, 0x03, 0x00, 0x01,
            0x00, 0x00, 0x03, 0x00, 0x3c, 0x8f, 0x16, 0x2e, 0x48,
        ];
        assert_eq!(video_resolution(Codec::H264, &sps), Some((640, 480)));
        let mut stap = vec![24u8, 0, 4, 0x09, 0x10, 0x00, 0x00];
        stap.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        stap.extend_from_slice(&sps);
        assert_eq!(video_resolution(Codec::H264, &stap), Some((640, 480)));
        assert_eq!(video_resolution(Codec::H264, &[0x65, 0x88]), None);
        assert_eq!(video_resolution(Codec::H264, &[24, 0, 200, 1]), None);
        assert_eq!(video_resolution(Codec::Opus, &sps), None);
    }
}
