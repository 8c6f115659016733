//! Publishers and players: joining them (one signalling session each, as browsers do) at a
//! given rate with a bounded number in flight, reading their reports in bounded chunks, and
//! folding their figures into window totals. Everything runs on one tokio thread (a
//! `LocalSet`), so the fleet is shared with `Rc<RefCell<..>>`; the peers themselves live on
//! the endpoint's data-plane cores.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaycast_controlplane::client::{
    ClientError, ClientPeer, ClientStream, ClientTimeouts, Endpoint, Session, StreamSignal,
};
use relaycast_controlplane::protocol::ConnectionRequest;
use relaycast_dataplane::PeerReport;
use relaycast_dataplane::synth::SynthConfig;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use crate::summary::{Baseline, Expected, Totals};

/// Reports are read this many at a time: each carries a latency histogram (~140 KB).
const REPORT_CHUNK: usize = 64;

/// How far back [`Fleet::sent_history`] goes.
const SENT_HISTORY: Duration = Duration::from_secs(5);

/// One player: its signalling session and its measuring peer.
pub struct Player {
    pub index: usize,
    pub server: String,
    pub stream: String,
    /// When its first signalling frame was sent.
    pub started: Instant,
    /// Its figures at the start of the measured window (`None` before the window opens).
    pub baseline: RefCell<Option<Baseline>>,
    media: Watched,
    _session: Session,
}

impl Player {
    /// Milliseconds from the first signalling frame to the first media packet.
    pub fn join_ms(&self, report: &PeerReport) -> Option<f64> {
        let first = report.probe.as_ref()?.first_packet_at?;
        Some(first.saturating_duration_since(self.started).as_secs_f64() * 1000.0)
    }

    /// Its peer's statistics; `None` once the peer is gone.
    pub async fn report(&self) -> Option<PeerReport> {
        self.media.peer.report().await
    }

    /// Why the server ended its stream (a final status) or its session closed, if either
    /// happened: a player that joined and was then dropped.
    pub fn ended(&self) -> Option<String> {
        self.media.ended()
    }
}

/// A published or played stream's peer, and why the server ended the stream, once it has.
struct Watched {
    peer: ClientPeer,
    ended: Rc<RefCell<Option<String>>>,
    watch: AbortHandle,
}

