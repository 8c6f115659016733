//! The five scenarios. Each sets up its publishers, ramps its players, opens the measured
//! window, waits, closes it and builds the [`Summary`]. The first publisher and the first
//! player join alone so that a bad URL, a refused connection or an unknown stream ends the
//! run at once with one clear line instead of N identical failures.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaycast_controlplane::client::{ClientError, ClientTimeouts, Endpoint};
use relaycast_controlplane::protocol::{ConnectionRequest, StreamStatus};
use relaycast_dataplane::DataPlaneConfig;
use serde_json::json;

use crate::cli::{
    Common, FanoutArgs, PlayArgs, PublishArgs, RelayChainArgs, RelayMode, Scenario, SoakArgs,
};
use crate::fleet::{
    self, Dialer, Fleet, Player, Publisher, Reference, SharedFleet, Stop, Target, stopped,
};
use crate::procfs::{self, ProcSample};
use crate::progress::Progress;
use crate::rest::{CoreCounters, Rest};
use crate::summary::{
    Added, Churn, Failed, Hop, Own, ServerMemory, Summary, Totals, join_summary, round3,
};

/// How long before each end of the measured window the loadgen reads what the publisher has
/// sent: by the window's edge, a packet sent then has arrived unless it was lost (or is more
/// than this late). It is what lets a player that stops receiving count as losing packets.
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// How often `soak` reads what its publisher has sent.
const SENT_SAMPLE: Duration = Duration::from_millis(250);

/// Why a run stopped before its summary. The exit code tells them apart.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad arguments (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The server could not be used: refused connection, unknown stream, failed publisher,
    /// relay refused (exit code 3).
    #[error("{0}")]
    Setup(String),
    /// Anything else (exit code 1).
    #[error("{0}")]
    Other(String),
    /// Ctrl-C or SIGTERM before the measured window opened (exit code 130).
    #[error("interrupted {0}")]
    Interrupted(&'static str),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_) => 2,
            RunError::Setup(_) => 3,
            RunError::Other(_) => 1,
            RunError::Interrupted(_) => 130,
        }
    }
}

/// Runs a scenario to its summary. Must be called inside a `LocalSet` on a tokio runtime.
/// When `stop` turns true (Ctrl-C), joins stop; an open measured window closes early and the
/// summary says `interrupted`, and before it opens the run ends with
/// [`RunError::Interrupted`].
pub async fn run(scenario: Scenario, stop: Stop) -> Result<Summary, RunError> {
    let mut summary = match scenario {
        Scenario::Publish(a) => publish(a, stop.clone()).await,
        Scenario::Play(a) => play(a, stop.clone()).await,
        Scenario::Fanout(a) => fanout(a, stop.clone()).await,
        Scenario::RelayChain(a) => relay_chain(a, stop.clone()).await,
        Scenario::Soak(a) => soak(a, stop.clone()).await,
    }?;
    summary.interrupted = *stop.borrow();
    Ok(summary)
}

/// What every scenario shares: the endpoint, the dialer, the fleet, the progress line.
struct Run {
    common: Common,
    dialer: Dialer,
    fleet: SharedFleet,
    progress: Option<Progress>,
    /// The server's REST, to read its packet counters at both ends of the window.
    counters: Option<Rest>,
    stop: Stop,
}

impl Run {
    fn new(common: &Common, target_players: usize, stop: Stop) -> Result<Run, RunError> {
        check_ws_url(&common.server)?;
        if common.cores == 0 {
            return Err(RunError::Usage("--cores must be at least 1".into()));
        }
        let counters = common
            .rest
            .as_deref()
            .map(Rest::new)
            .transpose()
            .map_err(|e| RunError::Usage(e.to_string()))?;
        if let Some(pid) = common.server_pid {
            procfs::sample(Some(pid)).map_err(|e| RunError::Usage(format!("--server-pid: {e}")))?;
        }
        let endpoint = Endpoint::start(DataPlaneConfig {
            cores: common.cores,
            pin: false,
            bind: common.bind,
            read_sweep: (!common.read_sweep.is_zero()).then_some(common.read_sweep),
            ..DataPlaneConfig::default()
        })
        .map_err(|e| RunError::Setup(format!("cannot start the loadgen's media endpoint: {e}")))?;
        let timeouts = ClientTimeouts {
            established: common.join_timeout,
            ..ClientTimeouts::default()
        };
        let fleet: SharedFleet = Rc::new(RefCell::new(Fleet::default()));
        let progress = Progress::start(Rc::clone(&fleet), Arc::clone(&endpoint), target_players);
        Ok(Run {
            common: common.clone(),
            dialer: Dialer {
                endpoint,
                timeouts,
                connection: ConnectionRequest {
                    custom: common.custom.clone().unwrap_or_default(),
                    ..ConnectionRequest::default()
                },
            },
            fleet,
            progress: Some(progress),
            counters,
            stop,
        })
    }

