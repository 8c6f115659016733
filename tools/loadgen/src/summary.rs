//! The run's figures: per-player baselines at the start of the measured window, totals over
//! it, and the JSON [`Summary`] the loadgen prints (its schema is documented in
//! tools/loadgen/README.md and read back by the fan-out driver in benches/).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use relaycast_dataplane::PeerReport;
use relaycast_dataplane::synth::{GeneratorStats, SeqSpan};
use serde::{Deserialize, Serialize};

/// The final report of one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// The subcommand (`fanout`, `play`, ...).
    pub command: String,
    /// The server the players played from (the last hop of a relay chain).
    pub server: String,
    /// The stream names played or published.
    pub streams: Vec<String>,
    /// Players asked for (publishers for `publish`).
    pub players: usize,
    /// Players that reached PLAYING with a connected peer and were still playing when the
    /// window closed (publishers that reached PUBLISHING for `publish`).
    pub connected: usize,
    /// Joins that failed, by reason.
    pub failed: Failed,
    /// Players that joined and were then dropped: the server ended their stream (a final
    /// status such as `STOPPED` or `FAILED`) or their signalling session closed. Their packets
    /// count until then, and what they missed after it counts as lost.
    #[serde(default)]
    pub dropped: Failed,
    /// Publishers run by this process.
    pub publishers: usize,
    /// Length of the measured window, in seconds.
    pub duration_s: f64,
    /// Media packets this process's publishers sent during the window (`null` when the stream
    /// is published elsewhere).
    pub packets_sent: Option<u64>,
    /// Media packets the players received during the window.
    pub packets_received: u64,
    /// Media packets the players missed during the window: gaps in the trailer sequences, and
    /// what was sent after a player's last packet (with this process's publisher, what it had
    /// sent a second before the window closed; for `play`, as far as the stream's furthest
    /// player had got).
    pub packets_lost: u64,
    /// `packets_lost / (packets_received + packets_lost)`, in percent.
    pub loss_pct: f64,
    /// Media packets that reached a player after a later packet of the same kind (counted in
    /// `packets_received`; a gap they fill is not lost).
    #[serde(default)]
    pub packets_reordered: u64,
    /// Media packets a player received again (not counted in `packets_received`).
    #[serde(default)]
    pub packets_duplicated: u64,
    /// Media packets received per second over the window, all players together.
    pub packets_per_s: f64,
    /// One-way latency from the publisher's send to the player's receive, over the window.
    pub latency_ms: Latency,
    /// From a player's first signalling frame to its first media packet.
    pub join_ms: Join,
    /// Players that were in the whole window and received nothing in it.
    pub stalled: usize,
    /// The server's user + system CPU over the window divided by [`Summary::forwarded_packets`]
    /// (with `--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// The server's resident memory at the end of the window (with `--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    /// The server's CPU over the window as a share of one core, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    /// Packets the server sent during the window: UDP datagrams from its `/metrics` with
    /// `--rest`, else the players' media packets received + lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_packets: Option<u64>,
    /// Which of the two [`Summary::forwarded_packets`] is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_basis: Option<String>,
    /// The server's data-plane counters over the window (with `--rest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_counters: Option<crate::rest::CoreCounters>,
    /// The server's resident memory before the players joined and the growth per player
    /// (with `--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_memory: Option<ServerMemory>,
    /// This process's own cost (it shares the machine with the server on loopback).
    pub loadgen: Own,
    /// Per-hop figures of `relay-chain`, origin first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hops: Vec<Hop>,
    /// Joins and departures of `soak`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    /// The run was interrupted (Ctrl-C or SIGTERM) and its window closed early: `duration_s`
    /// is how long it lasted. Absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failed {
    pub count: usize,
    /// Reason -> how many.
    pub reasons: BTreeMap<String, usize>,
}