impl Watched {
    /// Follows the stream's statuses until a final one or the end of its session, and records
    /// why it ended. The loadgen does not stop its publishers or players during a run, so
    /// either means the server dropped it.
    fn new(stream: ClientStream) -> Watched {
        let ClientStream { mut handle, peer } = stream;
        let ended = Rc::new(RefCell::new(None));
        let record = Rc::clone(&ended);
        let watch = tokio::task::spawn_local(async move {
            let reason = loop {
                match handle.next_signal().await {
                    Ok(StreamSignal::Status(e)) if e.status.is_final() => {
                        let info = e.info.map(|i| format!(": {i}")).unwrap_or_default();
                        break format!("stream {}{info}", e.status.as_str());
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            };
            *record.borrow_mut() = Some(reason);
        })
        .abort_handle();
        Watched { peer, ended, watch }
    }

    fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// One publisher of synthetic media.
pub struct Publisher {
    pub name: String,
    media: Watched,
    _session: Session,
}

impl Publisher {
    /// Why the server ended its stream or its session closed, if either happened.
    pub fn ended(&self) -> Option<String> {
        self.media.ended()
    }

    /// Media packets sent so far.
    pub async fn sent(&self) -> Option<u64> {
        let report = self.media.peer.report().await?;
        let g = report.generator?;
        Some(g.audio_packets + g.video_packets)
    }

    /// The newest sequence of each kind sent so far.
    pub async fn expected(&self) -> Option<Expected> {
        let report = self.media.peer.report().await?;
        Some(Expected::sent(&report.generator?))
    }
}

/// What every player should have received by the time its report is read: what the stream's
/// publisher had sent a moment before (this process's publisher), or the furthest any player
/// of the same stream had got (a stream published elsewhere).
#[derive(Clone, Debug, Default)]
pub enum Reference {
    /// Not known: only gaps in what a player received count as lost.
    #[default]
    Unknown,
    /// One publisher feeds every player (relayed or not).
    All(Expected),
    /// By stream name.
    PerStream(HashMap<String, Expected>),
}

impl Reference {
    pub fn of(&self, player: &Player) -> Option<Expected> {
        match self {
            Reference::Unknown => None,
            Reference::All(e) => Some(*e),
            Reference::PerStream(map) => map.get(&player.stream).copied(),
        }
    }

    /// The furthest sequences `players` have received, per stream.
    pub async fn furthest(players: &[Rc<Player>]) -> Reference {
        let mut map: HashMap<String, Expected> = HashMap::new();
        each_report(players, |player, report| {
            if let Some(report) = report {
                let reached = Expected::reached(&report);
                let entry = map.entry(player.stream.clone()).or_default();
                *entry = entry.max(reached);
            }
        })
        .await;
        Reference::PerStream(map)
    }
}

/// How to reach the server and how long each step may take.
#[derive(Clone)]
pub struct Dialer {
    pub endpoint: Arc<Endpoint>,
    pub timeouts: ClientTimeouts,
    /// What each session's `connection` carries (`custom` from `--custom`).
    pub connection: ConnectionRequest,
}

impl Dialer {
    pub async fn publish(
        &self,
        server: &str,
        name: &str,
        synth: SynthConfig,
    ) -> Result<Publisher, ClientError> {
        let session = Session::connect(server, &self.connection, self.timeouts).await?;
        let stream = session.publish(&self.endpoint, name, synth).await?;
        Ok(Publisher {
            name: name.to_owned(),
            media: Watched::new(stream),
            _session: session,
        })
    }

    pub async fn play(
        &self,
        index: usize,
        server: &str,
        stream: &str,
    ) -> Result<Player, ClientError> {
        let started = Instant::now();
        let session = Session::connect(server, &self.connection, self.timeouts).await?;
        let media = Watched::new(session.play(&self.endpoint, stream).await?);
        Ok(Player {
            index,
            server: server.to_owned(),
            stream: stream.to_owned(),
            started,
            baseline: RefCell::new(None),
            media,
            _session: session,
        })
    }
}

/// Every player of a run, and what became of the ones that are gone.
#[derive(Default)]
pub struct Fleet {
    pub players: Vec<Rc<Player>>,
    pub failures: BTreeMap<String, usize>,
    pub attempted: usize,
    pub joined: usize,
    pub left: usize,
    /// Set when the measured window opens: later joiners start from a zero baseline.
    pub window_open: bool,
    /// Figures of players that left during the window.
    pub departed: Totals,
    /// Players the server had dropped before they left, by reason.
    pub departed_dropped: BTreeMap<String, usize>,
    pub join_ms: Vec<f64>,
    /// What the publisher had sent, read every few hundred milliseconds (`soak`): a player
    /// that leaves during the window is held to what was sent a moment before it left.
    pub sent_history: VecDeque<(Instant, Expected)>,
}

pub type SharedFleet = Rc<RefCell<Fleet>>;

impl Fleet {
    pub fn fail(&mut self, error: &ClientError) {
        *self.failures.entry(reason(error)).or_default() += 1;
    }

    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// Players that joined and were then dropped by the server, by reason.
    pub fn dropped(&self) -> BTreeMap<String, usize> {
        let mut reasons = dropped(&self.players);
        for (reason, n) in &self.departed_dropped {
            *reasons.entry(reason.clone()).or_default() += n;
        }
        reasons
    }

    /// Records what the publisher has sent by `at`; keeps the last few seconds.
    pub fn note_sent(&mut self, at: Instant, sent: Expected) {
        self.sent_history.push_back((at, sent));
        while self
            .sent_history
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > SENT_HISTORY)
        {
            self.sent_history.pop_front();
        }
    }

    /// What the publisher had sent by `at`, from the newest reading no later than it.
    pub fn sent_by(&self, at: Instant) -> Option<Expected> {
        self.sent_history
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map(|(_, e)| *e)
    }
}

/// Those of `players` whose stream or session has ended, by reason.
pub fn dropped(players: &[Rc<Player>]) -> BTreeMap<String, usize> {
    tally(players.iter().filter_map(|p| p.ended()))
}

/// How many times each reason occurs.
pub fn tally(reasons: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for reason in reasons {
        *counts.entry(reason).or_default() += 1;
    }
    counts
}

/// A failure reason as it is grouped in the summary.
pub fn reason(error: &ClientError) -> String {
    error.to_string()
}

/// Turns true when the run is asked to stop early (Ctrl-C).
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// Waits until `stop` turns true (forever if its sender is gone).
pub async fn stopped(stop: &mut Stop) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Which server and stream player `i` joins.
pub type Target = Rc<dyn Fn(usize) -> (String, String)>;

/// Starts players `indices` at `rate` per second, at most `concurrency` joining at once, and
/// returns once every join has finished (joined or failed). When `stop` turns true no more
/// start.
pub async fn ramp(
    fleet: &SharedFleet,
    dialer: &Dialer,
    target: Target,
    indices: std::ops::Range<usize>,
    rate: f64,
    concurrency: usize,
    mut stop: Stop,
) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut joins = JoinSet::new();
    for i in indices {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped(&mut stop) => break,
        }
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        fleet.borrow_mut().attempted += 1;
        let (server, stream) = target(i);
        let dialer = dialer.clone();
        let fleet = Rc::clone(fleet);
        joins.spawn_local(async move {
            let result = dialer.play(i, &server, &stream).await;
            drop(permit);
            admit(&fleet, result);
        });
        while joins.try_join_next().is_some() {}
    }
    while joins.join_next().await.is_some() {}
}

