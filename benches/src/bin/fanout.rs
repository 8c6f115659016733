//! The fan-out benchmark driver. Builds the release binaries, measures the machine's
//! physical limit, checks the idle server, then ramps `relaycast-loadgen fanout` players
//! (50, 100, 200, ... on a fresh server each step) until loss exceeds the threshold, runs a
//! step with a pacing publisher and one with a video-only stream, runs a relay chain, and
//! writes BENCHMARKS.md tables and PNG plots.
//!
//! `cargo run --release -p relaycast-benches --bin fanout -- --help`

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use relaycast_benches::limit::Limits;
use relaycast_benches::report::{self, Idle, Machine, Paced, Relay, Run, Settings, Step};
use relaycast_loadgen::Summary;

/// Fan-out benchmark: physical limit, idle check, player ramp, relay chain -> BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "fanout", max_term_width = 100)]
struct Args {
    /// Player counts to try, in order (1,000 is the per-core target); stops after the first
    /// step over --max-loss.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,400,800,1000,1600,3200"
    )]
    steps: Vec<usize>,
    /// Measured window of each step.
    #[arg(long, default_value = "20s")]
    duration: String,
    /// Video bitrate of the published stream.
    #[arg(long, default_value = "1500k")]
    bitrate: String,
    /// Player join rate.
    #[arg(long, default_value = "100/s")]
    ramp: String,
    /// Loss (percent) above which the ramp stops.
    #[arg(long, default_value_t = 0.5)]
    max_loss: f64,
    /// Data-plane cores of the server.
    #[arg(long, default_value_t = 1)]
    server_cores: usize,
    /// CPUs the server runs on (a list for sched_setaffinity).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    server_cpus: Vec<usize>,
    /// CPUs the loadgen runs on.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    loadgen_cpus: Vec<usize>,
    /// Cores of the loadgen's media endpoint.
    #[arg(long, default_value_t = 1)]
    loadgen_cores: usize,
    /// Time spent measuring each physical-limit figure.
    #[arg(long, default_value = "1.5")]
    limit_seconds: f64,
    /// Skip `cargo build --release` (use the binaries already built).
    #[arg(long)]
    no_build: bool,
    /// Skip the idle check.
    #[arg(long)]
    skip_idle: bool,
    /// Skip the relay-chain runs.
    #[arg(long)]
    skip_relay: bool,
    /// Players of the extra step whose publisher paces its video (0 skips it).
    #[arg(long, default_value_t = 100)]
    paced_players: usize,
    /// Pacing factor of that step (`relaycast-loadgen --pacing`).
    #[arg(long, default_value_t = 2.5)]
    pacing: f64,
    /// Players of the extra step whose stream has no audio (0 skips it): its datagrams are
    /// the limit's, 1200-byte video packets a frame at a time. It takes the largest step
    /// carried up to this many players.
    #[arg(long, default_value_t = 1000)]
    video_only_players: usize,
    /// Players on each server (origin and relayed) in the relay-chain runs.
    #[arg(long, default_value_t = 100)]
    relay_players: usize,
    /// The markdown file to write (its generated block is replaced).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Where the plots and the raw JSON go (relative to the workspace root).
    #[arg(long, default_value = "benches/results")]
    results: PathBuf,
    /// Measure nothing: redraw the plots and the markdown from a saved run (its fanout.json).
    #[arg(long)]
    from_json: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    if let Some(saved) = &args.from_json {
        let text = std::fs::read_to_string(saved)
            .with_context(|| format!("reading {}", saved.display()))?;
        let mut run: Run = serde_json::from_str(&text).context("parsing the saved run")?;
        if run.micro.is_empty() {
            // A run made before `cargo bench` on this checkout: take its results now, and
            // keep them with the run.
            run.micro = report::read_criterion(&target.join("criterion"));
            if !run.micro.is_empty() {
                eprintln!(
                    "fanout: adding {} criterion results to {}",
                    run.micro.len(),
                    saved.display()
                );
                std::fs::write(saved, serde_json::to_string_pretty(&run)?)
                    .with_context(|| format!("writing {}", saved.display()))?;
            }
        }
        let results = root.join(&args.results);
        std::fs::create_dir_all(&results)?;
        return write_report(&run, &root, &results, &args.out);
    }
    let server_bin = target.join("release/relaycast");
    let loadgen_bin = target.join("release/relaycast-loadgen");
    let mut commands = Vec::new();

    if !args.no_build {
        let cmd = "cargo build --release -p relaycast -p relaycast-loadgen";
        eprintln!("fanout: {cmd}");
        let status = Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "relaycast",
                "-p",
                "relaycast-loadgen",
            ])
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("{cmd} failed");
        }
        commands.push(cmd.to_owned());
    }
    for bin in [&server_bin, &loadgen_bin] {
        if !bin.exists() {
            bail!(
                "{} is missing: build it with cargo build --release",
                bin.display()
            );
        }
    }
    let results = root.join(&args.results);
    std::fs::create_dir_all(&results).context("creating the results directory")?;

    let settings = Settings {
        server_cores: args.server_cores,
        server_cpus: list(&args.server_cpus),
        loadgen_cpus: list(&args.loadgen_cpus),
        bitrate: args.bitrate.clone(),
        duration: args.duration.clone(),
        ramp: args.ramp.clone(),
        max_loss_pct: args.max_loss,
        commands: Vec::new(),
    };

    eprintln!(
        "fanout: measuring the physical limit on CPU {}",
        settings.server_cpus
    );
    pin_self(&args.server_cpus)?;
    let limits = Limits::measure(
        Duration::from_secs_f64(args.limit_seconds),
        args.loadgen_cpus.first().copied(),
    )
    .context("measuring the physical limit")?;
    unpin_self()?;
    eprintln!("fanout: {limits:?}");

    let bins = Bins {
        server: server_bin,
        loadgen: loadgen_bin,
        server_cpus: args.server_cpus.clone(),
        loadgen_cpus: args.loadgen_cpus.clone(),
        server_cores: args.server_cores,
        loadgen_cores: args.loadgen_cores,
        logs: results.clone(),
    };
    let idle = if args.skip_idle {
        None
    } else {
        Some(idle_check(&bins, &mut commands)?)
    };

    let mut steps = Vec::new();
    // Player counts of the steps carried, for the video-only step.
    let mut carried = Vec::new();
    for &players in &args.steps {
        let limit_ns = limit_now(&args)?;
        let mut step = fanout_step(&bins, &args, players, &[], "step", &mut commands)?;
        step.limit_ns = Some(limit_ns);
        let reference = steps
            .iter()
            .find_map(|s: &Step| s.summary.as_ref())
            .and_then(report::publisher_rate);
        let stop = step
            .summary
            .as_ref()
            .is_none_or(|s| report::step_failure(s, players, args.max_loss, reference).is_some());
        steps.push(step);
        if stop {
            break;
        }
        carried.push(players);
    }

    let paced = if args.paced_players > 0 {
        let factor = args.pacing.to_string();
        let step = fanout_step(
            &bins,
            &args,
            args.paced_players,
            &["--pacing", &factor],
            "paced",
            &mut commands,
        )?;
        Some(Paced {
            factor: args.pacing,
            step,
        })
    } else {
        None
    };

    // Beside the largest step carried up to --video-only-players, so that a short ramp
    // (`--steps 50,100`) is not followed by a 1,000-player step.
    let video_only_players = carried
        .iter()
        .copied()
        .filter(|&n| n <= args.video_only_players)
        .max();
    let video_only = if let Some(players) = video_only_players {
        let limit_ns = limit_now(&args)?;
        let mut step = fanout_step(
            &bins,
            &args,
            players,
            &["--no-audio"],
            "video-only",
            &mut commands,
        )?;
        step.limit_ns = Some(limit_ns);
        Some(step)
    } else {
        None
    };

    let mut relay = Vec::new();
    if !args.skip_relay {
        for mode in ["pull", "push"] {
            relay.push(relay_chain(&bins, mode, &args, &mut commands));
        }
    }

    let micro = report::read_criterion(&target.join("criterion"));
    let run = Run {
        machine: machine(),
        settings: Settings {
            commands,
            ..settings
        },
        limits,
        idle,
        steps,
        paced,
        video_only,
        relay,
        micro,
    };
    let json_path = results.join("fanout.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&run)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    write_report(&run, &root, &results, &args.out)
}