    fn interrupted(&self) -> bool {
        *self.stop.borrow()
    }

    /// Ends the run if it was interrupted before its window opened.
    fn check_not_interrupted(&self) -> Result<(), RunError> {
        if self.interrupted() {
            return Err(RunError::Interrupted("before the measured window opened"));
        }
        Ok(())
    }

    fn phase(&self, text: impl Into<String>) {
        if let Some(p) = &self.progress {
            p.phase(text);
        }
    }

    async fn server_counters(&self) -> Option<CoreCounters> {
        self.counters.as_ref()?.core_counters().await
    }

    fn server_sample(&self) -> Option<ProcSample> {
        self.common
            .server_pid
            .and_then(|pid| procfs::sample(Some(pid)).ok())
    }

    async fn publisher(
        &self,
        server: &str,
        name: &str,
        media: &crate::cli::Media,
    ) -> Result<Publisher, RunError> {
        if media.no_audio && media.no_video {
            return Err(RunError::Usage(
                "--no-audio and --no-video leave nothing to publish".into(),
            ));
        }
        self.phase(format!("publishing {name}"));
        self.dialer
            .publish(server, name, media.synth())
            .await
            .map_err(|e| setup_error(&e, server, name, "publish"))
    }

    /// The first player joins alone so that its failure stops the run with a clear message.
    async fn first_player(&self, server: &str, stream: &str) -> Result<(), RunError> {
        self.phase(format!("first player of {stream}"));
        self.fleet.borrow_mut().attempted += 1;
        let player = self
            .dialer
            .play(0, server, stream)
            .await
            .map_err(|e| setup_error(&e, server, stream, "play"))?;
        fleet::admit(&self.fleet, Ok(player));
        Ok(())
    }

    async fn ramp(&self, target: Target, first: usize, count: usize, rate: f64, inflight: usize) {
        self.phase("joining");
        fleet::ramp(
            &self.fleet,
            &self.dialer,
            target,
            first..first + count,
            rate,
            inflight,
            self.stop.clone(),
        )
        .await;
    }

    async fn sleep(&self, label: &str, length: Duration) {
        let start = Instant::now();
        self.sleep_until(label, start, length, start + length).await;
    }

    /// Sleeps until `end`, showing `label` with the time since `start` out of `length`; returns
    /// early when the run is interrupted.
    async fn sleep_until(&self, label: &str, start: Instant, length: Duration, end: Instant) {
        loop {
            let now = Instant::now();
            if now >= end || self.interrupted() {
                return;
            }
            self.phase(format!(
                "{label} {:.0}/{:.0} s",
                (now - start).as_secs_f64(),
                length.as_secs_f64()
            ));
            let mut stop = self.stop.clone();
            tokio::select! {
                () = tokio::time::sleep((end - now).min(Duration::from_millis(500))) => {}
                () = stopped(&mut stop) => {}
            }
        }
    }

    fn players(&self) -> Vec<Rc<Player>> {
        self.fleet.borrow().players.clone()
    }

    /// What every player should have received by now: see [`Reference`]. With no players,
    /// nothing is read.
    async fn reference(&self, publishers: &[Publisher]) -> Reference {
        let players = self.players();
        if players.is_empty() {
            return Reference::Unknown;
        }
        match publishers {
            [one] => one
                .expected()
                .await
                .map_or(Reference::Unknown, Reference::All),
            [] => Reference::furthest(&players).await,
            _ => Reference::Unknown,
        }
    }

