//! The `relaycast` server binary: configuration, logging, and the server's run loop.

mod config;

use std::io::Write;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::{Cli, Config, LogFormat};

#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Heap profiling build (`--features dhat-heap`): every allocation is recorded with its
/// call stack, and `dhat-heap.json` is written when the server stops. Much slower.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    // Before the server allocates much: 2 MiB pages would hold peers' memory half-used.
    let thp = relaycast_dataplane::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relaycast: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.print_config {
        let mut shown = config.clone();
        // The effective configuration, without its secrets (they are set or not).
        for secret in [
            &mut shown.auth.rest_password,
            &mut shown.auth.rest_token,
            &mut shown.auth.token,
            &mut shown.relay.token,
            &mut shown.hooks.secret_key,
        ] {
            if secret.is_some() {
                *secret = Some("<redacted>".into());
            }
        }
        match toml::to_string_pretty(&shown) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("relaycast: could not print the configuration: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        return std::process::ExitCode::SUCCESS;
    }
    let filter = match EnvFilter::try_new(&config.log_level) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("relaycast: log_level {:?}: {e}", config.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(relaycast_dataplane::process::colour_logs())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Err(e) = thp {
        tracing::warn!(error = %e, "could not turn transparent huge pages off; memory per player will be higher");
    }
    raise_limits();
    let server_config = match config.server_config() {
        Ok(server_config) => server_config,
        Err(e) => {
            eprintln!("relaycast: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = relaycast_controlplane::server::run(server_config, |listening| {
        // One machine-readable line on stdout for scripts and tests.
        let media: Vec<String> = listening.media.iter().map(|a| a.to_string()).collect();
        let mut tls = String::new();
        if let (Some(wss), Some(https)) = (listening.wss, listening.https) {
            tls = format!(" wss={wss} https={https}");
        }
        println!(
            "relaycast ready ws={} rest={} media={}{tls}",
            listening.ws,
            listening.rest,
            media.join(",")
        );
        let _ = std::io::stdout().flush();
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("relaycast: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Each signalling connection holds a file descriptor: the soft open-file limit goes up to
/// the hard one (Linux's usual soft limit, 1,024, would stop the server at about a thousand
/// players), and a hard limit that is still low is said at start. The locked-memory limit,
/// which each core's io_uring buffers count against, goes up to its hard one too.
fn raise_limits() {
    match relaycast_dataplane::process::raise_open_files(None) {
        Ok(limit) => {
            if limit.soft > limit.before {
                tracing::info!(
                    from = limit.before,
                    to = limit.soft,
                    "open-file limit raised to the hard limit"
                );
            }
            if limit.soft < FEW_OPEN_FILES {
                tracing::warn!(
                    limit = limit.soft,
                    "low open-file limit: at most about this many signalling connections; \
                     raise the hard limit for more (ulimit -Hn, or LimitNOFILE= in a systemd \
                     unit)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
    match relaycast_dataplane::process::raise_locked_memory() {
        Ok(limit) if limit.soft > limit.before => tracing::info!(
            from = limit.before,
            to = limit.soft,
            "locked-memory limit raised to the hard limit (io_uring's buffers)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read or raise the locked-memory limit"),
    }
}

/// An open-file limit below this is said at start: a few thousand players need as many
/// descriptors.
const FEW_OPEN_FILES: u64 = 4096;