impl Failed {
    /// From each reason's count.
    pub fn of(reasons: BTreeMap<String, usize>) -> Failed {
        Failed {
            count: reasons.values().sum(),
            reasons,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    /// Samples (packets) the percentiles are over.
    pub samples: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Join {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ServerMemory {
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    /// (after - before) / connected players, in KiB: server memory per player peer connection
    /// (and its signalling session).
    pub kib_per_player: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Own {
    pub cpu_pct: f64,
    pub rss_mb: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Hop {
    pub server: String,
    pub players: usize,
    pub connected: usize,
    pub packets_received: u64,
    pub loss_pct: f64,
    pub latency_ms: Latency,
    /// This hop's latency minus the previous hop's (p50 and p99): what the relay hop adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_ms: Option<Added>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Added {
    pub p50: f64,
    pub p99: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Churn {
    pub joined: usize,
    pub left: usize,
    pub failed_joins: usize,
}

/// The newest trailer sequence of each kind a player should have received (sequences start
/// at 0 and go up by one per packet of that kind); `None`: none of that kind was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub audio: Option<u64>,
    pub video: Option<u64>,
}

impl Expected {
    /// What a publisher has sent so far.
    pub fn sent(g: &GeneratorStats) -> Expected {
        Expected {
            audio: g.audio_packets.checked_sub(1),
            video: g.video_packets.checked_sub(1),
        }
    }

    /// What a player has received so far: its highest sequences.
    pub fn reached(report: &PeerReport) -> Expected {
        let probe = report.probe.as_ref();
        Expected {
            audio: probe.and_then(|p| p.audio_seqs).map(|s| s.highest),
            video: probe.and_then(|p| p.video_seqs).map(|s| s.highest),
        }
    }

    /// The further of two, kind by kind.
    pub fn max(self, other: Expected) -> Expected {
        Expected {
            audio: self.audio.max(other.audio),
            video: self.video.max(other.video),
        }
    }
}

/// Media packets a player has missed so far. The gaps in what it received, plus, when
/// `expected` is known, the sequences after its highest up to `expected` (a player that stopped
/// receiving has no gap to show for it), and with `from_zero` everything below its first
/// packet (all of `expected` if it never had one). Differences of this between two reports are
/// what the player missed in between.
pub fn missed_so_far(report: &PeerReport, expected: Option<Expected>, from_zero: bool) -> u64 {
    let Some(probe) = report.probe.as_ref() else {
        return 0;
    };
    let Some(expected) = expected else {
        return probe.lost;
    };
    let kind = |newest: Option<u64>, seen: Option<SeqSpan>| -> u64 {
        let Some(newest) = newest else { return 0 };
        match seen {
            Some(span) => {
                let below = if from_zero { span.first } else { 0 };
                below.saturating_add(newest.saturating_sub(span.highest))
            }
            None if from_zero => newest.saturating_add(1),
            None => 0,
        }
    };
    probe
        .lost
        .saturating_add(kind(expected.audio, probe.audio_seqs))
        .saturating_add(kind(expected.video, probe.video_seqs))
}

/// A player's counters at the start of the window; the window's figures are the difference.
#[derive(Clone, Debug, Default)]
pub struct Baseline {
    /// Taken when the window opened (not a late joiner's zero).
    pub from_start: bool,
    received: u64,
    reordered: u64,
    duplicates: u64,
    /// [`missed_so_far`] then.
    missed: u64,
    /// Non-empty latency buckets (value, count): a few hundred entries, not a whole histogram.
    latency: Vec<(u64, u64)>,
}

impl Baseline {
    /// For a player that joined after the window opened.
    pub fn zero() -> Baseline {
        Baseline::default()
    }

    /// `expected`: what the player should have received by now, when known.
    pub fn of(report: &PeerReport, expected: Option<Expected>) -> Baseline {
        let (received, _) = media_counts(report);
        let latency = report
            .latency
            .as_ref()
            .map(|h| {
                h.iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value()))
                    .collect()
            })
            .unwrap_or_default();
        let (reordered, duplicates) = order_counts(report);
        Baseline {
            from_start: true,
            received,
            reordered,
            duplicates,
            missed: missed_so_far(report, expected, true),
            latency,
        }
    }
}

/// Media packets received (duplicates left out) and lost (gaps) by a player so far.
pub fn media_counts(report: &PeerReport) -> (u64, u64) {
    report.probe.as_ref().map_or((0, 0), |p| {
        let media = p.audio_packets + p.video_packets;
        (media.saturating_sub(p.duplicates), p.lost)
    })
}

/// Media packets that arrived after a later one, and duplicates, so far.
fn order_counts(report: &PeerReport) -> (u64, u64) {
    report
        .probe
        .as_ref()
        .map_or((0, 0), |p| (p.reordered, p.duplicates))
}

/// Sums of many players' window figures.
#[derive(Clone, Debug)]
pub struct Totals {
    pub players: usize,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub stalled: usize,
    pub latency: Histogram<u64>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            players: 0,
            received: 0,
            lost: 0,
            reordered: 0,
            duplicates: 0,
            stalled: 0,
            latency: new_histogram(),
        }
    }
}

impl Totals {
    /// Adds one player's figures since `baseline`. `expected` is what it should have received
    /// by now, when known: see [`missed_so_far`]. A player that joined during the window
    /// (`baseline` zero) misses nothing before its first packet.
    pub fn add(&mut self, baseline: &Baseline, report: &PeerReport, expected: Option<Expected>) {
        let (received, _) = media_counts(report);
        let received = received.saturating_sub(baseline.received);
        let lost =
            missed_so_far(report, expected, baseline.from_start).saturating_sub(baseline.missed);
        if received == 0 && baseline.from_start {
            self.stalled += 1;
        }
        let (reordered, duplicates) = order_counts(report);
        self.players += 1;
        self.received += received;
        self.lost += lost;
        self.reordered += reordered.saturating_sub(baseline.reordered);
        self.duplicates += duplicates.saturating_sub(baseline.duplicates);
        if let Some(hist) = &report.latency {
            let mut window = hist.clone();
            if !baseline.latency.is_empty() {
                let mut before = Histogram::new_from(hist);
                for &(value, count) in &baseline.latency {
                    let _ = before.record_n(value, count);
                }
                if window.subtract(&before).is_err() {
                    window = hist.clone();
                }
            }
            let _ = self.latency.add(&window);
        }
    }

    pub fn merge(&mut self, other: &Totals) {
        self.players += other.players;
        self.received += other.received;
        self.lost += other.lost;
        self.reordered += other.reordered;
        self.duplicates += other.duplicates;
        self.stalled += other.stalled;
        let _ = self.latency.add(&other.latency);
    }

    pub fn loss_pct(&self) -> f64 {
        let expected = self.received + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / expected as f64
        }
    }

    pub fn latency_ms(&self) -> Latency {
        let h = &self.latency;
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// Percentiles of join times (milliseconds).
pub fn join_summary(join_ms: &[f64]) -> Join {
    if join_ms.is_empty() {
        return Join::default();
    }
    let mut sorted = join_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Join {
        p50: round3(at(0.5)),
        p99: round3(at(0.99)),
        max: round3(sorted[sorted.len() - 1]),
    }
}

/// The histogram every latency figure uses: 1 us to 60 s, 3 significant digits (as the
/// data plane's probe).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Summary {
    /// A few lines for a person (stderr when `--json` is not given).
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.interrupted {
            s += "interrupted: the window closed early\n";
        }
        s += &format!(
            "{} on {}: {}/{} connected, {} failed, {} publisher(s), window {:.1} s\n",
            self.command,
            self.server,
            self.connected,
            self.players,
            self.failed.count,
            self.publishers,
            self.duration_s
        );
        for (reason, n) in &self.failed.reasons {
            s += &format!("  failed x{n}: {reason}\n");
        }
        if self.dropped.count > 0 {
            s += &format!("{} dropped after joining:\n", self.dropped.count);
        }
        for (reason, n) in &self.dropped.reasons {
            s += &format!("  dropped x{n}: {reason}\n");
        }
        s += &format!(
            "packets: sent {} received {} lost {} ({:.3}% loss), {} reordered, {} duplicated, \
             {:.0} pkt/s received, {} stalled\n",
            self.packets_sent
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            self.packets_received,
            self.packets_lost,
            self.loss_pct,
            self.packets_reordered,
            self.packets_duplicated,
            self.packets_per_s,
            self.stalled
        );
        let l = &self.latency_ms;
        s += &format!(
            "latency ms: p50 {:.3} p95 {:.3} p99 {:.3} max {:.3}; join ms: p50 {:.1} p99 {:.1}\n",
            l.p50, l.p95, l.p99, l.max, self.join_ms.p50, self.join_ms.p99
        );
        if let (Some(cpu), Some(pct)) = (self.cpu_us_per_forwarded_packet, self.server_cpu_pct) {
            s += &format!(
                "server: {cpu:.2} us CPU per forwarded packet, {pct:.1}% of a core, RSS {:.1} MB\n",
                self.rss_mb.unwrap_or(0.0)
            );
        }
        if let Some(m) = &self.server_memory {
            s += &format!(
                "server memory: {:.1} -> {:.1} MB, {:.1} KiB per player\n",
                m.rss_before_mb, m.rss_after_mb, m.kib_per_player
            );
        }
        for (i, hop) in self.hops.iter().enumerate() {
            s += &format!(
                "hop {i} {}: {}/{} players, loss {:.3}%, latency p50 {:.3} p99 {:.3} ms{}\n",
                hop.server,
                hop.connected,
                hop.players,
                hop.loss_pct,
                hop.latency_ms.p50,
                hop.latency_ms.p99,
                hop.added_ms.map_or_else(String::new, |a| format!(
                    " (adds p50 {:.3} p99 {:.3} ms)",
                    a.p50, a.p99
                ))
            );
        }
        if let Some(c) = &self.churn {
            s += &format!(
                "churn: {} joined, {} left, {} joins failed\n",
                c.joined, c.left, c.failed_joins
            );
        }
        s += &format!(
            "loadgen: {:.1}% of a core, RSS {:.1} MB\n",
            self.loadgen.cpu_pct, self.loadgen.rss_mb
        );
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use relaycast_dataplane::synth::ProbeReport;
    use relaycast_dataplane::{CoreId, PeerId};

    #[test]
    fn reordered_and_duplicated_packets_over_the_window() {
        let with = |received, reordered, duplicates| {
            let mut r = report(received, 0, &[]);
            let probe = r.probe.as_mut().unwrap();
            probe.reordered = reordered;
            probe.duplicates = duplicates;
            r
        };
        let before = with(100, 2, 1);
        let after = with(310, 5, 11);
        let mut totals = Totals::default();
        totals.add(&Baseline::of(&before, None), &after, None);
        assert_eq!((totals.reordered, totals.duplicates), (3, 10));
        // Duplicates are not received packets: (310 - 11) - (100 - 1).
        assert_eq!(totals.received, 200);
    }

    /// A player's report: `received` media packets, half audio, `lost` in gaps.
    pub(crate) fn report(received: u64, lost: u64, latencies: &[u64]) -> PeerReport {
        let mut h = new_histogram();
        for &l in latencies {
            h.record(l).unwrap();
        }
        PeerReport {
            peer: PeerId(1),
            core: CoreId(0),
            connected: true,
            connected_at: None,
            local: None,
            probe: Some(ProbeReport {
                audio_packets: received / 2,
                video_packets: received - received / 2,
                lost,
                ..ProbeReport::default()
            }),
            latency: Some(h),
            generator: None,
            link: Default::default(),
        }
    }

    /// A player that has received `received` video packets, sequences `first..=highest`
    /// (`None`: nothing yet), with no gap.
    fn player(received: u64, video: Option<(u64, u64)>) -> PeerReport {
        let mut report = report(received, 0, &[]);
        let probe = report.probe.as_mut().unwrap();
        probe.video_seqs = video.map(|(first, highest)| SeqSpan { first, highest });
        report
    }

    fn video_sent(newest: u64) -> Option<Expected> {
        Some(Expected {
            audio: None,
            video: Some(newest),
        })
    }

    /// One player's totals over a window it was in from the start, the publisher's newest
    /// video sequence being `open` and `close` at its ends (`None`: not known).
    fn window(
        before: &PeerReport,
        open: Option<u64>,
        after: &PeerReport,
        close: Option<u64>,
    ) -> Totals {
        let mut totals = Totals::default();
        totals.add(
            &Baseline::of(before, open.and_then(video_sent)),
            after,
            close.and_then(video_sent),
        );
        totals
    }

    #[test]
    fn window_is_the_difference_from_the_baseline() {
        let before = report(100, 1, &[5_000; 100]);
        let after = report(300, 3, &[&[5_000u64; 100][..], &[1_000; 200][..]].concat());
        let mut totals = Totals::default();
        totals.add(&Baseline::of(&before, None), &after, None);
        assert_eq!(totals.received, 200);
        assert_eq!(totals.lost, 2);
        assert_eq!(totals.stalled, 0);
        let l = totals.latency_ms();
        assert_eq!(l.samples, 200);
        assert!((l.max - 1.0).abs() < 0.01, "{l:?}");
        assert!((totals.loss_pct() - 2.0 / 202.0 * 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_player_that_stops_receiving_loses_what_was_sent_after() {
        // Sequences 0..=100 received when the window opens (the publisher at 100), 101..=150
        // by the end, while the publisher had sent up to 300: 150 lost, with no gap to show.
        let (before, after) = (player(101, Some((0, 100))), player(151, Some((0, 150))));
        let totals = window(&before, Some(100), &after, Some(300));
        assert_eq!((totals.received, totals.lost, totals.stalled), (50, 150, 0));
        // Without the publisher's figure only gaps count.
        assert_eq!(window(&before, None, &after, None).lost, 0);
    }

    #[test]
    fn a_player_behind_at_the_start_that_catches_up_lost_nothing() {
        // At the start it had 90 of the publisher's 100 (ten in flight); all arrive later.
        let (before, after) = (player(91, Some((0, 90))), player(301, Some((0, 300))));
        let totals = window(&before, Some(100), &after, Some(300));
        assert_eq!((totals.received, totals.lost), (210, 0));
    }

    #[test]
    fn a_player_that_received_nothing_lost_the_window() {
        let nothing = player(0, None);
        let totals = window(&nothing, Some(99), &nothing, Some(149));
        assert_eq!((totals.stalled, totals.lost), (1, 50));
    }

    #[test]
    fn a_player_whose_first_packet_came_late_lost_those_before_it() {
        // Nothing when the window opened (publisher at 99); its first packet was 120.
        let totals = window(
            &player(0, None),
            Some(99),
            &player(30, Some((120, 149))),
            Some(149),
        );
        assert_eq!(totals.lost, 20);
    }

    #[test]
    fn a_late_joiner_without_packets_yet_is_not_stalled() {
        let mut totals = Totals::default();
        totals.add(&Baseline::zero(), &player(0, None), video_sent(100));
        assert_eq!((totals.stalled, totals.lost), (0, 0));
    }

    #[test]
    fn a_late_joiner_misses_nothing_before_its_first_packet() {
        let after = player(30, Some((1_000, 1_029)));
        let late = |sent| {
            let mut totals = Totals::default();
            totals.add(&Baseline::zero(), &after, video_sent(sent));
            totals.lost
        };
        assert_eq!(late(1_029), 0);
        // ... but what was sent after its last packet counts.
        assert_eq!(late(1_049), 20);
    }

    #[test]
    fn expected_is_the_newest_sequence_sent() {
        let g = GeneratorStats {
            audio_packets: 0,
            video_packets: 10,
            ..GeneratorStats::default()
        };
        assert_eq!(Expected::sent(&g), video_sent(9).unwrap());
        let a = Expected {
            audio: Some(5),
            video: None,
        };
        assert_eq!(
            a.max(video_sent(9).unwrap()),
            Expected {
                audio: Some(5),
                video: Some(9)
            }
        );
    }

    #[test]
    fn join_percentiles() {
        let j = join_summary(&[10.0, 20.0, 30.0, 40.0, 1000.0]);
        assert_eq!(j.p50, 30.0);
        assert_eq!(j.p99, 1000.0);
        assert_eq!(join_summary(&[]).p50, 0.0);
    }

    #[test]
    fn summary_round_trips_with_the_issue_field_names() {
        let s = Summary {
            players: 2,
            connected: 2,
            cpu_us_per_forwarded_packet: Some(1.5),
            rss_mb: Some(20.0),
            ..Summary::default()
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for key in [
            "players",
            "connected",
            "failed",
            "packets_sent",
            "packets_received",
            "loss_pct",
            "latency_ms",
            "join_ms",
            "cpu_us_per_forwarded_packet",
            "rss_mb",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p95", "p99", "max"] {
            assert!(v["latency_ms"].get(key).is_some());
        }
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back.players, 2);
    }
}