    /// The measured window's body: sleeps `length`, reading the [`Reference`] that closes it
    /// `IN_FLIGHT` before the end. Interrupted, it reads the reference at once and closes the
    /// window `IN_FLIGHT` later.
    async fn measure(&self, label: &str, length: Duration, publishers: &[Publisher]) -> Reference {
        let start = Instant::now();
        let end = start + length;
        let grace = IN_FLIGHT.min(length / 2);
        self.sleep_until(label, start, length, end - grace).await;
        let reference = self.reference(publishers).await;
        self.in_flight(label, start, length, end).await;
        reference
    }

    /// The wait between reading the reference and closing the window: until `end`, or
    /// `IN_FLIGHT` from now if the run was interrupted.
    async fn in_flight(&self, label: &str, start: Instant, length: Duration, end: Instant) {
        if self.interrupted() {
            self.phase("interrupted: closing the window");
            tokio::time::sleep(IN_FLIGHT).await;
        } else {
            self.sleep_until(label, start, length, end).await;
        }
    }
}

/// Counters at the start of a measured window.
struct WindowStart {
    at: Instant,
    server: Option<ProcSample>,
    own: Option<ProcSample>,
    sent: Option<u64>,
    counters: Option<CoreCounters>,
}

/// Opens the measured window `IN_FLIGHT` after reading what the publisher has sent.
async fn open_window(run: &Run, publishers: &[Publisher]) -> WindowStart {
    let reference = run.reference(publishers).await;
    if !matches!(reference, Reference::Unknown) {
        run.sleep("warm-up, packets in flight", IN_FLIGHT).await;
    }
    run.phase("opening the window");
    fleet::open_window(&run.fleet, &reference).await;
    let counters = run.server_counters().await;
    WindowStart {
        at: Instant::now(),
        server: run.server_sample(),
        own: procfs::sample(None).ok(),
        sent: sent(publishers).await,
        counters,
    }
}

async fn sent(publishers: &[Publisher]) -> Option<u64> {
    if publishers.is_empty() {
        return None;
    }
    let mut total = 0;
    for p in publishers {
        total += p.sent().await?;
    }
    Some(total)
}

/// The part of the summary every scenario fills the same way.
struct Measured {
    duration_s: f64,
    packets_sent: Option<u64>,
    totals: Totals,
    joins: Vec<f64>,
    server_cpu_us: Option<u64>,
    server_cpu_pct: Option<f64>,
    server_end: Option<ProcSample>,
    /// The server's own counters over the window (with `--rest`).
    counters: Option<CoreCounters>,
    own: Own,
    /// What the players should have received by the window's end.
    reference: Reference,
}

/// Closes the window; `reference` was read `IN_FLIGHT` before (see [`Run::measure`]).
async fn close_window(
    run: &Run,
    start: WindowStart,
    publishers: &[Publisher],
    reference: Reference,
) -> Measured {
    run.phase("closing the window");
    for p in publishers {
        if let Some(reason) = p.ended() {
            tracing::warn!(stream = %p.name, %reason, "the server dropped the publisher");
        }
    }
    let server_end = run.server_sample();
    let counters_end = run.server_counters().await;
    let own_end = procfs::sample(None).ok();
    let sent_end = sent(publishers).await;
    let duration_s = start.at.elapsed().as_secs_f64();
    let packets_sent = match (start.sent, sent_end) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let players = run.players();
    let (mut totals, mut joins) = fleet::close_window(&players, &reference).await;
    {
        let f = run.fleet.borrow();
        totals.merge(&f.departed);
        joins.extend_from_slice(&f.join_ms);
    }
    let (server_cpu_us, server_cpu_pct) = match (&start.server, &server_end) {
        (Some(a), Some(b)) => {
            let (us, pct) = procfs::cpu_between(a, b);
            (Some(us), Some(pct))
        }
        _ => (None, None),
    };
    let own = match (&start.own, &own_end) {
        (Some(a), Some(b)) => Own {
            cpu_pct: round3(procfs::cpu_between(a, b).1),
            rss_mb: round3(b.rss_bytes as f64 / 1e6),
        },
        _ => Own::default(),
    };
    let counters = match (&start.counters, &counters_end) {
        (Some(a), Some(b)) => Some(b.since(a)),
        _ => None,
    };
    Measured {
        duration_s,
        packets_sent,
        totals,
        joins,
        server_cpu_us,
        server_cpu_pct,
        server_end,
        counters,
        own,
        reference,
    }
}