/// Adds a joined player (or its failure) to the fleet.
pub fn admit(fleet: &SharedFleet, result: Result<Player, ClientError>) {
    let mut f = fleet.borrow_mut();
    match result {
        Ok(player) => {
            if f.window_open {
                *player.baseline.borrow_mut() = Some(Baseline::zero());
            }
            f.joined += 1;
            f.players.push(Rc::new(player));
        }
        Err(e) => {
            tracing::debug!(error = %e, "player failed to join");
            f.fail(&e);
        }
    }
}

/// Reports of `players`, in order, read `REPORT_CHUNK` at a time; `f` sees each one.
pub async fn each_report(players: &[Rc<Player>], mut f: impl FnMut(&Player, Option<PeerReport>)) {
    for chunk in players.chunks(REPORT_CHUNK) {
        let reports = futures_util::future::join_all(chunk.iter().map(|p| p.report())).await;
        for (player, report) in chunk.iter().zip(reports) {
            f(player, report);
        }
    }
}

/// Opens the measured window: every current player's baseline is its report now, with what
/// `reference` says it should have received by then.
pub async fn open_window(fleet: &SharedFleet, reference: &Reference) {
    let players = fleet.borrow().players.clone();
    each_report(&players, |player, report| {
        *player.baseline.borrow_mut() = Some(
            report
                .as_ref()
                .map_or_else(Baseline::zero, |r| Baseline::of(r, reference.of(player))),
        );
    })
    .await;
    fleet.borrow_mut().window_open = true;
}

/// Closes the window over `players`: their totals since their baselines, and their join
/// times. `reference` says what each should have received by now: what it has not counts as
/// lost, as do the gaps in what it received.
pub async fn close_window(players: &[Rc<Player>], reference: &Reference) -> (Totals, Vec<f64>) {
    let mut totals = Totals::default();
    let mut joins = Vec::new();
    each_report(players, |player, report| {
        let Some(report) = report else { return };
        if let Some(ms) = player.join_ms(&report) {
            joins.push(ms);
        }
        let baseline = player.baseline.borrow();
        let expected = reference.of(player);
        totals.add(
            baseline.as_ref().unwrap_or(&Baseline::zero()),
            &report,
            expected,
        );
    })
    .await;
    (totals, joins)
}

/// Removes a random player: its figures so far go to `departed`, then it stops. `in_flight`:
/// how long before now the publisher's figure it is held to was read.
pub async fn depart_one(fleet: &SharedFleet, in_flight: Duration) -> bool {
    let player = {
        let mut f = fleet.borrow_mut();
        if f.players.is_empty() {
            return false;
        }
        let i = fastrand::usize(..f.players.len());
        f.players.swap_remove(i)
    };
    let report = player.report().await;
    {
        let mut f = fleet.borrow_mut();
        f.left += 1;
        if let Some(reason) = player.ended() {
            *f.departed_dropped.entry(reason).or_default() += 1;
        }
        if let Some(report) = &report {
            if let Some(ms) = player.join_ms(report) {
                f.join_ms.push(ms);
            }
            if f.window_open {
                let baseline = player.baseline.borrow().clone().unwrap_or_default();
                let expected = Instant::now()
                    .checked_sub(in_flight)
                    .and_then(|t| f.sent_by(t));
                f.departed.add(&baseline, report, expected);
            }
        }
    }
    // Dropping the last reference closes the peer and the session.
    drop(player);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(newest: u64) -> Expected {
        Expected {
            audio: None,
            video: Some(newest),
        }
    }

    #[test]
    fn sent_history_answers_with_the_reading_before_a_time() {
        let mut fleet = Fleet::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        fleet.note_sent(ms(0), video(10));
        fleet.note_sent(ms(250), video(20));
        fleet.note_sent(ms(500), video(30));
        assert_eq!(fleet.sent_by(ms(499)), Some(video(20)));
        assert_eq!(fleet.sent_by(ms(500)), Some(video(30)));
        assert_eq!(
            fleet.sent_by(t0.checked_sub(Duration::from_millis(1)).unwrap()),
            None
        );
        // Readings older than SENT_HISTORY are let go.
        fleet.note_sent(ms(5_400), video(40));
        assert_eq!(fleet.sent_history.len(), 2);
        assert_eq!(fleet.sent_by(ms(5_000)), Some(video(30)));
    }
}
