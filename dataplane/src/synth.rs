//! Synthetic media for tests and load generation: [`Generator`] emits RFC-correct VP8, H264 and
//! Opus-sized RTP payloads (plus marker bit and RTP time), each ending in a measurable [`Trailer`];
//! [`Probe`] turns received payloads into loss, reordering, keyframe and one-way latency figures.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Length of the measurement trailer that ends every synthetic payload.
pub const TRAILER_LEN: usize = 24;

/// Media kind of a synthetic packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Opus-sized audio on a 48 kHz RTP clock.
    Audio,
    /// VP8 or H264 video on a 90 kHz RTP clock.
    Video,
}

/// Video codec whose RTP payload format the generator emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8 with the RFC 7741 payload descriptor.
    Vp8,
    /// H264 with RFC 6184 packetization-mode=1 (single NAL unit, STAP-A, FU-A).
    H264,
}

impl FromStr for VideoCodec {
    type Err = UnknownCodec;

    /// Parses `"vp8"` or `"h264"`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("vp8") {
            Ok(Self::Vp8)
        } else if s.eq_ignore_ascii_case("h264") {
            Ok(Self::H264)
        } else {
            Err(UnknownCodec(s.to_owned()))
        }
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vp8 => "vp8",
            Self::H264 => "h264",
        })
    }
}

/// Error of [`VideoCodec::from_str`]: holds the name that was not recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCodec(pub String);

impl fmt::Display for UnknownCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown video codec {:?}: expected \"vp8\" or \"h264\"",
            self.0
        )
    }
}

impl std::error::Error for UnknownCodec {}

/// What a [`Generator`] sends.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Video codec, or `None` for no video track.
    pub video: Option<VideoCodec>,
    /// Whether to send an Opus-sized audio frame every 20 ms.
    pub audio: bool,
    /// Target video bitrate in bits per second, counting whole RTP payloads. The average over a
    /// keyframe interval matches it: delta frames are sized so that the 3x keyframe fits.
    pub video_bitrate_bps: u64,
    /// Video frames per second (0 is treated as 1).
    pub fps: u32,
    /// Time between periodic keyframes; `Duration::ZERO` makes every frame a keyframe and
    /// `Duration::MAX` leaves only the first frame and requested ones.
    pub keyframe_interval: Duration,
    /// Audio payload size including the trailer (raised to [`TRAILER_LEN`] if smaller).
    pub audio_bytes: usize,
    /// Largest RTP payload emitted (raised to 128 if smaller).
    pub max_payload: usize,
    /// Video packets leave one at a time at this multiple of `video_bitrate_bps` instead of a
    /// frame's packets all at once, as a strict pacer sends them (libwebrtc paces at 2.5x the
    /// target bitrate, but lets up to 40 ms at that rate go at once, so Chrome sends a frame
    /// together); each packet's trailer is stamped when it leaves. `None` sends each frame
    /// together. Audio is never paced.
    pub pacing_factor: Option<f64>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            video: Some(VideoCodec::Vp8),
            audio: true,
            video_bitrate_bps: 1_500_000,
            fps: 30,
            keyframe_interval: Duration::from_secs(2),
            audio_bytes: 160,
            max_payload: 1100,
            pacing_factor: None,
        }
    }
}

/// One RTP payload with the header fields the caller needs to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthPacket {
    /// Track the packet belongs to.
    pub kind: Kind,
    /// RTP marker bit: set on the last packet of a video frame, never on audio.
    pub marker: bool,
    /// RTP timestamp (90 kHz video, 48 kHz audio), shared by all packets of a frame.
    pub rtp_time: u32,
    /// Whether the packet belongs to a keyframe (including H264 parameter sets).
    pub keyframe: bool,
    /// RTP payload, ending in a [`Trailer`].
    pub payload: Vec<u8>,
}

/// Counters of a [`Generator`] since its creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GeneratorStats {
    /// Audio packets emitted.
    pub audio_packets: u64,
    /// Audio payload bytes emitted.
    pub audio_bytes: u64,
    /// Video packets emitted.
    pub video_packets: u64,
    /// Video payload bytes emitted.
    pub video_bytes: u64,
    /// Audio frames emitted (one packet each).
    pub audio_frames: u64,
    /// Video frames emitted.
    pub video_frames: u64,
    /// Video keyframes emitted, periodic and requested.
    pub keyframes: u64,
    /// Calls to [`Generator::request_keyframe`].
    pub keyframe_requests: u64,
    /// Frames (audio and video) never emitted because `poll` skipped ahead after a stall.
    pub skipped_frames: u64,
}

/// Paces and builds synthetic audio and video frames.
#[derive(Debug)]
pub struct Generator {
    audio: Option<AudioTrack>,
    video: Option<VideoTrack>,
    idle_deadline: Instant,
    stats: GeneratorStats,
}

impl Generator {
    /// Creates a generator whose first frames are due at `start`.
    pub fn new(cfg: SynthConfig, start: Instant) -> Self {
        let fps = u64::from(cfg.fps.max(1));
        let audio = cfg.audio.then(|| AudioTrack {
            clock: FrameClock::new(
                start,
                AUDIO_FPS,
                AUDIO_CLOCK_HZ,
                random_u64(start, 0) as u32,
            ),
            bytes: cfg.audio_bytes.max(TRAILER_LEN),
            seq: 0,
        });
        let video = cfg.video.map(|codec| {
            // Keyframes are 3x a delta frame; size delta frames so that one keyframe per interval
            // plus delta frames average to the configured bitrate.
            let average = cfg.video_bitrate_bps as f64 / 8.0 / fps as f64;
            let per_interval = (cfg.keyframe_interval.as_secs_f64() * fps as f64).max(1.0);
            let delta = average * per_interval / (per_interval + 2.0);
            let seed = random_u64(start, 1);
            VideoTrack {
                codec,
                clock: FrameClock::new(start, fps, VIDEO_CLOCK_HZ, seed as u32),
                seq: 0,
                max_payload: cfg.max_payload.max(MIN_MAX_PAYLOAD),
                delta_bytes: (delta.round() as usize).max(MIN_FRAME_BYTES),
                variation: None,
                rng: fastrand::Rng::with_seed(DELTA_SIZES_SEED),
                key_bytes: ((delta * 3.0).round() as usize).max(MIN_FRAME_BYTES),
                keyframe_interval: cfg.keyframe_interval,
                last_keyframe: None,
                keyframe_pending: false,
                picture_id: (seed >> 32) as u16 & VP8_PICTURE_ID_MASK,
                param_sets: h264_param_sets(),
                pacer: cfg
                    .pacing_factor
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(|factor| Pacer::new(factor * cfg.video_bitrate_bps as f64, start)),
            }
        });
        Self {
            audio,
            video,
            idle_deadline: start + IDLE_DEADLINE,
            stats: GeneratorStats::default(),
        }
    }

    /// Earliest instant at which poll() has something to emit.
    ///
    /// Without any track this is an hour after the last poll.
    pub fn next_deadline(&self) -> Instant {
        let audio = self.audio.as_ref().map(|a| a.clock.deadline());
        let video = self.video.as_ref().map(|v| v.deadline());
        match (audio, video) {
            (Some(a), Some(v)) => a.min(v),
            (Some(d), None) | (None, Some(d)) => d,
            (None, None) => self.idle_deadline,
        }
    }

    /// Appends every packet due at `now` (audio frames every 20 ms, video frames every 1/fps) to
    /// `out`, in deadline order. `unix_micros` is the wall clock (microseconds since UNIX epoch)
    /// written into each trailer. If a track is more than 500 ms behind (the process stalled), it
    /// skips ahead to the latest due frame instead of bursting; RTP time still follows the clock.
    pub fn poll(&mut self, now: Instant, unix_micros: u64, out: &mut Vec<SynthPacket>) {
        self.idle_deadline = now + IDLE_DEADLINE;
        if let Some(audio) = &mut self.audio {
            self.stats.skipped_frames += audio.clock.catch_up(now);
        }
        if let Some(video) = &mut self.video {
            self.stats.skipped_frames += video.clock.catch_up(now);
        }
        loop {
            let audio_due = self
                .audio
                .as_ref()
                .map(|a| a.clock.deadline())
                .filter(|d| *d <= now);
            let video_due = self
                .video
                .as_ref()
                .map(|v| v.clock.deadline())
                .filter(|d| *d <= now);
            match (&mut self.audio, &mut self.video, audio_due, video_due) {
                (Some(audio), _, Some(a), Some(v)) if a <= v => {
                    audio.emit(unix_micros, &mut self.stats, out);
                }
                (_, Some(video), _, Some(_)) => video.emit(unix_micros, &mut self.stats, out),
                (Some(audio), _, Some(_), None) => audio.emit(unix_micros, &mut self.stats, out),
                _ => break,
            }
        }
        if let Some(video) = &mut self.video {
            video.release(now, unix_micros, &mut self.stats, out);
        }
    }

