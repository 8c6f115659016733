//! The live progress line (stderr, only on a terminal): phase, connected and failed players,
//! packets per second into the loadgen, and loss and p99 latency from a rotating sample of
//! players (reading every player each tick would cost more than it shows). The sample's loss
//! counts, as the summary's does, what a player that stopped receiving has missed: how far it
//! is behind the furthest sampled player of its stream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use relaycast_controlplane::client::Endpoint;
use relaycast_dataplane::PeerReport;

use crate::fleet::SharedFleet;
use crate::summary::{Expected, media_counts, missed_so_far};

const SAMPLE: usize = 16;
/// A sampled player whose last packet is older than this and that is behind the furthest
/// sampled player of its stream has stopped receiving: what it is behind counts as lost.
/// Younger, the difference is packets in flight between the reports' readings.
const STOPPED_AFTER: Duration = Duration::from_secs(1);

/// A progress line that updates itself until dropped.
pub struct Progress {
    bar: ProgressBar,
    phase: Rc<RefCell<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts the line for `target` players of `fleet` on `endpoint`.
    pub fn start(fleet: SharedFleet, endpoint: Arc<Endpoint>, target: usize) -> Progress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .expect("the progress template is valid"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let phase = Rc::new(RefCell::new(String::from("starting")));
        let task = tokio::task::spawn_local(update(
            bar.clone(),
            Rc::clone(&phase),
            fleet,
            endpoint,
            target,
        ));
        Progress { bar, phase, task }
    }

    pub fn phase(&self, text: impl Into<String>) {
        *self.phase.borrow_mut() = text.into();
    }

    /// Prints a line above the progress line.
    pub fn println(&self, text: impl AsRef<str>) {
        self.bar.println(text);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

async fn update(
    bar: ProgressBar,
    phase: Rc<RefCell<String>>,
    fleet: SharedFleet,
    endpoint: Arc<Endpoint>,
    target: usize,
) {
    let mut last_rx = rx_packets(&endpoint);
    let mut last_at = Instant::now();
    let mut cursor = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let rx = rx_packets(&endpoint);
        let now = Instant::now();
        let pps = (rx - last_rx) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
        (last_rx, last_at) = (rx, now);

        let (sample, connected, failed, dropped) = {
            let f = fleet.borrow();
            let dropped = f.players.iter().filter(|p| p.ended().is_some()).count();
            let n = f.players.len();
            let take = n.min(SAMPLE);
            let sample: Vec<_> = (0..take)
                .map(|k| Rc::clone(&f.players[(cursor + k) % n]))
                .collect();
            cursor = if n == 0 { 0 } else { (cursor + take) % n };
            (sample, n - dropped, f.failed(), dropped)
        };
        let mut reports = Vec::with_capacity(sample.len());
        for player in &sample {
            if let Some(report) = player.report().await {
                reports.push((player.stream.clone(), report));
            }
        }
        let (received, lost) = sample_loss(&reports, Instant::now());
        let p99 = reports
            .iter()
            .filter_map(|(_, r)| r.probe.as_ref().map(|p| p.latency_us.p99))
            .max()
            .unwrap_or(0);
        let loss = if received + lost == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / (received + lost) as f64
        };
        bar.set_message(format!(
            "{} | players {connected}/{target} failed {failed} dropped {dropped} | {:.0} pkt/s in \
             | loss {loss:.3}% \
             | p99 {:.2} ms (sample)",
            phase.borrow(),
            pps,
            p99 as f64 / 1000.0
        ));
    }
}

/// Media packets the sampled players (stream name, report) have received and lost since
/// they joined. Lost: the gaps in what each received, and for a player whose last packet is
/// older than [`STOPPED_AFTER`], how far it is behind the furthest sampled player of its
/// stream.
fn sample_loss(sample: &[(String, PeerReport)], now: Instant) -> (u64, u64) {
    let mut furthest: HashMap<&str, Expected> = HashMap::new();
    for (stream, report) in sample {
        let entry = furthest.entry(stream.as_str()).or_default();
        *entry = entry.max(Expected::reached(report));
    }
    let (mut received, mut lost) = (0, 0);
    for (stream, report) in sample {
        let (r, gaps) = media_counts(report);
        let stopped = report
            .probe
            .as_ref()
            .and_then(|p| p.last_packet_at)
            .is_some_and(|last| now.saturating_duration_since(last) > STOPPED_AFTER);
        received += r;
        lost += if stopped {
            missed_so_far(report, furthest.get(stream.as_str()).copied(), false)
        } else {
            gaps
        };
    }
    (received, lost)
}

fn rx_packets(endpoint: &Endpoint) -> u64 {
    endpoint
        .data()
        .counters()
        .iter()
        .map(|c| c.rx_packets.load(Ordering::Relaxed))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::report;
    use relaycast_dataplane::synth::SeqSpan;

    /// A player of `stream` that received video sequences `first..=highest` with `gaps` of
    /// them missing, its last packet `ago` before now.
    fn player(
        stream: &str,
        first: u64,
        highest: u64,
        gaps: u64,
        ago: Duration,
        now: Instant,
    ) -> (String, PeerReport) {
        let mut report = report(highest - first + 1 - gaps, gaps, &[]);
        let probe = report.probe.as_mut().unwrap();
        probe.video_seqs = Some(SeqSpan { first, highest });
        probe.last_packet_at = Some(now - ago);
        (stream.to_owned(), report)
    }

    #[test]
    fn a_sampled_player_that_stopped_receiving_shows_as_loss() {
        let now = Instant::now() + Duration::from_secs(60);
        let fresh = Duration::from_millis(10);
        let sample = [
            player("a", 0, 999, 0, fresh, now),
            // Stopped 5 s ago, 500 packets behind the furthest of its stream.
            player("a", 0, 499, 0, Duration::from_secs(5), now),
        ];
        assert_eq!(sample_loss(&sample, now), (1500, 500));
    }

    #[test]
    fn packets_in_flight_and_other_streams_are_not_loss() {
        let now = Instant::now() + Duration::from_secs(60);
        let fresh = Duration::from_millis(10);
        let sample = [
            player("a", 0, 999, 0, fresh, now),
            // Two packets behind, read a moment earlier: still receiving.
            player("a", 0, 997, 0, fresh, now),
            // Another stream, far behind "a" but the furthest of its own.
            player("b", 0, 99, 0, Duration::from_secs(5), now),
            // Joined late: nothing before its first packet is counted.
            player("a", 900, 999, 0, fresh, now),
        ];
        assert_eq!(sample_loss(&sample, now), (2198, 0));
    }

    #[test]
    fn gaps_count_whether_or_not_a_player_stopped() {
        let now = Instant::now() + Duration::from_secs(60);
        let sample = [
            player("a", 0, 999, 3, Duration::from_millis(10), now),
            player("a", 0, 989, 2, Duration::from_secs(2), now),
        ];
        assert_eq!(sample_loss(&sample, now), (997 + 988, 3 + 2 + 10));
    }
}
