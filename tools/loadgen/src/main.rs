//! The `relaycast-loadgen` binary: parses the command line, raises the descriptor limit, runs
//! the scenario on a single-threaded tokio runtime (the media runs on the endpoint's own
//! cores) and prints the summary.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use relaycast_loadgen::cli::{Cli, Scenario};
use relaycast_loadgen::{RunError, limits, scenario};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // As the server does: its peers' memory in 4 KiB pages, not half-used 2 MiB ones.
    let thp = relaycast_dataplane::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(relaycast_dataplane::process::colour_logs())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = thp {
        tracing::warn!(error = %e, "could not turn transparent huge pages off");
    }

    let (json, players) = match &cli.command {
        Scenario::Publish(a) => (a.common.json, a.publishers),
        Scenario::Play(a) => (a.common.json, a.ramp.players),
        Scenario::Fanout(a) => (a.common.json, a.ramp.players + 1),
        Scenario::RelayChain(a) => (
            a.common.json,
            a.ramp.players + a.hop_players * a.hops.len() + 1,
        ),
        Scenario::Soak(a) => (a.common.json, a.ramp.players * 2 + 1),
    };
    match limits::raise_nofile(players) {
        Ok((_, true)) => {}
        Ok((soft, false)) => eprintln!(
            "relaycast-loadgen: warning: the open-file limit ({soft}) is below what {players} \
             peers need ({}); raise the hard limit (ulimit -Hn)",
            limits::needed(players)
        ),
        Err(e) => eprintln!("relaycast-loadgen: warning: cannot read the open-file limit: {e}"),
    }
    // Each media core's io_uring registers buffers that count against locked memory.
    if let Err(e) = relaycast_dataplane::process::raise_locked_memory() {
        eprintln!("relaycast-loadgen: warning: cannot read the locked-memory limit: {e}");
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relaycast-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    local.spawn_local(interrupt(stop_tx));
    let result = local.block_on(&runtime, scenario::run(cli.command, stop));
    // Peers and sessions are gone with the scenario; do not wait for lingering tasks.
    runtime.shutdown_background();
    match result {
        Ok(summary) => {
            if json {
                let text =
                    serde_json::to_string_pretty(&summary).expect("a summary always serializes");
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            } else {
                eprint!("{}", summary.human());
            }
            if summary.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(&e),
    }
}

/// The first Ctrl-C (or SIGTERM) closes the measured window early, so a long run still ends
/// in its summary; the second quits at once.
async fn interrupt(stop: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!(
        "relaycast-loadgen: interrupted: closing the measured window now (again to quit at once)"
    );
    let _ = stop.send(true);
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    std::process::exit(130);
}

fn fail(error: &RunError) -> ExitCode {
    eprintln!("relaycast-loadgen: {error}");
    ExitCode::from(error.exit_code())
}