    /// Make the next video frame a keyframe (PLI/FIR received). Counted.
    pub fn request_keyframe(&mut self) {
        self.stats.keyframe_requests += 1;
        if let Some(video) = &mut self.video {
            video.keyframe_pending = true;
        }
    }

    /// Packets and bytes sent per kind, frames, keyframes sent, keyframe requests received.
    pub fn stats(&self) -> GeneratorStats {
        self.stats
    }
}

/// The measurement trailer found in the last [`TRAILER_LEN`] bytes of every synthetic payload:
/// magic `RCST`, kind byte (0 audio, 1 video), 3 zero bytes, u64 BE sequence, u64 BE send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Track the packet belongs to.
    pub kind: Kind,
    /// Per-kind packet sequence number, starting at 0.
    pub seq: u64,
    /// Send time in microseconds since the UNIX epoch.
    pub sent_unix_micros: u64,
}

impl Trailer {
    /// Encodes the trailer as it appears at the end of a payload.
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut bytes = [0; TRAILER_LEN];
        bytes[..4].copy_from_slice(&TRAILER_MAGIC);
        bytes[4] = match self.kind {
            Kind::Audio => 0,
            Kind::Video => 1,
        };
        bytes[8..16].copy_from_slice(&self.seq.to_be_bytes());
        bytes[16..].copy_from_slice(&self.sent_unix_micros.to_be_bytes());
        bytes
    }
}

/// Reads the trailer at the end of `payload`; `None` for short or foreign payloads (wrong magic,
/// unknown kind byte or non-zero reserved bytes).
pub fn read_trailer(payload: &[u8]) -> Option<Trailer> {
    let start = payload.len().checked_sub(TRAILER_LEN)?;
    let t = payload.get(start..)?;
    if t.get(..4)? != TRAILER_MAGIC || t.get(5..8)? != [0; 3] {
        return None;
    }
    let kind = match t.get(4)? {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return None,
    };
    Some(Trailer {
        kind,
        seq: u64::from_be_bytes(t.get(8..16)?.try_into().ok()?),
        sent_unix_micros: u64::from_be_bytes(t.get(16..24)?.try_into().ok()?),
    })
}

/// Current wall clock in microseconds since the UNIX epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Whether `payload` is the first packet of a keyframe.
///
/// VP8: S=1, PID=0 and the payload header's P bit is 0. H264: an IDR NAL unit, a STAP-A holding an
/// SPS or IDR, or the FU-A fragment that starts an IDR.
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_is_keyframe(payload),
        VideoCodec::H264 => h264_is_keyframe(payload),
    }
}

/// Receiver statistics over synthetic payloads.
///
/// Trailer sequences are tracked per kind, so use one probe per publisher. Loss is tracked over a
/// sliding window of the last 1024 sequence numbers per kind: a packet arriving later than that
/// counts as reordered and its loss stands.
#[derive(Clone, Debug)]
pub struct Probe {
    totals: ProbeReport,
    audio: SeqWindow,
    video: SeqWindow,
    rtp_seqs: HashMap<u32, u16>,
    latency: Histogram<u64>,
    latency_sum: u128,
    latency_max: u64,
    param_sets_seq: Option<u64>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    /// Creates a probe with nothing recorded.
    pub fn new() -> Self {
        Self {
            totals: ProbeReport::default(),
            audio: SeqWindow::default(),
            video: SeqWindow::default(),
            rtp_seqs: HashMap::new(),
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("constant histogram bounds are valid"),
            latency_sum: 0,
            latency_max: 0,
            param_sets_seq: None,
        }
    }

    /// Record one received RTP packet. `ssrc` and `rtp_seq` are the RTP header's (u16 seq);
    /// `payload` the RTP payload. `now_unix_micros` is the receive wall clock; `now` the receive
    /// Instant.
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        rtp_seq: u16,
        payload: &[u8],
        now_unix_micros: u64,
        now: Instant,
    ) {
        let totals = &mut self.totals;
        totals.packets += 1;
        totals.bytes += payload.len() as u64;
        totals.first_packet_at.get_or_insert(now);
        totals.last_packet_at = Some(now);
        self.track_rtp_seq(ssrc, rtp_seq);

        let Some(trailer) = read_trailer(payload) else {
            self.totals.foreign_packets += 1;
            return;
        };
        let window = match trailer.kind {
            Kind::Audio => {
                self.totals.audio_packets += 1;
                &mut self.audio
            }
            Kind::Video => {
                self.totals.video_packets += 1;
                &mut self.video
            }
        };
        match window.record(trailer.seq, trailer.sent_unix_micros) {
            Arrival::Duplicate => {
                self.totals.duplicates += 1;
                return;
            }
            Arrival::Late => self.totals.reordered += 1,
            Arrival::InOrder => {}
            Arrival::Restart => {
                if trailer.kind == Kind::Video {
                    self.param_sets_seq = None;
                }
            }
        }

        let latency = now_unix_micros.saturating_sub(trailer.sent_unix_micros);
        self.latency.saturating_record(latency);
        self.latency_sum += u128::from(latency);
        self.latency_max = self.latency_max.max(latency);

        if trailer.kind == Kind::Video {
            self.count_keyframe(trailer.seq, payload);
        }
    }

    /// Cumulative counts, with latency over the current window.
    pub fn report(&self) -> ProbeReport {
        let mut report = self.totals.clone();
        report.lost = self.audio.lost().saturating_add(self.video.lost());
        report.audio_seqs = self.audio.span();
        report.video_seqs = self.video.span();
        report.latency_us = self.latency_summary();
        report
    }

    /// Starts a new measurement window for latency histogram (counts stay cumulative).
    pub fn reset_window(&mut self) {
        self.latency.reset();
        self.latency_sum = 0;
        self.latency_max = 0;
    }

    /// Latency histogram (microseconds) of the current window, to merge many probes with
    /// `Histogram::add`.
    pub fn latency_histogram(&self) -> &Histogram<u64> {
        &self.latency
    }

    fn track_rtp_seq(&mut self, ssrc: u32, seq: u16) {
        if let Some(last) = self.rtp_seqs.get_mut(&ssrc) {
            if (seq.wrapping_sub(*last) as i16) < 0 {
                self.totals.rtp_out_of_order += 1;
            } else {
                *last = seq;
            }
            return;
        }
        if self.rtp_seqs.len() >= MAX_TRACKED_SSRCS {
            self.rtp_seqs.clear();
        }
        self.rtp_seqs.insert(ssrc, seq);
    }

    /// Counts a keyframe once even when H264 parameter sets precede the IDR in their own packet.
    fn count_keyframe(&mut self, seq: u64, payload: &[u8]) {
        let h264 = is_keyframe(VideoCodec::H264, payload);
        if !h264 && !is_keyframe(VideoCodec::Vp8, payload) {
            return;
        }
        let param_sets = h264
            && payload
                .first()
                .is_some_and(|b| b & NAL_TYPE_MASK == NAL_STAP_A);
        let follows_param_sets = h264
            && !param_sets
            && self
                .param_sets_seq
                .is_some_and(|s| s.checked_add(1) == Some(seq));
        self.param_sets_seq = param_sets.then_some(seq);
        if !follows_param_sets {
            self.totals.keyframes += 1;
        }
    }

    fn latency_summary(&self) -> LatencySummary {
        let count = self.latency.len();
        if count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count,
            p50: self.latency.value_at_quantile(0.50),
            p95: self.latency.value_at_quantile(0.95),
            p99: self.latency.value_at_quantile(0.99),
            max: self.latency_max,
            mean: self.latency_sum as f64 / count as f64,
        }
    }
}

/// Snapshot of a [`Probe`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeReport {
    /// Packets received, including foreign ones and duplicates.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Packets with an audio trailer.
    pub audio_packets: u64,
    /// Packets with a video trailer.
    pub video_packets: u64,
    /// Payloads without a valid trailer.
    pub foreign_packets: u64,
    /// Trailer sequence numbers missing per kind (gaps later filled are not lost).
    pub lost: u64,
    /// Packets whose trailer sequence was already received.
    pub duplicates: u64,
    /// Packets whose trailer sequence is below the highest seen for that kind.
    pub reordered: u64,
    /// Per-SSRC RTP sequence regressions (u16 wraparound handled).
    pub rtp_out_of_order: u64,
    /// The audio trailer sequences received so far (not serialized): where the current source
    /// started and the highest. With what the publisher sent, this says what a player that
    /// stopped receiving has missed since its last packet, which `lost` cannot see.
    #[serde(skip)]
    pub audio_seqs: Option<SeqSpan>,
    /// The same for video.
    #[serde(skip)]
    pub video_seqs: Option<SeqSpan>,
    /// When the first packet arrived (not serialized).
    #[serde(skip)]
    pub first_packet_at: Option<Instant>,
    /// When the last packet arrived (not serialized).
    #[serde(skip)]
    pub last_packet_at: Option<Instant>,
    /// One-way latency from trailer send time to receive time, negatives clamped to 0, over the
    /// current window; duplicates are not recorded.
    pub latency_us: LatencySummary,
    /// Keyframes received (an H264 STAP-A of parameter sets and its IDR count once).
    pub keyframes: u64,
}