/// Draws the plots into `results` and replaces the generated block of `out`.
fn write_report(run: &Run, root: &Path, results: &Path, out: &Path) -> Result<()> {
    let plot_files = match report::plots(run, results) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("fanout: no plots: {e}");
            Vec::new()
        }
    };
    let out = root.join(out);
    let out_dir = out
        .parent()
        .map_or_else(|| root.to_path_buf(), Path::to_path_buf);
    let relative: Vec<String> = plot_files
        .iter()
        .map(|p| p.strip_prefix(&out_dir).unwrap_or(p).display().to_string())
        .collect();
    let generated = report::markdown(run, &relative);
    let existing = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::write(&out, report::splice(&existing, &generated))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "fanout: wrote {} and {} plot(s) in {}",
        out.display(),
        plot_files.len(),
        results.display()
    );
    Ok(())
}

/// The binaries and where they run.
struct Bins {
    server: PathBuf,
    loadgen: PathBuf,
    server_cpus: Vec<usize>,
    loadgen_cpus: Vec<usize>,
    server_cores: usize,
    loadgen_cores: usize,
    logs: PathBuf,
}

impl Bins {
    fn server_args(&self) -> Vec<String> {
        owned(&[
            "--ws-port",
            "0",
            "--rest-port",
            "0",
            "--media-port-base",
            "0",
            "--bind",
            "127.0.0.1",
            "--cores",
            &self.server_cores.to_string(),
        ])
    }

