//! The live progress line (stderr, only on a terminal): phase, connected and failed players,
//! packets per second into the loadgen, and loss and p99 latency from a rotating sample of
//! players (reading every player each tick would cost more than it shows).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use relaycast_controlplane::client::Endpoint;

use crate::fleet::SharedFleet;
use crate::summary::media_counts;

const SAMPLE: usize = 16;

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
        let (mut received, mut lost, mut p99) = (0u64, 0u64, 0u64);
        for player in &sample {
            if let Some(report) = player.report().await {
                let (r, l) = media_counts(&report);
                received += r;
                lost += l;
                if let Some(p) = &report.probe {
                    p99 = p99.max(p.latency_us.p99);
                }
            }
        }
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

fn rx_packets(endpoint: &Endpoint) -> u64 {
    endpoint
        .data()
        .counters()
        .iter()
        .map(|c| c.rx_packets.load(Ordering::Relaxed))
        .sum()
}