/// The trailer sequences of one kind a [`Probe`] has seen from its current source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqSpan {
    /// The first sequence received: nothing below it counts as lost.
    pub first: u64,
    /// The highest sequence received.
    pub highest: u64,
}

/// Latency distribution in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest sample (exact, not capped at the histogram's 60 s).
    pub max: u64,
    /// Exact mean.
    pub mean: f64,
}

const TRAILER_MAGIC: [u8; 4] = *b"RCST";
const AUDIO_FPS: u64 = 50;
const AUDIO_CLOCK_HZ: u64 = 48_000;
const VIDEO_CLOCK_HZ: u64 = 90_000;
/// How far behind a track may fall before `poll` skips ahead instead of catching up.
const STALL: Duration = Duration::from_millis(500);
/// Deadline reported when no track is configured.
const IDLE_DEADLINE: Duration = Duration::from_secs(3600);
/// Room for the largest header (VP8 keyframe: 14 bytes) plus the trailer, twice over.
const MIN_MAX_PAYLOAD: usize = 128;
/// How far a delta frame's size strays from the average, as a share of it.
const DELTA_VARIATION: f64 = 0.1;
/// The delta frames' sizes follow one pseudo-random sequence, the same for every stream and
/// run, so that runs (and a paced and an unpaced publisher) send the same frames.
const DELTA_SIZES_SEED: u64 = 0x005e_edf7_a3e5_12e5;
const MIN_FRAME_BYTES: usize = 64;
/// First byte of an Opus packet: config 31 (CELT fullband 20 ms), mono, one frame.
const OPUS_TOC: u8 = 0xf8;
const LATENCY_MAX_US: u64 = 60_000_000;
const MAX_TRACKED_SSRCS: usize = 1024;
/// Sequence numbers per kind whose arrival is remembered.
const WINDOW: u64 = 1024;
/// A trailer sequence this far below the highest seen starts a new source.
const RESTART_GAP: u64 = 10_000;
/// A lower trailer sequence sent this much later than anything seen starts a new source.
const RESTART_CLOCK_MARGIN_US: u64 = 250_000;

const VP8_X: u8 = 0x80;
const VP8_S: u8 = 0x10;
const VP8_PID_MASK: u8 = 0x07;
const VP8_I: u8 = 0x80;
const VP8_L: u8 = 0x40;
const VP8_TK: u8 = 0x30;
const VP8_M: u8 = 0x80;
const VP8_PICTURE_ID_MASK: u16 = 0x7fff;
const VP8_SHOW_FRAME: u8 = 0x10;
const VP8_INTER: u8 = 0x01;
const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
const VP8_WIDTH: u16 = 640;
const VP8_HEIGHT: u16 = 360;

const NAL_FORBIDDEN: u8 = 0x80;
const NAL_NRI_MASK: u8 = 0x60;
const NAL_TYPE_MASK: u8 = 0x1f;
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;
/// NRI 3, non-IDR slices get NRI 2.
const NAL_IDR_HEADER: u8 = 0x65;
const NAL_NON_IDR_HEADER: u8 = 0x41;
const NAL_SPS_HEADER: u8 = 0x67;
const NAL_PPS_HEADER: u8 = 0x68;
const NAL_STAP_A_HEADER: u8 = 0x78;
/// Filler data (type 12, NRI 0): carries the trailer inside the parameter-set STAP-A.
const NAL_FILLER_HEADER: u8 = 0x0c;
const FU_S: u8 = 0x80;
const FU_E: u8 = 0x40;
const FU_HEADER_LEN: usize = 2;

/// Frame `n` of a track is due at `start + n / fps` and carries RTP time `offset + n * hz / fps`.
#[derive(Debug)]
struct FrameClock {
    start: Instant,
    fps: u64,
    hz: u64,
    rtp_offset: u32,
    next: u64,
}

impl FrameClock {
    fn new(start: Instant, fps: u64, hz: u64, rtp_offset: u32) -> Self {
        Self {
            start,
            fps,
            hz,
            rtp_offset,
            next: 0,
        }
    }

    fn deadline(&self) -> Instant {
        self.deadline_of(self.next)
    }

    fn deadline_of(&self, index: u64) -> Instant {
        let nanos = u128::from(index) * 1_000_000_000 / u128::from(self.fps);
        self.start + Duration::from_nanos(nanos as u64)
    }

    /// RTP time of the next frame, which is then consumed.
    fn take(&mut self) -> (Instant, u32) {
        let index = self.next;
        self.next += 1;
        let ticks = u128::from(index) * u128::from(self.hz) / u128::from(self.fps);
        (
            self.deadline_of(index),
            self.rtp_offset.wrapping_add(ticks as u32),
        )
    }

    /// Skips to the latest due frame if more than [`STALL`] behind; returns the frames skipped.
    fn catch_up(&mut self, now: Instant) -> u64 {
        if now.saturating_duration_since(self.deadline()) <= STALL {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let target = (elapsed * u128::from(self.fps) / 1_000_000_000) as u64;
        let skipped = target.saturating_sub(self.next);
        self.next = self.next.max(target);
        skipped
    }
}

#[derive(Debug)]
struct AudioTrack {
    clock: FrameClock,
    bytes: usize,
    seq: u64,
}

impl AudioTrack {
    fn emit(&mut self, unix_micros: u64, stats: &mut GeneratorStats, out: &mut Vec<SynthPacket>) {
        let (_, rtp_time) = self.clock.take();
        let mut payload = Vec::with_capacity(self.bytes);
        if self.bytes > TRAILER_LEN {
            payload.push(OPUS_TOC);
        }
        pad_with_trailer_room(&mut payload, self.bytes, self.seq as u8);
        stamp_trailer(&mut payload, Kind::Audio, self.seq, unix_micros);
        self.seq += 1;
        stats.audio_packets += 1;
        stats.audio_bytes += payload.len() as u64;
        stats.audio_frames += 1;
        out.push(SynthPacket {
            kind: Kind::Audio,
            marker: false,
            rtp_time,
            keyframe: false,
            payload,
        });
    }
}

#[derive(Debug)]
struct VideoTrack {
    codec: VideoCodec,
    clock: FrameClock,
    seq: u64,
    max_payload: usize,
    delta_bytes: usize,
    /// Bytes the last delta frame had over `delta_bytes`, which the next one has under.
    variation: Option<usize>,
    /// Draws the delta frames' sizes ([`DELTA_SIZES_SEED`]).
    rng: fastrand::Rng,
    key_bytes: usize,
    keyframe_interval: Duration,
    last_keyframe: Option<Instant>,
    keyframe_pending: bool,
    picture_id: u16,
    /// STAP-A of SPS, PPS and a filler NAL unit whose body is the trailer.
    param_sets: Vec<u8>,
    /// With pacing, where packets wait for their turn.
    pacer: Option<Pacer>,
}

impl VideoTrack {
    /// The next delta frame's size. An encoder's frames vary in size, so these do too, by up
    /// to [`DELTA_VARIATION`] either way: a frame over the average size is followed by one as
    /// far under it, so every two delta frames keep the bitrate exactly.
    fn delta_size(&mut self) -> usize {
        let size = match self.variation.take() {
            Some(under) => self.delta_bytes.saturating_sub(under),
            None => {
                let most = (self.delta_bytes as f64 * DELTA_VARIATION) as usize;
                let over = self.rng.usize(0..=most);
                self.variation = Some(over);
                self.delta_bytes + over
            }
        };
        size.max(MIN_FRAME_BYTES)
    }

    fn emit(&mut self, unix_micros: u64, stats: &mut GeneratorStats, out: &mut Vec<SynthPacket>) {
        let (due, rtp_time) = self.clock.take();
        let keyframe = self.keyframe_pending
            || self
                .last_keyframe
                .is_none_or(|k| due.saturating_duration_since(k) >= self.keyframe_interval);
        if keyframe {
            self.keyframe_pending = false;
            self.last_keyframe = Some(due);
            stats.keyframes += 1;
        }
        let budget = if keyframe {
            self.key_bytes
        } else {
            self.delta_size()
        };
        let payloads = match self.codec {
            VideoCodec::Vp8 => {
                let payloads = vp8_frame(budget, keyframe, self.picture_id, self.max_payload);
                self.picture_id = (self.picture_id + 1) & VP8_PICTURE_ID_MASK;
                payloads
            }
            VideoCodec::H264 if keyframe => {
                let rest = budget.saturating_sub(self.param_sets.len());
                let mut payloads = vec![self.param_sets.clone()];
                payloads.extend(h264_frame(
                    rest.max(MIN_FRAME_BYTES),
                    true,
                    self.max_payload,
                ));
                payloads
            }
            VideoCodec::H264 => h264_frame(budget, false, self.max_payload),
        };
        let last = payloads.len().saturating_sub(1);
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = SynthPacket {
                kind: Kind::Video,
                marker: i == last,
                rtp_time,
                keyframe,
                payload,
            };
            let seq = self.seq;
            self.seq += 1;
            match &mut self.pacer {
                Some(pacer) => pacer.enqueue(seq, packet, due),
                None => send_video(packet, seq, unix_micros, stats, out),
            }
        }
        stats.video_frames += 1;
    }

