//! The command line: one subcommand per scenario, sharing the connection, media, ramp and
//! measurement options. Values with units (`1500k`, `30s`, `50/s`) are parsed here.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use relaycast_dataplane::synth::{SynthConfig, VideoCodec};

/// relaycast's traffic generator: real WebRTC publishers and players (ICE, DTLS, SRTP) that
/// measure loss, one-way latency and join time, with the server's CPU cost per packet.
#[derive(Debug, Parser)]
#[command(name = "relaycast-loadgen", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Scenario,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N publishers of synthetic media (`STREAM-0`, `STREAM-1`, ... or `STREAM` for one).
    Publish(PublishArgs),
    /// N players of one or more streams published elsewhere.
    Play(PlayArgs),
    /// One publisher and N players in this process: the fan-out benchmark.
    Fanout(FanoutArgs),
    /// Publish on the first server, relay through the others (push or pull over REST), play on
    /// every hop: the latency each relay hop adds.
    RelayChain(RelayChainArgs),
    /// Fan-out for a long time with churn: players leave and join continuously.
    Soak(SoakArgs),
}

/// Where the server is and how the run is measured.
#[derive(Clone, Debug, Args)]
pub struct Common {
    /// Signalling URL of the server (ws:// or wss://).
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    pub server: String,
    /// REST URL of the server (relay-chain needs it; elsewhere it adds the server's counters).
    #[arg(long)]
    pub rest: Option<String>,
    /// Length of the measured window (after every player has joined and the warm-up).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between the last join and the start of the measured window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Print the summary as JSON on stdout (the human summary goes to stderr otherwise).
    #[arg(long)]
    pub json: bool,
    /// The server's process id: adds its CPU per forwarded packet and its RSS to the summary.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Cores (threads) of the loadgen's own media endpoint.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Local address the loadgen's peers bind to (and advertise as their ICE candidate).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// How long a player may take from the first signalling frame to PLAYING.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Read the players' sockets in a sweep this often (one `epoll_wait` per core) instead
    /// of waiting on each socket. On loopback, a socket waiting for data makes the sending
    /// server interrupt the loadgen's CPU once per burst, which counts in the server's CPU.
    /// Latency is still measured to each packet's kernel arrival time. `0` waits per socket.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub read_sweep: Duration,
    /// A JSON object every session sends as `custom` in `connection`, as the SDK's
    /// `createSession({custom})` does: e.g. `{"token":"..."}` for a server that requires its
    /// shared secret, or what the operator's `connect` hook checks.
    #[arg(long, value_parser = parse_custom)]
    pub custom: Option<serde_json::Value>,
}

/// `--custom`: a JSON object.
fn parse_custom(text: &str) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err("must be a JSON object, e.g. {\"token\":\"secret\"}".into())
    }
}

/// What the publishers send.
#[derive(Clone, Debug, Args)]
pub struct Media {
    /// Video bitrate per stream (`1500k`, `1.5M`, `800000`).
    #[arg(long, default_value = "1500k", value_parser = parse_bitrate)]
    pub bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Video codec.
    #[arg(long, value_enum, default_value_t = Codec::Vp8)]
    pub codec: Codec,
    /// Time between keyframes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub keyframe_interval: Duration,
    /// Send no audio track (an Opus-sized frame every 20 ms otherwise).
    #[arg(long)]
    pub no_audio: bool,
    /// Send no video track.
    #[arg(long)]
    pub no_video: bool,
    /// Video leaves paced at this multiple of `--bitrate`, a packet at a time, as a strict
    /// pacer sends it (libwebrtc paces at 2.5x). 0 sends each frame's packets together, as
    /// Chrome does: its pacer lets up to 40 ms at that rate go at once.
    #[arg(long, default_value_t = 0.0, value_parser = parse_pacing)]
    pub pacing: f64,
}

/// How players arrive.
#[derive(Clone, Debug, Args)]
pub struct Ramp {
    /// Number of players.
    #[arg(long, default_value_t = 10)]
    pub players: usize,
    /// Players started per second (`50/s` or `50`).
    #[arg(long, default_value = "50/s", value_parser = parse_rate)]
    pub ramp: f64,
    /// Joins in flight at once, at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    Vp8,
    H264,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RelayMode {
    /// `POST /rest-api/pull/push` on each hop's upstream server.
    Push,
    /// `POST /rest-api/pull/pull` on each hop's downstream server.
    Pull,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub media: Media,
    /// Stream name (a `-N` suffix is added when there is more than one publisher).
    #[arg(long, default_value = "loadgen")]
    pub stream: String,
    /// Number of publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Publishers started per second.
    #[arg(long, default_value = "20/s", value_parser = parse_rate)]
    pub ramp: f64,
}

#[derive(Debug, Args)]
pub struct PlayArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub ramp: Ramp,
    /// Stream(s) to play; players are spread over them in turn. Repeat or separate with commas.
    #[arg(long, default_value = "loadgen", value_delimiter = ',')]
    pub stream: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub media: Media,
    #[command(flatten)]
    pub ramp: Ramp,
    /// Stream name (a random suffix is added so runs never collide).
    #[arg(long, default_value = "fanout")]
    pub stream: String,
}