/// Forwarded packets over which a server's process cannot have used no CPU at all (at 1 us a
/// packet, a tenth of a second: ten of the kernel's clock ticks).
const PACKETS_THAT_TAKE_CPU: u64 = 100_000;

/// The server's CPU per forwarded packet, in microseconds. `None` without a process to read,
/// without packets, or when the process used no CPU while the server sent
/// [`PACKETS_THAT_TAKE_CPU`] or more: then `--server-pid` names another process (a shell or
/// `cargo run` around the server), which is said on stderr rather than reported as 0 us.
fn cpu_per_packet(server_cpu_us: Option<u64>, forwarded: u64) -> Option<f64> {
    let us = server_cpu_us.filter(|_| forwarded > 0)?;
    if us == 0 && forwarded >= PACKETS_THAT_TAKE_CPU {
        tracing::warn!(
            forwarded,
            "the --server-pid process used no CPU while the server sent these packets: it is \
             not the server's own process (a shell or `cargo run` around it?), so the summary \
             has no CPU per packet"
        );
        return None;
    }
    Some(round3(us as f64 / forwarded as f64))
}

fn build_summary(
    command: &str,
    server: &str,
    streams: Vec<String>,
    players: usize,
    publishers: usize,
    fleet: &Fleet,
    m: &Measured,
) -> Summary {
    // The server's own count of datagrams sent when it is known; else what the players saw.
    let (forwarded, basis) = match &m.counters {
        Some(c) if c.packets_out > 0 => (c.packets_out, "server /metrics: UDP datagrams sent"),
        _ => (
            m.totals.received + m.totals.lost,
            "players: media packets received + lost",
        ),
    };
    let cpu_per_packet = cpu_per_packet(m.server_cpu_us, forwarded);
    let dropped = Failed::of(fleet.dropped());
    Summary {
        command: command.to_owned(),
        server: server.to_owned(),
        streams,
        players,
        // Dropped players that left (soak) are in `dropped` but no longer in the fleet.
        connected: fleet.players.iter().filter(|p| p.ended().is_none()).count(),
        failed: Failed::of(fleet.failures.clone()),
        dropped,
        publishers,
        duration_s: round3(m.duration_s),
        packets_sent: m.packets_sent,
        packets_received: m.totals.received,
        packets_lost: m.totals.lost,
        loss_pct: round3(m.totals.loss_pct()),
        packets_reordered: m.totals.reordered,
        packets_duplicated: m.totals.duplicates,
        packets_per_s: round3(m.totals.received as f64 / m.duration_s.max(1e-3)),
        latency_ms: m.totals.latency_ms(),
        join_ms: join_summary(&m.joins),
        stalled: m.totals.stalled,
        cpu_us_per_forwarded_packet: cpu_per_packet,
        rss_mb: m.server_end.map(|s| round3(s.rss_bytes as f64 / 1e6)),
        server_cpu_pct: m.server_cpu_pct.map(round3),
        forwarded_packets: m.server_cpu_us.map(|_| forwarded),
        forwarded_basis: m.server_cpu_us.map(|_| basis.to_owned()),
        server_counters: m.counters,
        server_memory: None,
        loadgen: m.own,
        hops: Vec::new(),
        churn: None,
        interrupted: false,
    }
}

fn server_memory(before: Option<ProcSample>, m: &Measured, players: usize) -> Option<ServerMemory> {
    let (before, after) = (before?, m.server_end?);
    let growth = after.rss_bytes as f64 - before.rss_bytes as f64;
    Some(ServerMemory {
        rss_before_mb: round3(before.rss_bytes as f64 / 1e6),
        rss_after_mb: round3(after.rss_bytes as f64 / 1e6),
        kib_per_player: round3(growth / 1024.0 / players.max(1) as f64),
    })
}