    /// When the next frame is due or, with pacing, the next queued packet may leave.
    fn deadline(&self) -> Instant {
        let frame = self.clock.deadline();
        match self.pacer.as_ref().and_then(Pacer::next_release) {
            Some(release) => release.min(frame),
            None => frame,
        }
    }

    /// Sends the queued packets whose turn has come (with pacing).
    fn release(
        &mut self,
        now: Instant,
        unix_micros: u64,
        stats: &mut GeneratorStats,
        out: &mut Vec<SynthPacket>,
    ) {
        if let Some(pacer) = &mut self.pacer {
            while let Some((seq, packet)) = pacer.pop_due(now) {
                send_video(packet, seq, unix_micros, stats, out);
            }
        }
    }
}

fn send_video(
    mut packet: SynthPacket,
    seq: u64,
    unix_micros: u64,
    stats: &mut GeneratorStats,
    out: &mut Vec<SynthPacket>,
) {
    stamp_trailer(&mut packet.payload, Kind::Video, seq, unix_micros);
    stats.video_packets += 1;
    stats.video_bytes += packet.payload.len() as u64;
    out.push(packet);
}

/// Lets queued video packets leave one at a time at a fixed rate, as a sender's pacer does:
/// a packet of `n` bytes holds the next one back by `8 n / rate`. Time spent with nothing
/// queued earns no credit, so a frame never leaves faster than the rate.
#[derive(Debug)]
struct Pacer {
    bits_per_s: f64,
    queue: VecDeque<(u64, SynthPacket)>,
    next_release: Instant,
}

impl Pacer {
    fn new(bits_per_s: f64, start: Instant) -> Self {
        Self {
            bits_per_s,
            queue: VecDeque::new(),
            next_release: start,
        }
    }

    fn enqueue(&mut self, seq: u64, packet: SynthPacket, due: Instant) {
        if self.queue.is_empty() {
            self.next_release = self.next_release.max(due);
        }
        self.queue.push_back((seq, packet));
    }

    fn next_release(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then_some(self.next_release)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(u64, SynthPacket)> {
        if self.queue.is_empty() || self.next_release > now {
            return None;
        }
        // After a stall the backlog leaves at the rate from now, not in one burst.
        if now.saturating_duration_since(self.next_release) > STALL {
            self.next_release = now;
        }
        let (seq, packet) = self.queue.pop_front()?;
        let bits = packet.payload.len() as f64 * 8.0;
        self.next_release += Duration::from_secs_f64(bits / self.bits_per_s);
        Some((seq, packet))
    }
}

/// Per-kind trailer sequence tracking over a sliding bitmap of the last [`WINDOW`] sequences.
#[derive(Clone, Debug, Default)]
struct SeqWindow {
    /// First sequence of the current source: nothing below it counts as lost.
    base: u64,
    highest: Option<u64>,
    newest_sent: u64,
    received: [u64; (WINDOW / 64) as usize],
    /// Losses that left the window (or preceded a restart) without being filled.
    finalized_lost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    InOrder,
    Late,
    Duplicate,
    Restart,
}

impl SeqWindow {
    fn record(&mut self, seq: u64, sent: u64) -> Arrival {
        let Some(highest) = self.highest else {
            self.restart(seq, sent);
            return Arrival::InOrder;
        };
        if seq > highest {
            self.advance(highest, seq);
            self.highest = Some(seq);
            self.newest_sent = self.newest_sent.max(sent);
            self.set(seq);
            return Arrival::InOrder;
        }
        let behind = highest - seq;
        if behind > RESTART_GAP || sent > self.newest_sent.saturating_add(RESTART_CLOCK_MARGIN_US) {
            self.finalized_lost = self.lost();
            self.restart(seq, sent);
            return Arrival::Restart;
        }
        if behind >= WINDOW {
            return Arrival::Late;
        }
        if self.is_set(seq) {
            return Arrival::Duplicate;
        }
        self.set(seq);
        Arrival::Late
    }

    fn lost(&self) -> u64 {
        self.finalized_lost.saturating_add(self.missing_in_window())
    }

    fn span(&self) -> Option<SeqSpan> {
        Some(SeqSpan {
            first: self.base,
            highest: self.highest?,
        })
    }

    fn restart(&mut self, seq: u64, sent: u64) {
        self.base = seq;
        self.highest = Some(seq);
        self.newest_sent = sent;
        self.received = Default::default();
        self.set(seq);
    }

    /// Moves the window's top from `old` to `new`, finalizing unfilled sequences that leave it.
    fn advance(&mut self, old: u64, new: u64) {
        let steps = new - old;
        if steps >= WINDOW {
            // Saturating: a forged trailer may jump by almost 2^64.
            self.finalized_lost = self
                .finalized_lost
                .saturating_add(self.missing_in_window())
                .saturating_add(steps - WINDOW);
            self.received = Default::default();
            return;
        }
        for seq in old + 1..=new {
            if let Some(leaving) = seq.checked_sub(WINDOW)
                && leaving >= self.base
                && !self.is_set(leaving)
            {
                self.finalized_lost += 1;
            }
            let (word, bit) = Self::slot(seq);
            self.received[word] &= !bit;
        }
    }

    fn missing_in_window(&self) -> u64 {
        let Some(highest) = self.highest else {
            return 0;
        };
        let low = highest.saturating_sub(WINDOW - 1).max(self.base);
        (low..=highest).filter(|&seq| !self.is_set(seq)).count() as u64
    }

    fn slot(seq: u64) -> (usize, u64) {
        let index = seq % WINDOW;
        ((index / 64) as usize, 1 << (index % 64))
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, bit) = Self::slot(seq);
        self.received[word] & bit != 0
    }

    fn set(&mut self, seq: u64) {
        let (word, bit) = Self::slot(seq);
        self.received[word] |= bit;
    }
}

/// Splits `total` bytes into the fewest parts of at most `max` bytes, sizes differing by <= 1
/// and the larger ones last, as libwebrtc's packetizers split a frame.
fn split_even(total: usize, max: usize) -> Vec<usize> {
    let parts = total.div_ceil(max.max(1)).max(1);
    let (base, rem) = (total / parts, total % parts);
    (0..parts)
        .map(|i| base + usize::from(i >= parts - rem))
        .collect()
}

/// VP8 packets (RFC 7741) of one frame totalling `budget` bytes, trailer room included.
fn vp8_frame(budget: usize, keyframe: bool, picture_id: u16, max_payload: usize) -> Vec<Vec<u8>> {
    let sizes = split_even(budget, max_payload);
    let mut packets = Vec::with_capacity(sizes.len());
    for (i, size) in sizes.into_iter().enumerate() {
        let mut p = Vec::with_capacity(size);
        p.push(if i == 0 { VP8_X | VP8_S } else { VP8_X });
        p.push(VP8_I);
        p.push(VP8_M | ((picture_id >> 8) as u8 & 0x7f));
        p.push(picture_id as u8);
        if i == 0 {
            // Frame tag (RFC 6386 9.1): 19-bit first partition size, show_frame, version 0, P.
            let first_part = (budget / 2).min(0x7ffff);
            let inter = if keyframe { 0 } else { VP8_INTER };
            p.push(((first_part & 0x7) << 5) as u8 | VP8_SHOW_FRAME | inter);
            p.push((first_part >> 3) as u8);
            p.push((first_part >> 11) as u8);
            if keyframe {
                p.extend_from_slice(&VP8_START_CODE);
                p.extend_from_slice(&VP8_WIDTH.to_le_bytes());
                p.extend_from_slice(&VP8_HEIGHT.to_le_bytes());
            }
        }
        pad_with_trailer_room(&mut p, size, i as u8);
        packets.push(p);
    }
    packets
}

/// H264 packets (RFC 6184) of one slice NAL unit totalling about `budget` bytes: a single NAL
/// unit packet when it fits `max_payload`, else FU-A fragments.
fn h264_frame(budget: usize, keyframe: bool, max_payload: usize) -> Vec<Vec<u8>> {
    let header = if keyframe {
        NAL_IDR_HEADER
    } else {
        NAL_NON_IDR_HEADER
    };
    if budget <= max_payload {
        let mut p = Vec::with_capacity(budget);
        p.push(header);
        pad_with_trailer_room(&mut p, budget, 0);
        return vec![p];
    }
    let packets = budget.div_ceil(max_payload);
    fu_a(header, budget - FU_HEADER_LEN * packets + 1, max_payload)
}