    fn start_server(&self, label: &str) -> Result<ServerProc> {
        let log = self.logs.join(format!("server-{label}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(&self.server);
        command
            .args(self.server_args())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file);
        pin_child(&mut command, self.server_cpus.clone());
        let mut child = command.spawn().context("starting relaycast")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let ready = line
            .trim()
            .strip_prefix("relaycast ready ")
            .ok_or_else(|| {
                anyhow!(
                    "relaycast did not start: {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .map(str::to_owned)
        };
        Ok(ServerProc {
            ws: field("ws=").context("ready line without ws=")?,
            rest: field("rest=").context("ready line without rest=")?,
            child,
        })
    }

    fn describe_server(&self) -> String {
        format!(
            "taskset -c {} target/release/relaycast {} &",
            list(&self.server_cpus),
            self.server_args().join(" ")
        )
    }

    fn describe_loadgen(&self, args: &[String]) -> String {
        format!(
            "taskset -c {} target/release/relaycast-loadgen {}",
            list(&self.loadgen_cpus),
            args.join(" ")
        )
    }

    /// Runs the loadgen with `args` (which include `--json`) and parses its summary.
    fn loadgen(&self, args: &[String], limit: Duration, label: &str) -> Result<Summary> {
        let log = self.logs.join(format!("loadgen-{label}.log"));
        let mut command = Command::new(&self.loadgen);
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        pin_child(&mut command, self.loadgen_cpus.clone());
        let mut child = command.spawn().context("starting relaycast-loadgen")?;
        let mut stdout = child.stdout.take().context("loadgen stdout")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let status = wait_for(&mut child, limit)?;
        let text = reader
            .join()
            .map_err(|_| anyhow!("loadgen output reader panicked"))?;
        let Some(status) = status else {
            bail!("relaycast-loadgen did not finish within {limit:?}");
        };
        if !status.success() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bail!("relaycast-loadgen exited with {status}: {last}");
        }
        serde_json::from_str(&text).with_context(|| format!("parsing the summary: {text:?}"))
    }
}

struct ServerProc {
    ws: String,
    rest: String,
    child: Child,
}

impl ServerProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/", self.ws)
    }