async fn fanout(a: FanoutArgs, stop: Stop) -> Result<Summary, RunError> {
    let run = Run::new(&a.common, a.ramp.players, stop)?;
    let server = a.common.server.clone();
    let name = unique(&a.stream);
    let publisher = run.publisher(&server, &name, &a.media).await?;
    let memory_before = run.server_sample();
    if a.ramp.players > 0 {
        run.first_player(&server, &name).await?;
        let target: Target = {
            let (server, name) = (server.clone(), name.clone());
            Rc::new(move |_| (server.clone(), name.clone()))
        };
        run.ramp(
            target,
            1,
            a.ramp.players - 1,
            a.ramp.ramp,
            a.ramp.concurrency,
        )
        .await;
    }
    run.sleep("warm-up", a.common.warmup).await;
    let publishers = [publisher];
    run.check_not_interrupted()?;
    let start = open_window(&run, &publishers).await;
    let reference = run
        .measure("measuring", a.common.duration, &publishers)
        .await;
    let m = close_window(&run, start, &publishers, reference).await;
    let fleet = run.fleet.borrow();
    let mut summary = build_summary("fanout", &server, vec![name], a.ramp.players, 1, &fleet, &m);
    summary.server_memory = server_memory(memory_before, &m, fleet.players.len());
    Ok(summary)
}

async fn play(a: PlayArgs, stop: Stop) -> Result<Summary, RunError> {
    if a.stream.is_empty() {
        return Err(RunError::Usage("--stream names no stream".into()));
    }
    let run = Run::new(&a.common, a.ramp.players, stop)?;
    let server = a.common.server.clone();
    let memory_before = run.server_sample();
    if a.ramp.players > 0 {
        // One player per stream first: each must exist.
        let first = a.stream.len().min(a.ramp.players);
        for (i, name) in a.stream.iter().take(first).enumerate() {
            run.fleet.borrow_mut().attempted += 1;
            let player = run
                .dialer
                .play(i, &server, name)
                .await
                .map_err(|e| setup_error(&e, &server, name, "play"))?;
            fleet::admit(&run.fleet, Ok(player));
        }
        let streams = a.stream.clone();
        let target: Target = {
            let server = server.clone();
            Rc::new(move |i| (server.clone(), streams[i % streams.len()].clone()))
        };
        run.ramp(
            target,
            first,
            a.ramp.players - first,
            a.ramp.ramp,
            a.ramp.concurrency,
        )
        .await;
    }
    run.sleep("warm-up", a.common.warmup).await;
    run.check_not_interrupted()?;
    let start = open_window(&run, &[]).await;
    let reference = run.measure("measuring", a.common.duration, &[]).await;
    let m = close_window(&run, start, &[], reference).await;
    let fleet = run.fleet.borrow();
    let mut summary = build_summary(
        "play",
        &server,
        a.stream.clone(),
        a.ramp.players,
        0,
        &fleet,
        &m,
    );
    summary.server_memory = server_memory(memory_before, &m, fleet.players.len());
    Ok(summary)
}

async fn publish(a: PublishArgs, stop: Stop) -> Result<Summary, RunError> {
    let run = Run::new(&a.common, 0, stop)?;
    let server = a.common.server.clone();
    let names: Vec<String> = match a.publishers {
        1 => vec![a.stream.clone()],
        n => (0..n).map(|i| format!("{}-{i}", a.stream)).collect(),
    };
    let mut publishers = Vec::new();
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    let period = Duration::from_secs_f64(1.0 / a.ramp.max(1e-3));
    for (i, name) in names.iter().enumerate() {
        if run.interrupted() {
            break;
        }
        if i == 0 {
            publishers.push(run.publisher(&server, name, &a.media).await?);
            continue;
        }
        tokio::time::sleep(period).await;
        run.phase(format!("publishing {}/{}", i + 1, names.len()));
        match run.dialer.publish(&server, name, a.media.synth()).await {
            Ok(p) => publishers.push(p),
            Err(e) => *failures.entry(fleet::reason(&e)).or_default() += 1,
        }
    }
    run.sleep("warm-up", a.common.warmup).await;
    run.check_not_interrupted()?;
    let start = open_window(&run, &publishers).await;
    run.sleep("publishing", a.common.duration).await;
    let m = close_window(&run, start, &publishers, Reference::Unknown).await;
    let fleet = run.fleet.borrow();
    let mut summary = build_summary(
        "publish",
        &server,
        names.clone(),
        a.publishers,
        publishers.len(),
        &fleet,
        &m,
    );
    let dropped = Failed::of(fleet::tally(publishers.iter().filter_map(Publisher::ended)));
    summary.connected = publishers.len() - dropped.count;
    summary.failed = Failed::of(failures);
    summary.dropped = dropped;
    Ok(summary)
}