/// FU-A fragments of a NAL unit of `nal_len` bytes (header included) whose header is `header`.
fn fu_a(header: u8, nal_len: usize, max_payload: usize) -> Vec<Vec<u8>> {
    let sizes = split_even(nal_len.saturating_sub(1), max_payload - FU_HEADER_LEN);
    let last = sizes.len() - 1;
    let indicator = (header & (NAL_FORBIDDEN | NAL_NRI_MASK)) | NAL_FU_A;
    let mut packets = Vec::with_capacity(sizes.len());
    for (i, size) in sizes.into_iter().enumerate() {
        let mut fu_header = header & NAL_TYPE_MASK;
        if i == 0 {
            fu_header |= FU_S;
        }
        if i == last {
            fu_header |= FU_E;
        }
        let mut p = Vec::with_capacity(FU_HEADER_LEN + size);
        p.extend_from_slice(&[indicator, fu_header]);
        pad_with_trailer_room(&mut p, FU_HEADER_LEN + size, i as u8);
        packets.push(p);
    }
    packets
}

/// STAP-A with a baseline (42e01f) 640x360 SPS, its PPS, and a filler NAL unit holding the
/// trailer, so the payload still parses as a STAP-A once the trailer is stamped.
fn h264_param_sets() -> Vec<u8> {
    let mut sps = BitWriter::default();
    sps.ue(0); // seq_parameter_set_id
    sps.ue(0); // log2_max_frame_num_minus4
    sps.ue(2); // pic_order_cnt_type
    sps.ue(1); // max_num_ref_frames
    sps.bit(false); // gaps_in_frame_num_value_allowed_flag
    sps.ue(u32::from(VP8_WIDTH / 16 - 1)); // pic_width_in_mbs_minus1
    sps.ue(u32::from(VP8_HEIGHT.div_ceil(16) - 1)); // pic_height_in_map_units_minus1
    sps.bit(true); // frame_mbs_only_flag
    sps.bit(true); // direct_8x8_inference_flag
    sps.bit(true); // frame_cropping_flag
    sps.ue(0); // left
    sps.ue(0); // right
    sps.ue(0); // top
    sps.ue(u32::from((VP8_HEIGHT.div_ceil(16) * 16 - VP8_HEIGHT) / 2)); // bottom, 2-row units
    sps.bit(false); // vui_parameters_present_flag
    let mut sps_nal = vec![NAL_SPS_HEADER, 0x42, 0xe0, 0x1f];
    sps_nal.extend(escape_emulation(&sps.finish()));

    let mut pps = BitWriter::default();
    pps.ue(0); // pic_parameter_set_id
    pps.ue(0); // seq_parameter_set_id
    pps.bit(false); // entropy_coding_mode_flag (CAVLC)
    pps.bit(false); // bottom_field_pic_order_in_frame_present_flag
    pps.ue(0); // num_slice_groups_minus1
    pps.ue(0); // num_ref_idx_l0_default_active_minus1
    pps.ue(0); // num_ref_idx_l1_default_active_minus1
    pps.bit(false); // weighted_pred_flag
    pps.bit(false); // weighted_bipred_idc (2 bits)
    pps.bit(false);
    pps.ue(0); // pic_init_qp_minus26, se(0) codes as ue(0)
    pps.ue(0); // pic_init_qs_minus26
    pps.ue(0); // chroma_qp_index_offset
    pps.bit(true); // deblocking_filter_control_present_flag
    pps.bit(false); // constrained_intra_pred_flag
    pps.bit(false); // redundant_pic_cnt_present_flag
    let mut pps_nal = vec![NAL_PPS_HEADER];
    pps_nal.extend(escape_emulation(&pps.finish()));

    let mut p = vec![NAL_STAP_A_HEADER];
    for nal in [&sps_nal, &pps_nal] {
        p.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        p.extend_from_slice(nal);
    }
    p.extend_from_slice(&(1 + TRAILER_LEN as u16).to_be_bytes());
    p.push(NAL_FILLER_HEADER);
    p.extend_from_slice(&[0; TRAILER_LEN]);
    p
}

/// Inserts emulation prevention bytes (0x03 after two zeros before a byte <= 3).
fn escape_emulation(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + 4);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// MSB-first bit writer with Exp-Golomb codes, for parameter sets.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn bit(&mut self, on: bool) {
        if self.bits.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if on && let Some(last) = self.bytes.last_mut() {
            *last |= 0x80 >> (self.bits % 8);
        }
        self.bits += 1;
    }

    fn ue(&mut self, value: u32) {
        let coded = u64::from(value) + 1;
        let len = 64 - coded.leading_zeros();
        for _ in 1..len {
            self.bit(false);
        }
        for i in (0..len).rev() {
            self.bit((coded >> i) & 1 == 1);
        }
    }

    /// Appends the RBSP stop bit; the rest of the last byte is the zero alignment.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.bytes
    }
}

/// Fills `p` with non-zero filler up to `size - TRAILER_LEN`, then zeroed room for the trailer.
fn pad_with_trailer_room(p: &mut Vec<u8>, size: usize, salt: u8) {
    while p.len() + TRAILER_LEN < size {
        p.push(((p.len() as u8).wrapping_mul(37) ^ salt) | 1);
    }
    p.resize(p.len() + TRAILER_LEN, 0);
}

fn stamp_trailer(payload: &mut [u8], kind: Kind, seq: u64, sent_unix_micros: u64) {
    if let Some(start) = payload.len().checked_sub(TRAILER_LEN) {
        let trailer = Trailer {
            kind,
            seq,
            sent_unix_micros,
        };
        payload[start..].copy_from_slice(&trailer.to_bytes());
    }
}

fn random_u64(start: Instant, tag: u8) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    start.hash(&mut hasher);
    tag.hash(&mut hasher);
    hasher.finish()
}

fn vp8_is_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    if first & VP8_S == 0 || first & VP8_PID_MASK != 0 {
        return false;
    }
    let mut at = 1;
    if first & VP8_X != 0 {
        let Some(&ext) = p.get(1) else {
            return false;
        };
        at = 2;
        if ext & VP8_I != 0 {
            let Some(&pid) = p.get(at) else {
                return false;
            };
            at += if pid & VP8_M != 0 { 2 } else { 1 };
        }
        if ext & VP8_L != 0 {
            at += 1;
        }
        if ext & VP8_TK != 0 {
            at += 1;
        }
    }
    p.get(at).is_some_and(|tag| tag & VP8_INTER == 0)
}

