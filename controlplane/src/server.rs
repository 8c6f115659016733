//! Starting and stopping a server: the data plane's cores, then the control-plane thread
//! (this one) running signalling, REST and the hub on a single-threaded tokio runtime.
//! With TLS configured, the same signalling and REST services also listen for `wss://` and
//! `https://`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use relaycast_dataplane::{DataPlane, DataPlaneConfig};
use tokio::net::TcpListener;

use crate::auth::SignallingAccess;
use crate::hooks::{HookConfig, Hooks};
use crate::hub::{Hub, ServerFacts};
use crate::registry::{RegistryConfig, RegistryLimits};
use crate::relay::RelayConfig;
use crate::rest::{self, RestConfig};
use crate::signalling::{self, SignallingConfig};

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub ws: SocketAddr,
    pub rest: SocketAddr,
    pub data: DataPlaneConfig,
    pub signalling: SignallingConfig,
    pub rest_config: RestConfig,
    pub relay: RelayConfig,
    /// `wss://` and `https://` listeners, when a certificate is configured.
    pub tls: Option<TlsListeners>,
    /// Who may connect, publish and play.
    pub access: SignallingAccess,
    /// Streams per session, players per stream, peers per core.
    pub limits: RegistryLimits,
    /// How long a graceful stop waits for clients to take their final statuses.
    pub shutdown_grace: Duration,
    /// The operator's backend and the REST hooks it is asked.
    pub hooks: HookConfig,
}

/// The TLS listeners and the PEM files of their certificate.
#[derive(Clone, Debug)]
pub struct TlsListeners {
    pub wss: SocketAddr,
    pub https: SocketAddr,
    /// Certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Where a started server listens (ports resolved when 0 was asked for).
#[derive(Clone, Debug)]
pub struct Listening {
    pub ws: SocketAddr,
    pub rest: SocketAddr,
    pub wss: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub media: Vec<SocketAddr>,
}

/// Runs a server on this thread until SIGINT or SIGTERM, then stops it gracefully.
/// `ready` is called once every socket is bound.
pub fn run(config: ServerConfig, ready: impl FnOnce(&Listening)) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the control-plane runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("could not install the SIGTERM handler")?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
            }
        };
        serve(config, ready, stop).await
    })
}

/// Runs a server until `stop` resolves (its output names the reason, for the log).
pub async fn serve(
    config: ServerConfig,
    ready: impl FnOnce(&Listening),
    stop: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let cores = config.data.cores;
    let acceptor = match &config.tls {
        Some(tls) => Some(
            crate::tls::acceptor_from_files(&tls.cert_file, &tls.key_file)
                .context("could not set up TLS")?,
        ),
        None => None,
    };
    let (hooks, mut hook_answers) =
        Hooks::new(&config.hooks).context("could not set up the REST hooks")?;
    let data = DataPlane::start(config.data.clone()).context("could not start the data plane")?;
    let media = data.media_addrs().to_vec();
    let ws_listener = TcpListener::bind(config.ws)
        .await
        .with_context(|| format!("could not listen for WebSocket signalling on {}", config.ws))?;
    let rest_listener = TcpListener::bind(config.rest)
        .await
        .with_context(|| format!("could not listen for REST on {}", config.rest))?;
    let mut ws_listeners = vec![(ws_listener, None)];
    let mut rest_listeners = vec![(rest_listener, None)];
    let (mut wss, mut https) = (None, None);
    if let (Some(tls), Some(acceptor)) = (&config.tls, acceptor) {
        let wss_listener = TcpListener::bind(tls.wss)
            .await
            .with_context(|| format!("could not listen for wss:// signalling on {}", tls.wss))?;
        let https_listener = TcpListener::bind(tls.https)
            .await
            .with_context(|| format!("could not listen for https:// REST on {}", tls.https))?;
        wss = Some(wss_listener.local_addr()?);
        https = Some(https_listener.local_addr()?);
        ws_listeners.push((wss_listener, Some(acceptor.clone())));
        rest_listeners.push((https_listener, Some(acceptor)));
    }
    let listening = Listening {
        ws: ws_listeners[0].0.local_addr()?,
        rest: rest_listeners[0].0.local_addr()?,
        wss,
        https,
        media: media.clone(),
    };
    let hub = Rc::new(Hub::new(
        RegistryConfig {
            server_version: crate::VERSION.to_string(),
            cores,
            instance: uuid::Uuid::new_v4().to_string(),
            access: config.access.clone(),
            limits: config.limits,
            hooks: hooks.plan(),
        },
        config.relay.clone(),
        data,
        ServerFacts {
            version: crate::VERSION.to_string(),
            ws_addr: Some(listening.ws),
            rest_addr: Some(listening.rest),
            wss_addr: listening.wss,
            https_addr: listening.https,
            media_addrs: media,
        },
        hooks,
    ));
    tracing::info!(ws = %listening.ws, rest = %listening.rest, wss = ?listening.wss,
        https = ?listening.https, media = ?listening.media, cores, "relaycast listening");
    ready(&listening);

    let events = tokio::task::spawn_local({
        let hub = Rc::clone(&hub);
        async move {
            while let Some(event) = hub.data().next_event().await {
                hub.data_event(event);
            }
        }
    });
    let answers = tokio::task::spawn_local({
        let hub = Rc::clone(&hub);
        async move {
            while let Some(answer) = hook_answers.recv().await {
                hub.hook_answer(answer);
            }
        }
    });
    let ws_task = tokio::task::spawn_local(signalling::serve(
        Rc::clone(&hub),
        ws_listeners,
        config.signalling.clone(),
    ));
    let rest_task = tokio::task::spawn_local(rest::serve(
        Rc::clone(&hub),
        rest_listeners,
        config.rest_config.clone(),
    ));

    let reason = stop.await;
    tracing::info!(reason, "stopping: sending final statuses");
    hub.shutdown();
    ws_task.abort();
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    // Clients take their final statuses, relays end their remote side, and the backend gets
    // the last notifications.
    while (hub.connection_count() > 0 || hub.relays().running() > 0 || hub.hooks_in_flight() > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rest_task.abort();
    events.abort();
    answers.abort();
    // Let aborted tasks drop their handles before the data plane stops.
    tokio::task::yield_now().await;
    drop(hub);
    tracing::info!("relaycast stopped");
    Ok(())
}