async fn soak(a: SoakArgs, stop: Stop) -> Result<Summary, RunError> {
    let run = Run::new(&a.common, a.ramp.players, stop)?;
    let server = a.common.server.clone();
    let name = unique(&a.stream);
    let publisher = run.publisher(&server, &name, &a.media).await?;
    let memory_before = run.server_sample();
    let target: Target = {
        let (server, name) = (server.clone(), name.clone());
        Rc::new(move |_| (server.clone(), name.clone()))
    };
    run.first_player(&server, &name).await?;
    let players = a.ramp.players.max(1);
    run.ramp(
        Rc::clone(&target),
        1,
        players - 1,
        a.ramp.ramp,
        a.ramp.concurrency,
    )
    .await;
    run.sleep("warm-up", a.common.warmup).await;
    let publishers = [publisher];
    run.check_not_interrupted()?;
    let start = open_window(&run, &publishers).await;
    let (joined_before, left_before, failed_before) = {
        let f = run.fleet.borrow();
        (f.joined, f.left, f.failed())
    };

    // Churn: every period one player leaves and a new one starts joining.
    let period = Duration::from_secs_f64(1.0 / a.churn.max(1e-3));
    let end = Instant::now() + a.common.duration;
    let reference_at = end - IN_FLIGHT.min(a.common.duration / 2);
    let mut reference = None;
    let mut next_index = players;
    let mut joins = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    // What the publisher has sent, for the players that leave (see `depart_one`).
    let mut sampler = tokio::time::interval(SENT_SAMPLE);
    let mut stop = run.stop.clone();
    while Instant::now() < end {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = sampler.tick() => {
                if let Some(sent) = publishers[0].expected().await {
                    run.fleet.borrow_mut().note_sent(Instant::now(), sent);
                }
                continue;
            }
            _ = ticker.tick() => {}
            () = tokio::time::sleep_until(reference_at.into()), if reference.is_none() => {
                reference = Some(run.reference(&publishers).await);
                continue;
            }
            () = tokio::time::sleep_until(end.into()) => break,
        }
        let left = end.saturating_duration_since(Instant::now()).as_secs_f64();
        run.phase(format!("soak, {left:.0} s left"));
        fleet::depart_one(&run.fleet, IN_FLIGHT).await;
        run.fleet.borrow_mut().attempted += 1;
        let (dialer, fleet, (server, stream)) = (
            run.dialer.clone(),
            Rc::clone(&run.fleet),
            target(next_index),
        );
        let index = next_index;
        joins.spawn_local(async move {
            let result = dialer.play(index, &server, &stream).await;
            fleet::admit(&fleet, result);
        });
        next_index += 1;
        while joins.try_join_next().is_some() {}
    }
    while joins.join_next().await.is_some() {}
    let reference = match reference {
        Some(r) => r,
        None => {
            let r = run.reference(&publishers).await;
            run.in_flight(
                "soak",
                start.at,
                a.common.duration,
                Instant::now() + IN_FLIGHT,
            )
            .await;
            r
        }
    };
    let m = close_window(&run, start, &publishers, reference).await;
    let fleet = run.fleet.borrow();
    let mut summary = build_summary("soak", &server, vec![name], a.ramp.players, 1, &fleet, &m);
    summary.server_memory = server_memory(memory_before, &m, fleet.players.len());
    summary.churn = Some(Churn {
        joined: fleet.joined - joined_before,
        left: fleet.left - left_before,
        failed_joins: fleet.failed() - failed_before,
    });
    Ok(summary)
}