    fn rest_url(&self) -> String {
        format!("http://{}", self.rest)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        if wait_for(&mut self.child, Duration::from_secs(5))
            .ok()
            .flatten()
            .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One idle step on `server`: `players` of a near-silent stream (one small video frame a
/// second, no audio) for 10 s. Returns the loadgen's command line and its summary.
fn idle_players(
    bins: &Bins,
    server: &ServerProc,
    players: usize,
    label: &str,
    commands: &mut Vec<String>,
) -> (String, Result<Summary>) {
    let players = players.to_string();
    let options = [
        "--players",
        &players,
        "--ramp",
        "100/s",
        "--fps",
        "1",
        "--bitrate",
        "8k",
        "--no-audio",
        "--duration",
        "10s",
    ];
    let args = fanout_args(bins, server, &options);
    let command = bins.describe_loadgen(&args);
    commands.push(command.clone());
    let summary = bins.loadgen(&args, Duration::from_secs(180), label);
    (command, summary)
}

/// Idle: the server's CPU with no peers over 10 s, then with 100 near-silent players (three
/// times, each on a fresh server: [`IDLE_CPU_RUNS`]), then (a fresh server) with
/// [`IDLE_MORE_PLAYERS`], for the memory one more player costs.
fn idle_check(bins: &Bins, commands: &mut Vec<String>) -> Result<Idle> {
    eprintln!("fanout: idle check");
    let server = bins.start_server("idle")?;
    commands.push(bins.describe_server());
    std::thread::sleep(Duration::from_secs(1));
    let a = relaycast_loadgen::procfs::sample(Some(server.pid()))?;
    std::thread::sleep(Duration::from_secs(10));
    let b = relaycast_loadgen::procfs::sample(Some(server.pid()))?;
    let (_, empty_cpu_pct) = relaycast_loadgen::procfs::cpu_between(&a, &b);
    let (command, result) = idle_players(bins, &server, 100, "idle", commands);
    drop(server);

    // One 10 s window of so little work is noisy: the same step again on fresh servers.
    let mut cpu_again = Vec::new();
    for run in 2..=IDLE_CPU_RUNS {
        eprintln!("fanout: idle check, run {run} of {IDLE_CPU_RUNS}");
        let label = format!("idle-{run}");
        let again = bins.start_server(&label).and_then(|server| {
            commands.push(bins.describe_server());
            idle_players(bins, &server, 100, &label, commands).1
        });
        match again.map(|s| s.server_cpu_pct) {
            Ok(Some(cpu)) => cpu_again.push(cpu),
            Ok(None) => eprintln!("fanout: idle run {run}: no server CPU in the summary"),
            Err(e) => eprintln!("fanout: idle run {run} failed: {e:#}"),
        }
    }

    eprintln!("fanout: idle check with {IDLE_MORE_PLAYERS} players");
    let (more_command, more) = match bins.start_server("idle-more") {
        Ok(server) => {
            commands.push(bins.describe_server());
            let (command, more) =
                idle_players(bins, &server, IDLE_MORE_PLAYERS, "idle-more", commands);
            (Some(command), more)
        }
        Err(e) => (None, Err(e)),
    };
    Ok(Idle {
        empty_cpu_pct,
        empty_window_s: b.at.duration_since(a.at).as_secs_f64(),
        empty_rss_mb: b.rss_bytes as f64 / 1e6,
        command,
        summary: result.as_ref().ok().cloned(),
        error: result.err().map(|e| format!("{e:#}")),
        more_command,
        more_error: more.as_ref().err().map(|e| format!("{e:#}")),
        more: more.ok(),
        cpu_again,
    })
}

/// Runs of the 100-player idle step whose server CPU is reported as their median.
const IDLE_CPU_RUNS: usize = 3;

/// Players of the second idle step: the RSS between it and the 100-player step, divided by
/// the players between them, is what one more idle player costs, without the server's
/// first-use growth or its fixed costs.
const IDLE_MORE_PLAYERS: usize = 400;

/// Publish on A, relay to B (`mode`), play on both.
fn relay_chain(bins: &Bins, mode: &str, args: &Args, commands: &mut Vec<String>) -> Relay {
    eprintln!("fanout: relay chain ({mode})");
    let mut run = || -> Result<(String, Summary)> {
        let a = bins.start_server(&format!("relay-{mode}-a"))?;
        let b = bins.start_server(&format!("relay-{mode}-b"))?;
        let n = args.relay_players.to_string();
        let loadgen_args = owned(&[
            "relay-chain",
            "--server",
            &a.ws_url(),
            "--rest",
            &a.rest_url(),
            "--hop",
            &b.ws_url(),
            "--hop-rest",
            &b.rest_url(),
            "--mode",
            mode,
            "--players",
            &n,
            "--hop-players",
            &n,
            "--bitrate",
            &args.bitrate,
            "--duration",
            &args.duration,
            "--cores",
            &bins.loadgen_cores.to_string(),
            "--json",
        ]);
        let command = bins.describe_loadgen(&loadgen_args);
        commands.push(command.clone());
        let summary = bins.loadgen(
            &loadgen_args,
            Duration::from_secs(180),
            &format!("relay-{mode}"),
        );
        summary.map(|s| (command, s))
    };
    match run() {
        Ok((command, summary)) => Relay {
            mode: mode.to_owned(),
            command,
            summary: Some(summary),
            error: None,
        },
        Err(e) => {
            eprintln!("fanout: relay chain ({mode}) failed: {e:#}");
            Relay {
                mode: mode.to_owned(),
                command: String::new(),
                summary: None,
                error: Some(format!("{e:#}")),
            }
        }
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set, and CPU_SET only
    // writes within it for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        set
    }
}

fn pin_child(command: &mut Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    let set = cpu_set(&cpus);
    // SAFETY: sched_setaffinity is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn pin_self(cpus: &[usize]) -> Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: sets this thread's affinity from a valid set.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

fn unpin_self() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all: Vec<usize> = (0..cpus.max(64)).collect();
    pin_self(&all)
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let output = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        rustc: output("rustc", &["-V"]),
        commit: output("git", &["rev-parse", "--short", "HEAD"]),
        date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

/// The cheapest forward, measured again on the server's CPU just before a step (a third of
/// `--limit-seconds` per figure).
fn limit_now(args: &Args) -> Result<f64> {
    pin_self(&args.server_cpus)?;
    let limit = Limits::cheapest_forward_now(
        Duration::from_secs_f64(args.limit_seconds / 3.0),
        args.loadgen_cpus.first().copied(),
    )
    .context("measuring the cheapest forward");
    unpin_self()?;
    let limit = limit?;
    eprintln!("fanout: cheapest forward now: {:.2} us", limit / 1000.0);
    Ok(limit)
}

/// One fan-out step on a fresh server: `players` players of a `--bitrate` stream,
/// with `extra` loadgen options; a failed run is a step with its error.
fn fanout_step(
    bins: &Bins,
    args: &Args,
    players: usize,
    extra: &[&str],
    label: &str,
    commands: &mut Vec<String>,
) -> Result<Step> {
    let server = bins.start_server(label)?;
    let players_text = players.to_string();
    let mut options = vec![
        "--players",
        &players_text,
        "--ramp",
        &args.ramp,
        "--bitrate",
        &args.bitrate,
        "--duration",
        &args.duration,
    ];
    options.extend_from_slice(extra);
    let loadgen_args = fanout_args(bins, &server, &options);
    let command = bins.describe_loadgen(&loadgen_args);
    commands.push(command.clone());
    eprintln!("fanout: {label}: {players} players");
    let budget = Duration::from_secs(120) + Duration::from_secs_f64(players as f64 / 20.0);
    let result = bins.loadgen(&loadgen_args, budget, &format!("{label}-{players}"));
    drop(server);
    Ok(match result {
        Ok(summary) => {
            eprintln!(
                "fanout: {label}: {players} players: {}/{} connected, loss {:.3}%, {:?} \
                 us/packet, p99 {:.2} ms",
                summary.connected,
                players,
                summary.loss_pct,
                summary.cpu_us_per_forwarded_packet,
                summary.latency_ms.p99
            );
            Step {
                players,
                limit_ns: None,
                command,
                summary: Some(summary),
                error: None,
            }
        }
        Err(e) => {
            eprintln!("fanout: {label}: {players} players failed: {e:#}");
            Step {
                players,
                limit_ns: None,
                command,
                summary: None,
                error: Some(format!("{e:#}")),
            }
        }
    })
}

/// A `fanout` command line against `server`: its addresses, the run's own options, then
/// the loadgen's cores, the server's PID (for its CPU and RSS) and the JSON summary.
fn fanout_args(bins: &Bins, server: &ServerProc, options: &[&str]) -> Vec<String> {
    let mut args = owned(&[
        "fanout",
        "--server",
        &server.ws_url(),
        "--rest",
        &server.rest_url(),
    ]);
    args.extend(owned(options));
    args.extend(owned(&[
        "--cores",
        &bins.loadgen_cores.to_string(),
        "--server-pid",
        &server.pid().to_string(),
        "--json",
    ]));
    args
}

/// A command line from borrowed parts.
fn owned(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}