#[derive(Debug, Args)]
pub struct RelayChainArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub media: Media,
    #[command(flatten)]
    pub ramp: Ramp,
    /// Stream name on every hop (a random suffix is added).
    #[arg(long, default_value = "chain")]
    pub stream: String,
    /// The next servers' signalling URLs, in chain order (`--server` is the first hop).
    #[arg(long = "hop", required = true)]
    pub hops: Vec<String>,
    /// REST URL of each `--hop`, in the same order (`--rest` is the first server's).
    #[arg(long = "hop-rest", required = true)]
    pub hop_rest: Vec<String>,
    /// Push from each server to the next, or pull on each server from the previous one.
    #[arg(long, value_enum, default_value_t = RelayMode::Pull)]
    pub mode: RelayMode,
    /// Players on every server before the last (`--players` play on the last), to measure
    /// what each hop adds.
    #[arg(long, default_value_t = 5)]
    pub hop_players: usize,
    /// How long a relayed stream may take to appear on the next server.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub relay_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub media: Media,
    #[command(flatten)]
    pub ramp: Ramp,
    /// Stream name (a random suffix is added).
    #[arg(long, default_value = "soak")]
    pub stream: String,
    /// Players replaced per second (one leaves, a new one joins).
    #[arg(long, default_value = "2/s", value_parser = parse_rate)]
    pub churn: f64,
}

impl Media {
    /// The generator configuration for one publisher.
    pub fn synth(&self) -> SynthConfig {
        SynthConfig {
            video: (!self.no_video).then_some(match self.codec {
                Codec::Vp8 => VideoCodec::Vp8,
                Codec::H264 => VideoCodec::H264,
            }),
            audio: !self.no_audio,
            video_bitrate_bps: self.bitrate,
            fps: self.fps,
            keyframe_interval: self.keyframe_interval,
            pacing_factor: (self.pacing > 0.0).then_some(self.pacing),
            ..SynthConfig::default()
        }
    }
}

/// A pacing factor: 0 (off) or at least 1 (a pacer slower than the bitrate would fall
/// behind for ever).
pub fn parse_pacing(text: &str) -> Result<f64, String> {
    let factor: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a pacing factor (examples: 2.5, 0)"))?;
    if factor == 0.0 || (factor.is_finite() && factor >= 1.0) {
        Ok(factor)
    } else {
        Err(format!(
            "pacing factor {text:?} must be 0 (burst each frame) or at least 1"
        ))
    }
}

/// Parses `1500k`, `1.5M`, `800000`, `2m` (bits per second; k = 1000).
pub fn parse_bitrate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let value = f64::from_str(number.trim())
        .map_err(|_| format!("{text:?} is not a bitrate (examples: 1500k, 1.5M, 800000)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("bitrate {text:?} must be positive"));
    }
    Ok((value * scale).round() as u64)
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value = f64::from_str(number)
        .map_err(|_| format!("{text:?} is not a duration (examples: 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("duration {text:?} must not be negative"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a rate: `50/s`, `50`, `2/m`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, per) = match t.split_once('/') {
        Some((n, unit)) => (n, parse_duration(&format!("1{}", unit.trim()))?),
        None => (t, Duration::from_secs(1)),
    };
    let value = f64::from_str(number.trim())
        .map_err(|_| format!("{text:?} is not a rate (examples: 50/s, 50, 120/m)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("rate {text:?} must be positive"));
    }
    Ok(value / per.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_factors() {
        assert_eq!(parse_pacing("2.5"), Ok(2.5));
        assert_eq!(parse_pacing("0"), Ok(0.0));
        assert_eq!(parse_pacing("1"), Ok(1.0));
        assert!(parse_pacing("0.5").unwrap_err().contains("at least 1"));
        assert!(parse_pacing("-1").is_err());
        assert!(parse_pacing("inf").is_err());
        assert!(
            parse_pacing("fast")
                .unwrap_err()
                .contains("not a pacing factor")
        );
    }

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("1500k"), Ok(1_500_000));
        assert_eq!(parse_bitrate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_bitrate("800000"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("0k").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(parse_rate("-1/s").is_err());
    }

    #[test]
    fn cli_parses_the_issue_example() {
        let cli = Cli::try_parse_from([
            "relaycast-loadgen",
            "fanout",
            "--players",
            "200",
            "--duration",
            "20s",
            "--json",
            "--bitrate",
            "1500k",
            "--codec",
            "h264",
            "--ramp",
            "100/s",
        ])
        .unwrap();
        let Scenario::Fanout(f) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!(f.ramp.players, 200);
        assert_eq!(f.ramp.ramp, 100.0);
        assert_eq!(f.common.duration, Duration::from_secs(20));
        assert!(f.common.json);
        assert_eq!(f.media.synth().video, Some(VideoCodec::H264));
    }
}