async fn relay_chain(a: RelayChainArgs, stop: Stop) -> Result<Summary, RunError> {
    let Some(first_rest) = a.common.rest.clone() else {
        return Err(RunError::Usage(
            "relay-chain needs --rest (the first server's REST URL)".into(),
        ));
    };
    if a.hop_rest.len() != a.hops.len() {
        return Err(RunError::Usage(format!(
            "give one --hop-rest per --hop ({} --hop, {} --hop-rest)",
            a.hops.len(),
            a.hop_rest.len()
        )));
    }
    let servers: Vec<String> = std::iter::once(a.common.server.clone())
        .chain(a.hops.iter().cloned())
        .collect();
    for s in &servers {
        check_ws_url(s)?;
    }
    let rests = std::iter::once(first_rest.as_str())
        .chain(a.hop_rest.iter().map(String::as_str))
        .map(|u| Rest::new(u).map_err(|e| RunError::Usage(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let last = servers.len() - 1;
    let total_players = a.ramp.players + a.hop_players * last;
    let mut run = Run::new(&a.common, total_players, stop)?;
    // --rest is the origin's; --server-pid may be any hop's: count players' packets instead.
    run.counters = None;
    let name = unique(&a.stream);
    let publisher = run.publisher(&servers[0], &name, &a.media).await?;

    // Hop by hop: relay to the next server, wait until the stream plays there, then join the
    // rest of that server's players. Each group is a slice of the fleet.
    let mut groups: Vec<Vec<Rc<Player>>> = Vec::with_capacity(servers.len());
    let mut next_index = 0;
    for (hop, server) in servers.iter().enumerate() {
        let before = run.fleet.borrow().players.len();
        let first = if hop == 0 {
            run.phase("first player of the origin");
            run.dialer
                .play(next_index, server, &name)
                .await
                .map_err(|e| setup_error(&e, server, &name, "play"))?
        } else {
            run.phase(format!("relaying to hop {hop}"));
            relay(&rests, &servers, hop, &name, a.mode).await?;
            wait_playable(&run, server, &name, a.relay_timeout).await?
        };
        run.fleet.borrow_mut().attempted += 1;
        fleet::admit(&run.fleet, Ok(first));
        let want = group_size(&a, hop, last);
        let target: Target = {
            let (server, name) = (server.clone(), name.clone());
            Rc::new(move |_| (server.clone(), name.clone()))
        };
        run.ramp(
            target,
            next_index + 1,
            want - 1,
            a.ramp.ramp,
            a.ramp.concurrency,
        )
        .await;
        next_index += want;
        groups.push(run.fleet.borrow().players[before..].to_vec());
    }
    run.sleep("warm-up", a.common.warmup).await;
    let publishers = [publisher];
    run.check_not_interrupted()?;
    let start = open_window(&run, &publishers).await;
    let reference = run
        .measure("measuring", a.common.duration, &publishers)
        .await;
    let m = close_window(&run, start, &publishers, reference).await;

    let mut hops = Vec::new();
    let mut last_totals = Totals::default();
    let mut previous: Option<crate::summary::Latency> = None;
    for (hop, group) in groups.iter().enumerate() {
        let (totals, _) = fleet::close_window(group, &m.reference).await;
        let latency = totals.latency_ms();
        let dropped: usize = fleet::dropped(group).values().sum();
        hops.push(Hop {
            server: servers[hop].clone(),
            players: group_size(&a, hop, last),
            connected: group.len().saturating_sub(dropped),
            packets_received: totals.received,
            loss_pct: round3(totals.loss_pct()),
            latency_ms: latency,
            added_ms: previous.map(|p| Added {
                p50: round3(latency.p50 - p.p50),
                p99: round3(latency.p99 - p.p99),
            }),
        });
        previous = Some(latency);
        if hop == last {
            last_totals = totals;
        }
    }
    let last_measured = Measured {
        totals: last_totals,
        ..m
    };
    let fleet = run.fleet.borrow();
    let mut summary = build_summary(
        "relay-chain",
        &servers[last],
        vec![name],
        group_size(&a, last, last),
        1,
        &fleet,
        &last_measured,
    );
    summary.connected = hops.last().map_or(0, |h| h.connected);
    summary.dropped = Failed::of(fleet::dropped(&groups[last]));
    summary.hops = hops;
    Ok(summary)
}

/// Players on hop `hop`: `--players` on the last server, `--hop-players` on the others.
fn group_size(a: &RelayChainArgs, hop: usize, last: usize) -> usize {
    if hop == last {
        a.ramp.players.max(1)
    } else {
        a.hop_players.max(1)
    }
}

/// Sets up the relay that brings `name` from `servers[hop - 1]` to `servers[hop]`.
async fn relay(
    rests: &[Rest],
    servers: &[String],
    hop: usize,
    name: &str,
    mode: RelayMode,
) -> Result<(), RunError> {
    let (rest, path, body) = match mode {
        RelayMode::Push => (
            &rests[hop - 1],
            "/rest-api/pull/push",
            json!({
                "uri": servers[hop],
                "localStreamName": name,
                "remoteStreamName": name,
            }),
        ),
        RelayMode::Pull => (
            &rests[hop],
            "/rest-api/pull/pull",
            json!({
                "uri": servers[hop - 1],
                "remoteStreamName": name,
                "localStreamName": name,
            }),
        ),
    };
    let (status, reply) = rest
        .post(path, &body)
        .await
        .map_err(|e| RunError::Setup(e.to_string()))?;
    if !(200..300).contains(&status) {
        return Err(RunError::Setup(format!(
            "relay refused: POST {}{path} answered {status}: {reply}",
            rest.url()
        )));
    }
    Ok(())
}

/// Plays `name` on `server`, retrying while the relayed stream is not there yet.
async fn wait_playable(
    run: &Run,
    server: &str,
    name: &str,
    limit: Duration,
) -> Result<Player, RunError> {
    let deadline = Instant::now() + limit;
    loop {
        match run.dialer.play(0, server, name).await {
            Ok(player) => return Ok(player),
            Err(ClientError::Stream { status, info })
                if status == StreamStatus::Failed && Instant::now() < deadline =>
            {
                tracing::debug!(%server, %info, "relayed stream not playable yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(RunError::Setup(format!(
                    "relayed stream {name:?} did not become playable on {server} within \
                     {limit:?}: {e}"
                )));
            }
        }
    }
}

/// A one-line error for the first publisher's or player's failure.
fn setup_error(error: &ClientError, server: &str, stream: &str, what: &str) -> RunError {
    match error {
        ClientError::BadUrl { .. } => RunError::Usage(error.to_string()),
        ClientError::Connect { reason, .. } => {
            RunError::Setup(format!("cannot connect to {server}: {reason}"))
        }
        ClientError::Stream { status, info } => RunError::Setup(format!(
            "cannot {what} stream {stream:?} on {server}: {status}{}",
            if info.is_empty() {
                String::new()
            } else {
                format!(" ({info})")
            }
        )),
        other => RunError::Setup(format!(
            "cannot {what} stream {stream:?} on {server}: {other}"
        )),
    }
}

fn check_ws_url(url: &str) -> Result<(), RunError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| RunError::Usage(format!("bad server URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "ws" | "wss") {
        return Err(RunError::Usage(format!(
            "bad server URL {url:?}: the scheme must be ws or wss"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(RunError::Usage(format!("bad server URL {url:?}: no host")));
    }
    Ok(())
}

/// `name-xxxxxx`: runs against the same server never collide.
fn unique(name: &str) -> String {
    format!("{name}-{:06x}", fastrand::u32(..0x100_0000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_ws_url("ws://127.0.0.1:8080/").is_ok());
        assert!(matches!(check_ws_url("http://x/"), Err(RunError::Usage(_))));
        assert!(matches!(check_ws_url("not a url"), Err(RunError::Usage(_))));
    }

    #[test]
    fn a_server_pid_that_used_no_cpu_gives_no_cpu_per_packet() {
        assert_eq!(cpu_per_packet(Some(2_000_000), 1_000_000), Some(2.0));
        // Few packets can take less than a clock tick.
        assert_eq!(cpu_per_packet(Some(0), 1_000), Some(0.0));
        assert_eq!(cpu_per_packet(Some(0), 900_000), None);
        assert_eq!(cpu_per_packet(Some(5), 0), None);
        assert_eq!(cpu_per_packet(None, 900_000), None);
    }

    #[test]
    fn setup_errors_are_one_line() {
        let e = ClientError::Stream {
            status: StreamStatus::Failed,
            info: "Stream not found".into(),
        };
        let text = setup_error(&e, "ws://h/", "x", "play").to_string();
        assert_eq!(
            text,
            "cannot play stream \"x\" on ws://h/: FAILED (Stream not found)"
        );
        assert!(!text.contains('\n'));
    }
}