fn h264_is_keyframe(p: &[u8]) -> bool {
    let Some(&header) = p.first() else {
        return false;
    };
    if header & NAL_FORBIDDEN != 0 {
        return false;
    }
    match header & NAL_TYPE_MASK {
        NAL_IDR => true,
        NAL_STAP_A => {
            let mut at = 1;
            while let (Some(&hi), Some(&lo)) = (p.get(at), p.get(at + 1)) {
                let len = usize::from(u16::from_be_bytes([hi, lo]));
                let Some(&nal) = p.get(at + 2) else {
                    return false;
                };
                if len == 0 {
                    return false;
                }
                if matches!(nal & NAL_TYPE_MASK, NAL_SPS | NAL_IDR) {
                    return true;
                }
                at += 2 + len;
            }
            false
        }
        NAL_FU_A => p
            .get(1)
            .is_some_and(|fu| fu & FU_S != 0 && fu & NAL_TYPE_MASK == NAL_IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;

    /// Drives a generator by its own deadlines over `span`; trailers carry T0 + elapsed.
    fn run(cfg: SynthConfig, span: Duration) -> (Generator, Vec<SynthPacket>) {
        let start = Instant::now();
        let mut generator = Generator::new(cfg, start);
        let mut out = Vec::new();
        loop {
            let due = generator.next_deadline();
            if due >= start + span {
                return (generator, out);
            }
            let elapsed = due.duration_since(start).as_micros() as u64;
            generator.poll(due, T0 + elapsed, &mut out);
        }
    }

    fn codec_cfg(codec: VideoCodec) -> SynthConfig {
        SynthConfig {
            video: Some(codec),
            ..SynthConfig::default()
        }
    }

    /// Video packets grouped by frame (consecutive equal RTP time).
    fn frames(packets: &[SynthPacket]) -> Vec<Vec<&SynthPacket>> {
        let mut frames: Vec<Vec<&SynthPacket>> = Vec::new();
        for p in packets.iter().filter(|p| p.kind == Kind::Video) {
            match frames.last_mut() {
                Some(frame) if frame[0].rtp_time == p.rtp_time => frame.push(p),
                _ => frames.push(vec![p]),
            }
        }
        frames
    }

    fn bytes_of(packets: &[SynthPacket], kind: Kind) -> usize {
        packets
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.payload.len())
            .sum()
    }

    #[test]
    fn delta_frames_vary_in_size_and_split_as_libwebrtc_splits_them() {
        let (_, packets) = run(codec_cfg(VideoCodec::Vp8), Duration::from_secs(2));
        let frames = frames(&packets);
        let sizes: Vec<usize> = frames
            .iter()
            .filter(|f| !f[0].keyframe)
            .map(|f| f.iter().map(|p| p.payload.len()).sum())
            .collect();
        let mut distinct = sizes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > sizes.len() / 4, "sizes vary: {sizes:?}");
        // Each frame over the average is followed by one as far under it.
        let average = sizes[0..2].iter().sum::<usize>() / 2;
        for pair in sizes.chunks_exact(2) {
            assert_eq!(pair[0] + pair[1], 2 * average, "{sizes:?}");
            assert!(pair[0].abs_diff(average) as f64 <= 0.1 * average as f64 + 1.0);
        }
        for frame in &frames {
            // Payload sizes one byte apart at most, the larger ones last.
            let lens: Vec<usize> = frame.iter().map(|p| p.payload.len()).collect();
            assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");
            assert!(lens[lens.len() - 1] - lens[0] <= 1, "{lens:?}");
        }
        assert_eq!(split_even(10, 4), [3, 3, 4]);
        assert_eq!(split_even(12, 4), [4, 4, 4]);
    }

    #[test]
    fn bitrate_over_one_and_two_seconds() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let (generator, packets) = run(codec_cfg(codec), Duration::from_secs(1));
            assert_eq!(frames(&packets).len(), 30, "{codec}");
            let target = 1_500_000.0 / 8.0;
            let video = bytes_of(&packets, Kind::Video) as f64;
            assert!(
                (video - target).abs() / target < 0.05,
                "{codec}: {video} bytes in 1 s"
            );
            assert_eq!(bytes_of(&packets, Kind::Audio), 50 * 160);
            let stats = generator.stats();
            assert_eq!(stats.video_bytes as f64, video);
            assert_eq!(stats.audio_packets, 50);
            assert_eq!(stats.video_frames, 30);

            // Over a whole keyframe interval the average is the configured bitrate.
            let (_, packets) = run(codec_cfg(codec), Duration::from_secs(2));
            let video = bytes_of(&packets, Kind::Video) as f64;
            assert!(
                (video - 2.0 * target).abs() / (2.0 * target) < 0.01,
                "{codec}: {video}"
            );
        }
    }

    #[test]
    fn pacing_spreads_a_frame_at_the_pacing_rate_and_stamps_each_packet_as_it_leaves() {
        let rate = 2.5 * 1_500_000.0;
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let paced = SynthConfig {
                pacing_factor: Some(2.5),
                ..codec_cfg(codec)
            };
            let (generator, packets) = run(paced, Duration::from_secs(2));
            let (_, burst) = run(codec_cfg(codec), Duration::from_secs(2));
            let sent = |p: &SynthPacket| read_trailer(&p.payload).unwrap().sent_unix_micros;

            // Same frames, same bytes; only when they leave differs (the last frame's tail
            // may still be queued when the run ends).
            let video: Vec<_> = packets.iter().filter(|p| p.kind == Kind::Video).collect();
            let burst_video = burst.iter().filter(|p| p.kind == Kind::Video).count();
            assert!(
                video.len() <= burst_video && video.len() + 6 >= burst_video,
                "{codec}: {} paced vs {burst_video} burst video packets",
                video.len()
            );
            assert_eq!(generator.stats().video_packets, video.len() as u64);

            // No packet leaves before the one ahead of it has had its time at the rate.
            for pair in video.windows(2) {
                let gap = sent(pair[1]) - sent(pair[0]);
                let needed = (pair[0].payload.len() as f64 * 8.0 / rate * 1e6) as u64;
                assert!(
                    gap + 1 >= needed,
                    "{codec}: {gap} us after a packet needing {needed}"
                );
            }

            // The first keyframe (3x a delta frame) takes about 40 ms to leave, not 0.
            let first = frames(&packets)[0].clone();
            assert!(
                first[0].keyframe && first.len() >= 15,
                "{codec}: {}",
                first.len()
            );
            let spread = sent(first[first.len() - 1]) - sent(first[0]);
            let expected: usize = first[..first.len() - 1]
                .iter()
                .map(|p| p.payload.len())
                .sum();
            let expected = (expected as f64 * 8.0 / rate * 1e6) as u64;
            assert!(
                spread + 1_000 >= expected && spread <= expected + 1_000,
                "{codec}: keyframe spread {spread} us, expected {expected}"
            );

            // Audio is not held behind video: every 20 ms on the dot.
            let audio: Vec<_> = packets.iter().filter(|p| p.kind == Kind::Audio).collect();
            assert_eq!(audio.len(), 100);
            for (i, p) in audio.iter().enumerate() {
                assert_eq!(sent(p), T0 + i as u64 * 20_000, "{codec}: audio {i}");
            }
        }
    }

    #[test]
    fn marker_and_rtp_time_rules() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let (_, packets) = run(codec_cfg(codec), Duration::from_millis(500));
            assert!(packets.iter().all(|p| p.payload.len() <= 1100));
            let frames = frames(&packets);
            assert_eq!(frames.len(), 15);
            for pair in frames.windows(2) {
                assert_eq!(pair[1][0].rtp_time.wrapping_sub(pair[0][0].rtp_time), 3000);
            }
            for frame in &frames {
                assert!(frame.len() > 1, "1.5 Mbit/s frames need several packets");
                let (last, rest) = frame.split_last().unwrap();
                assert!(last.marker && rest.iter().all(|p| !p.marker));
            }
            let audio: Vec<_> = packets.iter().filter(|p| p.kind == Kind::Audio).collect();
            assert_eq!(audio.len(), 25);
            assert!(
                audio
                    .iter()
                    .all(|p| !p.marker && !p.keyframe && p.payload.len() == 160)
            );
            for pair in audio.windows(2) {
                assert_eq!(pair[1].rtp_time.wrapping_sub(pair[0].rtp_time), 960);
            }
        }
    }

    #[test]
    fn vp8_descriptor_bits_and_keyframe_detection() {
        let start = Instant::now();
        let mut generator = Generator::new(codec_cfg(VideoCodec::Vp8), start);
        generator.video.as_mut().unwrap().picture_id = 0x7ffe;
        let mut packets = Vec::new();
        for i in 0..4 {
            generator.poll(start + Duration::from_millis(34 * i), T0, &mut packets);
        }
        let frames = frames(&packets);
        assert_eq!(frames.len(), 4);
        for (f, frame) in frames.iter().enumerate() {
            let expected_id = (0x7ffe + f as u16) & 0x7fff;
            for (i, p) in frame.iter().enumerate() {
                let d = &p.payload;
                assert_eq!(d[0], if i == 0 { 0x90 } else { 0x80 }, "X, S, PID");
                assert_eq!(d[1], 0x80, "I only");
                assert_eq!(u16::from_be_bytes([d[2], d[3]]), 0x8000 | expected_id);
                assert!(!is_keyframe(VideoCodec::Vp8, d) || i == 0);
            }
            let first = &frame[0].payload;
            assert_eq!(first[4] & 1 == 0, f == 0, "P bit");
            assert_eq!(is_keyframe(VideoCodec::Vp8, first), f == 0);
            assert!(!is_keyframe(VideoCodec::H264, first));
            assert_eq!(frame.iter().all(|p| p.keyframe), f == 0);
        }
        let key = &frames[0][0].payload;
        assert_eq!(key[7..10], VP8_START_CODE);
        assert_eq!(u16::from_le_bytes([key[10], key[11]]) & 0x3fff, 640);
        assert_eq!(u16::from_le_bytes([key[12], key[13]]) & 0x3fff, 360);
        // A one-byte picture ID, L, T and K fields are skipped before the P bit.
        assert!(is_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xf0, 0x05, 0, 0, 0x10]
        ));
        assert!(!is_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xf0, 0x05, 0, 0, 0x11]
        ));
        assert!(
            !is_keyframe(VideoCodec::Vp8, &[0x91, 0x00, 0x10]),
            "PID != 0"
        );
    }

    #[test]
    fn h264_fu_a_reassembles_to_nal_length() {
        for (header, nal_len) in [(0x65, 5000), (0x41, 1200), (0x65, 33_000), (0x01, 2197)] {
            let packets = fu_a(header, nal_len, 1100);
            assert!(packets.len() >= 2);
            let last = packets.len() - 1;
            let mut nal = vec![(packets[0][0] & 0xe0) | (packets[0][1] & 0x1f)];
            for (i, p) in packets.iter().enumerate() {
                assert!(p.len() <= 1100);
                assert_eq!(p[0] & 0x1f, 28);
                assert_eq!(p[0] & 0x60, header & 0x60, "NRI preserved");
                assert_eq!(p[1] & 0x80 != 0, i == 0, "S");
                assert_eq!(p[1] & 0x40 != 0, i == last, "E");
                assert_eq!(p[1] & 0x20, 0, "R");
                assert_eq!(p[1] & 0x1f, header & 0x1f);
                nal.extend_from_slice(&p[2..]);
            }
            assert_eq!(nal.len(), nal_len);
            assert_eq!(nal[0], header);
            assert_eq!(
                is_keyframe(VideoCodec::H264, &packets[0]),
                header & 0x1f == 5
            );
            assert!(!is_keyframe(VideoCodec::H264, &packets[1]));
        }
        let single = h264_frame(900, false, 1100);
        assert_eq!(
            (single.len(), single[0].len(), single[0][0]),
            (1, 900, 0x41)
        );
    }

    #[test]
    fn h264_stap_a_precedes_idr() {
        let (_, packets) = run(codec_cfg(VideoCodec::H264), Duration::from_millis(100));
        let frames = frames(&packets);
        let key = &frames[0];
        let stap = &key[0].payload;
        assert!(key[0].keyframe && !key[0].marker);
        assert_eq!(stap[0], 0x78);
        let mut units = Vec::new();
        let mut at = 1;
        while at < stap.len() {
            let len = usize::from(u16::from_be_bytes([stap[at], stap[at + 1]]));
            units.push(&stap[at + 2..at + 2 + len]);
            at += 2 + len;
        }
        assert_eq!(
            at,
            stap.len(),
            "aggregation units cover the payload exactly"
        );
        let types: Vec<u8> = units.iter().map(|u| u[0] & 0x1f).collect();
        assert_eq!(types, [7, 8, 12]);
        assert_eq!(units[0][1..4], [0x42, 0xe0, 0x1f]);
        assert_eq!(sps_dimensions(units[0]), (640, 360));
        assert_eq!(
            read_trailer(stap).map(|t| (t.kind, t.seq)),
            Some((Kind::Video, 0))
        );
        assert!(is_keyframe(VideoCodec::H264, stap));

        let idr = &key[1].payload;
        assert_eq!((idr[0], idr[1]), (0x7c, 0x85), "FU-A, NRI 3, start of IDR");
        assert!(is_keyframe(VideoCodec::H264, idr));
        assert!(
            key[2..]
                .iter()
                .all(|p| !is_keyframe(VideoCodec::H264, &p.payload))
        );
        assert_eq!(key[1].rtp_time, key[0].rtp_time);

        let delta = &frames[1];
        assert!(delta.iter().all(|p| !p.keyframe && p.payload[0] == 0x5c));
        assert_eq!(delta[0].payload[1], 0x81, "FU-A start of non-IDR");
        assert!(!is_keyframe(VideoCodec::H264, &delta[0].payload));
    }

    /// Width and height from an SPS NAL unit written by `h264_param_sets`.
    fn sps_dimensions(sps: &[u8]) -> (u32, u32) {
        let mut rbsp = Vec::new();
        for &b in &sps[4..] {
            if b == 3 && rbsp.ends_with(&[0, 0]) {
                continue;
            }
            rbsp.push(b);
        }
        let mut pos = 0;
        let mut bit = || {
            let b = (rbsp[pos / 8] >> (7 - pos % 8)) & 1;
            pos += 1;
            u32::from(b)
        };
        let ue = |bit: &mut dyn FnMut() -> u32| {
            let mut zeros = 0;
            while bit() == 0 {
                zeros += 1;
            }
            (0..zeros).fold(1, |acc, _| (acc << 1) | bit()) - 1
        };
        let _sps_id = ue(&mut bit);
        let _frame_num = ue(&mut bit);
        assert_eq!(ue(&mut bit), 2, "pic_order_cnt_type");
        let _refs = ue(&mut bit);
        let _gaps = bit();
        let width_mbs = ue(&mut bit) + 1;
        let height_mbs = ue(&mut bit) + 1;
        assert_eq!(
            (bit(), bit(), bit()),
            (1, 1, 1),
            "frame_mbs_only, direct_8x8, cropping"
        );
        let crop: Vec<u32> = (0..4).map(|_| ue(&mut bit)).collect();
        (
            width_mbs * 16 - 2 * (crop[0] + crop[1]),
            height_mbs * 16 - 2 * (crop[2] + crop[3]),
        )
    }

    #[test]
    fn trailer_round_trip_and_sequences() {
        let trailer = Trailer {
            kind: Kind::Video,
            seq: 0x0102_0304_0506_0708,
            sent_unix_micros: T0,
        };
        let mut payload = vec![0xaa; 10];
        payload.extend_from_slice(&trailer.to_bytes());
        assert_eq!(read_trailer(&payload), Some(trailer));
        assert_eq!(payload[10..18], *b"RCST\x01\0\0\0");

        assert_eq!(read_trailer(&[]), None);
        assert_eq!(read_trailer(&payload[11..]), None, "23 bytes");
        for (at, value) in [(10, b'X'), (14, 2), (15, 1)] {
            let mut bad = payload.clone();
            bad[at] = value;
            assert_eq!(read_trailer(&bad), None, "byte {at}");
        }

        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let (_, packets) = run(codec_cfg(codec), Duration::from_millis(300));
            for kind in [Kind::Audio, Kind::Video] {
                let trailers: Vec<_> = packets
                    .iter()
                    .filter(|p| p.kind == kind)
                    .map(|p| read_trailer(&p.payload).unwrap())
                    .collect();
                for (i, t) in trailers.iter().enumerate() {
                    assert_eq!((t.kind, t.seq), (kind, i as u64));
                    assert!((T0..T0 + 300_000).contains(&t.sent_unix_micros));
                }
            }
        }
    }

    #[test]
    fn poll_skips_ahead_after_stall() {
        let start = Instant::now();
        let mut generator = Generator::new(SynthConfig::default(), start);
        let mut out = Vec::new();
        generator.poll(start, T0, &mut out);
        let first_video = out.iter().find(|p| p.kind == Kind::Video).unwrap().rtp_time;
        let first_audio = out.iter().find(|p| p.kind == Kind::Audio).unwrap().rtp_time;

        out.clear();
        generator.poll(start + Duration::from_secs(5), T0, &mut out);
        assert_eq!(frames(&out).len(), 1, "one video frame, not 150");
        let audio: Vec<_> = out.iter().filter(|p| p.kind == Kind::Audio).collect();
        assert_eq!(audio.len(), 1);
        let video = out.iter().find(|p| p.kind == Kind::Video).unwrap();
        assert_eq!(video.rtp_time.wrapping_sub(first_video), 150 * 3000);
        assert_eq!(audio[0].rtp_time.wrapping_sub(first_audio), 250 * 960);
        assert_eq!(generator.stats().skipped_frames, 149 + 249);
        assert_eq!(
            generator.next_deadline(),
            start + Duration::from_millis(5020)
        );

        // A short lag is caught up frame by frame.
        out.clear();
        generator.poll(start + Duration::from_millis(5300), T0, &mut out);
        assert_eq!(frames(&out).len(), 9);
        assert_eq!(out.iter().filter(|p| p.kind == Kind::Audio).count(), 15);
        assert_eq!(generator.stats().skipped_frames, 149 + 249);
    }

    #[test]
    fn deadlines_without_tracks_or_audio() {
        let start = Instant::now();
        let idle = SynthConfig {
            video: None,
            audio: false,
            ..SynthConfig::default()
        };
        let mut generator = Generator::new(idle, start);
        assert!(generator.next_deadline() >= start + Duration::from_secs(60));
        let mut out = Vec::new();
        generator.poll(start + Duration::from_secs(1), T0, &mut out);
        assert!(out.is_empty());

        let video_only = SynthConfig {
            audio: false,
            ..SynthConfig::default()
        };
        let mut generator = Generator::new(video_only, start);
        generator.poll(start, T0, &mut out);
        assert_eq!(
            generator.next_deadline(),
            start + Duration::from_nanos(33_333_333)
        );
    }

    #[test]
    fn keyframes_periodic_and_requested() {
        let start = Instant::now();
        let mut generator = Generator::new(codec_cfg(VideoCodec::Vp8), start);
        let mut keys = Vec::new();
        for frame in 0..130u64 {
            if frame == 10 {
                generator.request_keyframe();
            }
            let mut out = Vec::new();
            generator.poll(
                start + Duration::from_nanos(frame * 33_333_334),
                T0,
                &mut out,
            );
            if out.iter().any(|p| p.kind == Kind::Video && p.keyframe) {
                keys.push(frame);
            }
        }
        // The requested keyframe restarts the 2 s period.
        assert_eq!(keys, [0, 10, 70]);
        let stats = generator.stats();
        assert_eq!((stats.keyframes, stats.keyframe_requests), (3, 1));
        assert_eq!(stats.video_frames, 130);
    }

    #[test]
    fn codec_from_str() {
        assert_eq!("VP8".parse(), Ok(VideoCodec::Vp8));
        assert_eq!("h264".parse(), Ok(VideoCodec::H264));
        assert_eq!("H264".parse(), Ok(VideoCodec::H264));
        let err = "av1".parse::<VideoCodec>().unwrap_err();
        assert!(err.to_string().contains("\"av1\""), "{err}");
        assert_eq!(VideoCodec::H264.to_string().parse(), Ok(VideoCodec::H264));
    }

    fn payload(kind: Kind, seq: u64, sent_unix_micros: u64) -> Vec<u8> {
        let mut p = vec![0x42; 16];
        let trailer = Trailer {
            kind,
            seq,
            sent_unix_micros,
        };
        p.extend_from_slice(&trailer.to_bytes());
        p
    }

    fn feed(probe: &mut Probe, kind: Kind, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            let now = Instant::now();
            probe.on_packet(7, seq as u16, &payload(kind, seq, T0), T0 + 1000, now);
        }
    }

    #[test]
    fn probe_in_order_drop_and_late_fill() {
        let mut probe = Probe::new();
        feed(&mut probe, Kind::Video, 0..100);
        feed(&mut probe, Kind::Audio, 0..100);
        let r = probe.report();
        assert_eq!(
            (r.packets, r.video_packets, r.audio_packets),
            (200, 100, 100)
        );
        assert_eq!(
            (r.lost, r.reordered, r.duplicates, r.foreign_packets),
            (0, 0, 0, 0)
        );
        assert_eq!(r.bytes, 200 * 40);

        let mut probe = Probe::new();
        feed(&mut probe, Kind::Video, (0..100).filter(|&s| s != 50));
        assert_eq!(probe.report().lost, 1);

        let mut probe = Probe::new();
        feed(&mut probe, Kind::Video, (0..50).chain([51, 52]));
        assert_eq!(probe.report().lost, 1, "gap open");
        feed(&mut probe, Kind::Video, [50].into_iter().chain(53..100));
        let r = probe.report();
        assert_eq!((r.lost, r.reordered, r.duplicates), (0, 1, 0));
    }

    #[test]
    fn probe_reports_the_sequences_it_has_seen() {
        let mut probe = Probe::new();
        assert_eq!(probe.report().video_seqs, None);
        feed(&mut probe, Kind::Video, [5, 6, 8, 7]);
        feed(&mut probe, Kind::Audio, [40]);
        let r = probe.report();
        let span = |first, highest| Some(SeqSpan { first, highest });
        assert_eq!(r.video_seqs, span(5, 8));
        assert_eq!(r.audio_seqs, span(40, 40));
        // A late packet below the first is not a new start.
        feed(&mut probe, Kind::Video, [4]);
        assert_eq!(probe.report().video_seqs, span(5, 8));
    }

    #[test]
    fn probe_duplicates_and_window_sliding() {
        let mut probe = Probe::new();
        feed(&mut probe, Kind::Audio, (0..10).chain([5, 9]));
        let r = probe.report();
        assert_eq!((r.lost, r.reordered, r.duplicates), (0, 0, 2));
        assert_eq!(r.latency_us.count, 10, "duplicates are not latency samples");

        let mut probe = Probe::new();
        feed(
            &mut probe,
            Kind::Video,
            (0..3000).filter(|&s| s != 10 && s != 2000),
        );
        assert_eq!(probe.report().lost, 2);
        feed(&mut probe, Kind::Video, [10]);
        assert_eq!(
            (probe.report().lost, probe.report().reordered),
            (2, 1),
            "beyond window"
        );
        feed(&mut probe, Kind::Video, [2000]);
        assert_eq!((probe.report().lost, probe.report().reordered), (1, 2));

        let mut probe = Probe::new();
        feed(&mut probe, Kind::Video, [0, 5000, 5001]);
        assert_eq!(probe.report().lost, 4999);
        feed(&mut probe, Kind::Video, 5002..7000);
        assert_eq!(probe.report().lost, 4999);
    }

    #[test]
    fn probe_publisher_restart() {
        let mut probe = Probe::new();
        feed(&mut probe, Kind::Video, 0..=20_000);
        feed(&mut probe, Kind::Video, 0..100);
        let r = probe.report();
        assert_eq!((r.lost, r.reordered, r.duplicates), (0, 0, 0));

        // A short-lived publisher restarts: detected by its newer send times.
        let mut probe = Probe::new();
        let now = Instant::now();
        for seq in 0..100 {
            probe.on_packet(1, seq as u16, &payload(Kind::Audio, seq, T0), T0, now);
        }
        for seq in 0..50 {
            let sent = T0 + 5_000_000;
            probe.on_packet(2, seq as u16, &payload(Kind::Audio, seq, sent), sent, now);
        }
        let r = probe.report();
        assert_eq!((r.lost, r.reordered, r.duplicates), (0, 0, 0));
        // Losses before the restart are kept.
        let mut probe = Probe::new();
        feed(
            &mut probe,
            Kind::Audio,
            (0..=20_000).filter(|&s| s != 19_999),
        );
        feed(&mut probe, Kind::Audio, 0..10);
        assert_eq!(probe.report().lost, 1);
    }

    #[test]
    fn probe_rtp_order_foreign_and_first_last() {
        let mut probe = Probe::new();
        let t = Instant::now();
        let p = payload(Kind::Audio, 0, T0);
        for (ssrc, seq) in [
            (1, 65534),
            (1, 65535),
            (2, 10),
            (1, 0),
            (1, 1),
            (2, 11),
            (1, 65535),
        ] {
            probe.on_packet(ssrc, seq, &p, T0, t);
        }
        assert_eq!(probe.report().rtp_out_of_order, 1);
        let later = t + Duration::from_secs(1);
        probe.on_packet(3, 0, b"hello", T0, later);
        let r = probe.report();
        assert_eq!((r.foreign_packets, r.packets), (1, 8));
        assert_eq!(
            (r.first_packet_at, r.last_packet_at),
            (Some(t), Some(later))
        );
    }

    #[test]
    fn probe_latency_and_window_reset() {
        let mut probe = Probe::new();
        let now = Instant::now();
        for i in 1..=100 {
            let p = payload(Kind::Video, i, T0);
            probe.on_packet(1, i as u16, &p, T0 + 1000 * i, now);
        }
        let l = probe.report().latency_us;
        assert_eq!((l.count, l.max), (100, 100_000));
        assert!(l.p50.abs_diff(50_000) <= 50, "{l:?}");
        assert!(l.p99.abs_diff(99_000) <= 100, "{l:?}");
        assert!((l.mean - 50_500.0).abs() < 1e-6);

        probe.on_packet(1, 101, &payload(Kind::Video, 101, T0 + 10), T0, now);
        assert_eq!(probe.latency_histogram().min(), 0, "clock skew clamps to 0");

        let mut merged = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3).unwrap();
        merged.add(probe.latency_histogram()).unwrap();
        assert_eq!(merged.len(), 101);

        probe.reset_window();
        let r = probe.report();
        assert_eq!(
            (r.latency_us.count, r.latency_us.max, r.video_packets),
            (0, 0, 101)
        );
        assert_eq!(probe.latency_histogram().len(), 0);
    }

    #[test]
    fn probe_counts_generated_keyframes_once() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let (generator, packets) = run(codec_cfg(codec), Duration::from_secs(3));
            let mut probe = Probe::new();
            let now = Instant::now();
            for (i, p) in packets.iter().enumerate() {
                let ssrc = if p.kind == Kind::Video { 1 } else { 2 };
                probe.on_packet(ssrc, i as u16, &p.payload, T0 + 3_000_000, now);
            }
            let r = probe.report();
            assert_eq!(
                (r.keyframes, generator.stats().keyframes),
                (2, 2),
                "{codec}"
            );
            assert_eq!(
                (r.lost, r.reordered, r.duplicates, r.foreign_packets),
                (0, 0, 0, 0)
            );
            assert_eq!(r.packets, packets.len() as u64);
            assert_eq!(r.latency_us.count, r.packets);
        }
    }

    #[test]
    fn parsers_survive_arbitrary_input() {
        let mut state = 0x1234_5678_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut probe = Probe::new();
        let now = Instant::now();
        for _ in 0..20_000 {
            let len = next() as usize % 64;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= TRAILER_LEN && next() % 2 == 0 {
                let at = len - TRAILER_LEN;
                bytes[at..at + 8].copy_from_slice(b"RCST\x01\0\0\0");
            }
            for codec in [VideoCodec::Vp8, VideoCodec::H264] {
                is_keyframe(codec, &bytes);
            }
            read_trailer(&bytes);
            probe.on_packet(next(), next() as u16, &bytes, u64::from(next()), now);
        }
        let (_, packets) = run(codec_cfg(VideoCodec::H264), Duration::from_millis(40));
        let (_, vp8) = run(codec_cfg(VideoCodec::Vp8), Duration::from_millis(40));
        for p in packets.iter().chain(&vp8) {
            for end in 0..=p.payload.len().min(80) {
                let prefix = &p.payload[..end];
                is_keyframe(VideoCodec::Vp8, prefix);
                is_keyframe(VideoCodec::H264, prefix);
                probe.on_packet(9, end as u16, prefix, 0, now);
            }
        }
        assert!(probe.report().packets > 20_000);
    }
}
