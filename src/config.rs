//! The effective configuration: defaults, then the TOML file (`--config`), then CLI flags.
//! Unknown keys and bad values are refused at start-up with the key and the reason.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use relaycast_controlplane::auth::{RestAuth, SignallingAccess};
use relaycast_controlplane::hooks::{HookConfig, HookMethod, Hooks as HookClient};
use relaycast_controlplane::registry::RegistryLimits;
use relaycast_controlplane::rest::RestConfig;
use relaycast_controlplane::server::{ServerConfig, TlsListeners};
use relaycast_controlplane::signalling::SignallingConfig;
use relaycast_dataplane::DataPlaneConfig;
use serde::{Deserialize, Serialize};

/// relaycast: a WebRTC streaming server speaking Flashphoner WCS's signalling and REST API.
#[derive(Parser, Debug, Default)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// WebSocket signalling port (0: any free port).
    #[arg(long)]
    pub ws_port: Option<u16>,
    /// REST and web apps port (0: any free port).
    #[arg(long)]
    pub rest_port: Option<u16>,
    /// Core n's media UDP port is this plus n (0: any free ports).
    #[arg(long)]
    pub media_port_base: Option<u16>,
    /// Number of data-plane cores (0: every CPU).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Address every socket binds to.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Address put in ICE candidates (default: the bind address, or every interface's).
    #[arg(long)]
    pub public_ip: Option<IpAddr>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// TLS certificate chain (PEM); with --tls-key, enables wss:// and https://.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Secure WebSocket signalling port (0: any free port).
    #[arg(long)]
    pub wss_port: Option<u16>,
    /// REST over TLS port (0: any free port).
    #[arg(long)]
    pub https_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every setting, as the TOML file spells it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ws_port: u16,
    pub rest_port: u16,
    pub media_port_base: u16,
    pub cores: usize,
    pub bind: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub keepalive: Keepalive,
    pub media: Media,
    pub limits: Limits,
    pub relay: Relay,
    pub tls: Tls,
    pub auth: Auth,
    pub hooks: Hooks,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Certificate chain (PEM, leaf first). With `key_file`, enables wss:// and https://.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Secure WebSocket signalling port.
    pub wss_port: u16,
    /// REST over TLS port.
    pub https_port: u16,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert_file: None,
            key_file: None,
            wss_port: 8443,
            https_port: 8444,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// REST (`/rest-api/...`) requires HTTP Basic with this user and `rest_password`.
    pub rest_user: Option<String>,
    pub rest_password: Option<String>,
    /// REST requires `Authorization: Bearer <rest_token>` (either kind is accepted when both
    /// are set).
    pub rest_token: Option<String>,
    /// `/metrics` requires the REST credentials too.
    pub metrics: bool,
    /// `appKey`s accepted in `connection`; empty: any.
    pub app_keys: Vec<String>,
    /// Shared secret clients put in `custom.token` of `connection` (for the whole session) or
    /// of each `publishStream`/`playStream`; others get FAILED `Restricted access`.
    pub token: Option<String>,
}

/// The operator's backend, asked through WCS's REST hooks before a connection, a publish or
/// a play goes on, and given clients' `sendData`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// The backend's base URL (`http://` or `https://`); each hook is posted to it plus
    /// `/<method>`. Unset: no hooks, except for the appKeys in `apps`.
    pub url: Option<String>,
    /// Backends of their own for some appKeys (`appKey = "base URL"`), as WCS gives each
    /// application its own REST URL; the other appKeys use `url`.
    pub apps: std::collections::BTreeMap<String, String>,
    /// The hooks posted: any of `connect`, `publishStream`, `playStream`, `OnDataEvent`,
    /// `StreamStatusEvent`, `ConnectionStatusEvent`.
    pub methods: Vec<String>,
    /// A post not answered within this many milliseconds refuses its request.
    pub timeout_ms: u64,
    /// Posts in flight at once; more wait for a slot (within `timeout_ms`).
    pub max_in_flight: usize,
    /// Sign each post: `Authorization: WCS <hex HMAC-MD5 of the body>`.
    pub secret_key: Option<String>,
    /// Let connections, publishes and plays go on when the backend cannot be reached or does
    /// not answer in time (a status it answers still counts). Off: they are refused.
    pub allow_unavailable: bool,
    /// Trust only the CA certificates in this PEM file for an https:// backend (default:
    /// the system roots).
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for Hooks {
    fn default() -> Self {
        let d = HookConfig::default();
        Hooks {
            url: None,
            apps: std::collections::BTreeMap::new(),
            methods: HookMethod::ALL
                .iter()
                .map(|m| m.as_str().to_owned())
                .collect(),
            timeout_ms: d.timeout.as_millis() as u64,
            max_in_flight: d.max_in_flight,
            secret_key: None,
            allow_unavailable: d.allow_unavailable,
            tls_ca_file: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// `/pull/push` and `/pull/pull` answer within this many milliseconds.
    pub rest_timeout_ms: u64,
    /// Connecting to the remote server (WebSocket + `getUserData`) and its answer, ms.
    pub connect_timeout_ms: u64,
    /// From the remote's answer to PUBLISHING/PLAYING, ms.
    pub established_timeout_ms: u64,
    /// Reconnect an established relay whose connection to the remote drops.
    pub reconnect: bool,
    /// First reconnect delay, ms; doubles up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failed reconnects before giving up (0: never give up).
    pub max_attempts: u32,
    /// Trust only the CA certificates in this PEM file for wss:// remotes (default: the
    /// system roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Accept any certificate from wss:// remotes: for labs with self-signed certificates.
    pub tls_insecure: bool,
    /// Sent as `custom.token` in `connection` to remotes that require a shared secret.
    pub token: Option<String>,
}

impl Default for Relay {
    fn default() -> Self {
        let d = relaycast_controlplane::relay::RelayConfig::default();
        Relay {
            rest_timeout_ms: d.rest_timeout.as_millis() as u64,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
            established_timeout_ms: d.established_timeout.as_millis() as u64,
            reconnect: d.reconnect,
            backoff_initial_ms: d.backoff_initial.as_millis() as u64,
            backoff_max_ms: d.backoff_max.as_millis() as u64,
            max_attempts: d.max_attempts,
            tls_ca_file: None,
            tls_insecure: false,
            token: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// Seconds between the server's `ping` frames.
    pub ping_interval_secs: u64,
    /// Silent pings after which a session is closed.
    pub max_missed_pings: u32,
    /// A client that takes no frame for this many seconds has stopped reading: it is dropped.
    pub write_timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// A peer must connect (ICE and DTLS) within this many seconds.
    pub connect_timeout_secs: u64,
    /// A publisher sending no RTP this long fails with `Failed by RTP activity`.
    pub rtp_timeout_secs: u64,
    /// A connected peer whose ICE stays disconnected this long fails.
    pub ice_disconnect_grace_secs: u64,
    /// Keyframe requests to one publisher are coalesced to one per this many milliseconds
    /// while the last one is not answered by a keyframe.
    pub keyframe_min_interval_ms: u64,
    /// The same once the last request was answered by a keyframe.
    pub keyframe_answered_interval_ms: u64,
    /// Kernel socket buffer size (SO_RCVBUF and SO_SNDBUF) of media sockets, bytes.
    pub socket_buffer_bytes: usize,
    /// A core forwarding under 10 media packets a second, with every peer connected, reads
    /// and fires timers every 100 ms instead of at once, to spare CPU with silent peers. Its
    /// first media after a quiet spell then waits up to 100 ms.
    pub quiet_batching: bool,
    /// Players' media is sealed (SRTP) and sent by relaycast itself rather than through
    /// each player's WebRTC stack packet by packet: about a third less CPU per forwarded
    /// packet. False sends every packet through str0m.
    pub direct_egress: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket frame accepted, bytes.
    pub max_frame_bytes: usize,
    /// Largest REST request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Peers beyond this count on one core are refused.
    pub max_peers_per_core: usize,
    /// Signalling messages one session may send per second (0: no limit).
    pub max_messages_per_sec: u32,
    /// Signalling sessions open at once from one IP address (0: no limit).
    pub max_sessions_per_ip: usize,
    /// Publishers and players one signalling session may hold.
    pub max_streams_per_session: usize,
    /// Players one stream may have.
    pub max_players_per_stream: usize,
    /// Largest stream event payload (`sendData`), bytes of JSON.
    pub max_stream_event_bytes: usize,
    /// Stream events (mute, unmute, data) one publisher may send per second (0: no limit).
    pub max_stream_events_per_sec: u32,
    /// Bytes of frames waiting for one client beyond which it is dropped as too slow.
    pub max_queued_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ws_port: 8080,
            rest_port: 8081,
            media_port_base: 31000,
            cores: 0,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            public_ip: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            keepalive: Keepalive::default(),
            media: Media::default(),
            limits: Limits::default(),
            relay: Relay::default(),
            tls: Tls::default(),
            auth: Auth::default(),
            hooks: Hooks::default(),
        }
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        let s = SignallingConfig::default();
        Keepalive {
            ping_interval_secs: s.ping_interval.as_secs(),
            max_missed_pings: s.max_missed_pings,
            write_timeout_secs: s.write_timeout.as_secs(),
        }
    }
}

impl Default for Media {
    fn default() -> Self {
        let d = DataPlaneConfig::default();
        Media {
            connect_timeout_secs: d.connect_timeout.as_secs(),
            rtp_timeout_secs: d.rtp_timeout.as_secs(),
            ice_disconnect_grace_secs: d.ice_disconnect_grace.as_secs(),
            keyframe_min_interval_ms: d.keyframe_min_interval.as_millis() as u64,
            keyframe_answered_interval_ms: d.keyframe_answered_interval.as_millis() as u64,
            socket_buffer_bytes: d.socket_buffer,
            // The server's default; the data plane's own (false) is its clients'.
            quiet_batching: true,
            direct_egress: d.direct_egress,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: SignallingConfig::default().max_frame,
            max_body_bytes: RestConfig::default().max_body,
            max_peers_per_core: DataPlaneConfig::default().max_peers_per_core,
            max_messages_per_sec: SignallingConfig::default().max_messages_per_sec,
            max_sessions_per_ip: SignallingConfig::default().max_sessions_per_ip,
            max_streams_per_session: RegistryLimits::default().streams_per_session,
            max_players_per_stream: RegistryLimits::default().players_per_stream,
            max_stream_event_bytes: RegistryLimits::default().stream_event_bytes,
            max_stream_events_per_sec: RegistryLimits::default().stream_events_per_sec,
            max_queued_bytes: SignallingConfig::default().max_queued,
        }
    }
}

impl Config {
    /// Defaults, overridden by the file, overridden by the flags.
    pub fn load(cli: &Cli) -> anyhow::Result<Config> {
        let mut config = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("could not read {}", path.display()))?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))?
            }
            None => Config::default(),
        };
        macro_rules! flag {
            ($($field:ident),*) => { $(if let Some(v) = &cli.$field { config.$field = v.clone(); })* };
        }
        flag!(
            ws_port,
            rest_port,
            media_port_base,
            cores,
            bind,
            log_level,
            log_format
        );
        if cli.public_ip.is_some() {
            config.public_ip = cli.public_ip;
        }
        if cli.tls_cert.is_some() {
            config.tls.cert_file = cli.tls_cert.clone();
        }
        if cli.tls_key.is_some() {
            config.tls.key_file = cli.tls_key.clone();
        }
        if let Some(port) = cli.wss_port {
            config.tls.wss_port = port;
        }
        if let Some(port) = cli.https_port {
            config.tls.https_port = port;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.keepalive.ping_interval_secs == 0 {
            bail!("keepalive.ping_interval_secs: must be at least 1");
        }
        if self.keepalive.write_timeout_secs == 0 {
            bail!("keepalive.write_timeout_secs: must be at least 1");
        }
        if self.limits.max_queued_bytes < self.limits.max_frame_bytes {
            bail!(
                "limits.max_queued_bytes: must be at least limits.max_frame_bytes ({}), so a \
                 frame fits",
                self.limits.max_frame_bytes
            );
        }
        if self.limits.max_frame_bytes < 1024 {
            bail!("limits.max_frame_bytes: must be at least 1024 (an SDP offer is several KiB)");
        }
        if self.limits.max_body_bytes < 256 {
            bail!("limits.max_body_bytes: must be at least 256");
        }
        if self.media.connect_timeout_secs == 0 || self.media.rtp_timeout_secs == 0 {
            bail!("media.connect_timeout_secs and media.rtp_timeout_secs: must be at least 1");
        }
        if self.media.keyframe_answered_interval_ms > self.media.keyframe_min_interval_ms {
            bail!(
                "media.keyframe_answered_interval_ms: must be at most media.keyframe_min_interval_ms"
            );
        }
        let r = &self.relay;
        if r.rest_timeout_ms < 100 || r.connect_timeout_ms < 100 || r.established_timeout_ms < 100 {
            bail!(
                "relay.rest_timeout_ms, relay.connect_timeout_ms and relay.established_timeout_ms: must be at least 100"
            );
        }
        if r.backoff_initial_ms == 0 || r.backoff_max_ms < r.backoff_initial_ms {
            bail!("relay.backoff_initial_ms: must be at least 1 and at most relay.backoff_max_ms");
        }
        let cores = self.effective_cores();
        if self.media_port_base != 0 && self.media_port_base as usize + cores > 65_536 {
            bail!(
                "media_port_base: {} + {cores} cores runs past port 65535",
                self.media_port_base
            );
        }
        if let Some(ip) = self.public_ip
            && ip.is_unspecified()
        {
            bail!("public_ip: {ip} cannot be reached; give the address clients connect to");
        }
        let l = &self.limits;
        if l.max_streams_per_session == 0
            || l.max_players_per_stream == 0
            || l.max_peers_per_core == 0
        {
            bail!(
                "limits.max_streams_per_session, limits.max_players_per_stream and \
                 limits.max_peers_per_core: must be at least 1"
            );
        }
        self.validate_tls()?;
        self.validate_auth()?;
        self.validate_hooks()?;
        Ok(())
    }

    fn validate_hooks(&self) -> anyhow::Result<()> {
        let h = &self.hooks;
        if h.timeout_ms == 0 || h.max_in_flight == 0 {
            bail!("hooks.timeout_ms and hooks.max_in_flight: must be at least 1");
        }
        if let Some(unknown) = h.methods.iter().find(|m| HookMethod::parse(m).is_none()) {
            bail!(
                "hooks.methods: {unknown:?} is not a hook relaycast calls (connect, \
                 publishStream, playStream, OnDataEvent, StreamStatusEvent, \
                 ConnectionStatusEvent)"
            );
        }
        if h.secret_key.as_deref() == Some("") {
            bail!("hooks.secret_key: must not be empty (leave it out to send unsigned hooks)");
        }
        HookClient::new(&self.hook_config()?)?;
        Ok(())
    }

    fn hook_config(&self) -> anyhow::Result<HookConfig> {
        use relaycast_controlplane::tls::ClientTls;
        let tls = match &self.hooks.tls_ca_file {
            Some(path) => ClientTls::with_ca_file(path)
                .map_err(|e| anyhow::anyhow!("hooks.tls_ca_file: {e}"))?,
            None => ClientTls::system(),
        };
        Ok(HookConfig {
            url: self.hooks.url.clone().filter(|url| !url.is_empty()),
            apps: self
                .hooks
                .apps
                .iter()
                .map(|(app, url)| (app.clone(), url.clone()))
                .collect(),
            methods: self
                .hooks
                .methods
                .iter()
                .filter_map(|m| HookMethod::parse(m))
                .collect(),
            timeout: Duration::from_millis(self.hooks.timeout_ms),
            max_in_flight: self.hooks.max_in_flight,
            secret_key: self.hooks.secret_key.clone(),
            allow_unavailable: self.hooks.allow_unavailable,
            tls,
        })
    }

    fn validate_tls(&self) -> anyhow::Result<()> {
        let t = &self.tls;
        match (&t.cert_file, &t.key_file) {
            (None, None) => {}
            (Some(_), None) => bail!("tls.key_file: required with tls.cert_file"),
            (None, Some(_)) => bail!("tls.cert_file: required with tls.key_file"),
            (Some(cert), Some(key)) => {
                relaycast_controlplane::tls::acceptor_from_files(cert, key)
                    .map_err(|e| anyhow::anyhow!("tls.cert_file/tls.key_file: {e}"))?;
                let ports = [self.ws_port, self.rest_port, t.wss_port, t.https_port];
                for (i, port) in ports.iter().enumerate() {
                    if *port != 0 && ports[..i].contains(port) {
                        bail!(
                            "tls.wss_port and tls.https_port: port {port} is used twice among \
                             ws_port, rest_port, tls.wss_port and tls.https_port"
                        );
                    }
                }
            }
        }
        if self.relay.tls_insecure && self.relay.tls_ca_file.is_some() {
            bail!("relay.tls_insecure: set either it or relay.tls_ca_file, not both");
        }
        self.relay_tls()?;
        Ok(())
    }

    fn validate_auth(&self) -> anyhow::Result<()> {
        let a = &self.auth;
        match (&a.rest_user, &a.rest_password) {
            (Some(user), Some(password)) => {
                if user.is_empty() || user.contains(':') {
                    bail!("auth.rest_user: must be non-empty and hold no ':'");
                }
                if password.is_empty() {
                    bail!("auth.rest_password: must not be empty");
                }
            }
            (Some(_), None) => bail!("auth.rest_password: required with auth.rest_user"),
            (None, Some(_)) => bail!("auth.rest_user: required with auth.rest_password"),
            (None, None) => {}
        }
        if a.rest_token.as_deref() == Some("") {
            bail!("auth.rest_token: must not be empty (leave it out to disable bearer tokens)");
        }
        if a.token.as_deref() == Some("") {
            bail!("auth.token: must not be empty (leave it out to disable the token check)");
        }
        if a.metrics && a.rest_user.is_none() && a.rest_token.is_none() {
            bail!("auth.metrics: needs auth.rest_user/rest_password or auth.rest_token");
        }
        if a.app_keys.iter().any(String::is_empty) {
            bail!("auth.app_keys: an appKey must not be empty");
        }
        Ok(())
    }

    fn relay_tls(&self) -> anyhow::Result<relaycast_controlplane::tls::ClientTls> {
        use relaycast_controlplane::tls::ClientTls;
        if self.relay.tls_insecure {
            return Ok(ClientTls::insecure());
        }
        match &self.relay.tls_ca_file {
            Some(path) => {
                ClientTls::with_ca_file(path).map_err(|e| anyhow::anyhow!("relay.tls_ca_file: {e}"))
            }
            None => Ok(ClientTls::system()),
        }
    }

    pub fn effective_cores(&self) -> usize {
        match self.cores {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The addresses put in ICE candidates.
    pub fn candidate_ips(&self) -> Vec<IpAddr> {
        if let Some(ip) = self.public_ip {
            return vec![ip];
        }
        if !self.bind.is_unspecified() {
            return vec![self.bind];
        }
        let want_v4 = self.bind.is_ipv4();
        let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
            .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        ips.retain(|ip| ip.is_ipv4() == want_v4);
        // Non-loopback first: browsers on other hosts try candidates in order.
        ips.sort_by_key(|ip| ip.is_loopback());
        ips.dedup();
        if ips.is_empty() {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        ips
    }

    /// The server's configuration; fails only when a file checked by `validate` can no
    /// longer be read.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            ws: SocketAddr::new(self.bind, self.ws_port),
            rest: SocketAddr::new(self.bind, self.rest_port),
            data: DataPlaneConfig {
                cores: self.effective_cores(),
                pin: true,
                bind: self.bind,
                media_port_base: self.media_port_base,
                candidate_ips: self.candidate_ips(),
                connect_timeout: Duration::from_secs(self.media.connect_timeout_secs),
                rtp_timeout: Duration::from_secs(self.media.rtp_timeout_secs),
                ice_disconnect_grace: Duration::from_secs(self.media.ice_disconnect_grace_secs),
                keyframe_min_interval: Duration::from_millis(self.media.keyframe_min_interval_ms),
                keyframe_answered_interval: Duration::from_millis(
                    self.media.keyframe_answered_interval_ms,
                ),
                max_peers_per_core: self.limits.max_peers_per_core,
                socket_buffer: self.media.socket_buffer_bytes,
                quiet_batching: self.media.quiet_batching,
                direct_egress: self.media.direct_egress,
                arrival_timestamps: false,
                read_sweep: None,
                ..DataPlaneConfig::default()
            },
            signalling: SignallingConfig {
                max_frame: self.limits.max_frame_bytes,
                ping_interval: Duration::from_secs(self.keepalive.ping_interval_secs),
                max_missed_pings: self.keepalive.max_missed_pings,
                write_timeout: Duration::from_secs(self.keepalive.write_timeout_secs),
                max_queued: self.limits.max_queued_bytes,
                max_messages_per_sec: self.limits.max_messages_per_sec,
                max_sessions_per_ip: self.limits.max_sessions_per_ip,
                ..SignallingConfig::default()
            },
            rest_config: RestConfig {
                max_body: self.limits.max_body_bytes,
                auth: RestAuth {
                    basic: self
                        .auth
                        .rest_user
                        .clone()
                        .zip(self.auth.rest_password.clone()),
                    bearer: self.auth.rest_token.clone(),
                },
                metrics_auth: self.auth.metrics,
                ..RestConfig::default()
            },
            tls: match (&self.tls.cert_file, &self.tls.key_file) {
                (Some(cert), Some(key)) => Some(TlsListeners {
                    wss: SocketAddr::new(self.bind, self.tls.wss_port),
                    https: SocketAddr::new(self.bind, self.tls.https_port),
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                }),
                _ => None,
            },
            access: SignallingAccess {
                app_keys: self.auth.app_keys.clone(),
                token: self.auth.token.clone(),
            },
            limits: RegistryLimits {
                streams_per_session: self.limits.max_streams_per_session,
                players_per_stream: self.limits.max_players_per_stream,
                peers_per_core: self.limits.max_peers_per_core,
                stream_event_bytes: self.limits.max_stream_event_bytes,
                stream_events_per_sec: self.limits.max_stream_events_per_sec,
            },
            relay: relaycast_controlplane::relay::RelayConfig {
                rest_timeout: Duration::from_millis(self.relay.rest_timeout_ms),
                connect_timeout: Duration::from_millis(self.relay.connect_timeout_ms),
                established_timeout: Duration::from_millis(self.relay.established_timeout_ms),
                reconnect: self.relay.reconnect,
                backoff_initial: Duration::from_millis(self.relay.backoff_initial_ms),
                backoff_max: Duration::from_millis(self.relay.backoff_max_ms),
                max_attempts: self.relay.max_attempts,
                tls: self.relay_tls()?,
                token: self.relay.token.clone(),
            },
            shutdown_grace: Duration::from_secs(2),
            hooks: self.hook_config()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = std::env::temp_dir().join(format!("relaycast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", fastrand_name(text)));
        std::fs::write(&path, text).unwrap();
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        Config::load(&cli)
    }

    fn fastrand_name(text: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        format!("{:x}", h.finish())
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load_text("ws_prot = 1\n").unwrap_err().to_string();
        assert!(e.contains("ws_prot"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = load_text("[limits]\nmax_frame_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_frame_bytes"), "{e}");
        let e = load_text("ws_port = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("ws_port"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("relaycast-flags-{}.toml", std::process::id()));
        std::fs::write(&path, "ws_port = 9000\nrest_port = 9001\n").unwrap();
        let cli = Cli {
            config: Some(path),
            ws_port: Some(9100),
            ..Cli::default()
        };
        let c = Config::load(&cli).unwrap();
        assert_eq!((c.ws_port, c.rest_port), (9100, 9001));
    }

    #[test]
    fn production_keys_reach_the_server_config() {
        let c = load_text(
            "[auth]\nrest_user = \"u\"\nrest_password = \"p\"\nrest_token = \"t\"\n\
             metrics = true\napp_keys = [\"live\"]\ntoken = \"s\"\n\
             [limits]\nmax_messages_per_sec = 7\nmax_sessions_per_ip = 8\n\
             max_streams_per_session = 9\nmax_players_per_stream = 10\nmax_peers_per_core = 11\n\
             max_stream_event_bytes = 12\nmax_stream_events_per_sec = 13\n\
             max_queued_bytes = 2000000\n[keepalive]\nwrite_timeout_secs = 3\n\
             [relay]\ntls_insecure = true\ntoken = \"r\"\n\
             [media]\nquiet_batching = false\ndirect_egress = false\n\
             [hooks]\nurl = \"http://127.0.0.1:9/rest/my_api\"\nmethods = [\"connect\"]\n\
             timeout_ms = 1500\nmax_in_flight = 3\nsecret_key = \"k\"\nallow_unavailable = true\n",
        )
        .unwrap();
        let s = c.server_config().unwrap();
        assert_eq!(s.rest_config.auth.basic, Some(("u".into(), "p".into())));
        assert_eq!(s.rest_config.auth.bearer.as_deref(), Some("t"));
        assert!(s.rest_config.metrics_auth);
        assert_eq!(s.access.app_keys, ["live"]);
        assert_eq!(s.access.token.as_deref(), Some("s"));
        assert_eq!(
            (
                s.signalling.max_messages_per_sec,
                s.signalling.max_sessions_per_ip
            ),
            (7, 8)
        );
        assert_eq!(
            (
                s.limits.streams_per_session,
                s.limits.players_per_stream,
                s.limits.peers_per_core
            ),
            (9, 10, 11)
        );
        assert_eq!(
            (s.limits.stream_event_bytes, s.limits.stream_events_per_sec),
            (12, 13)
        );
        assert_eq!(s.data.max_peers_per_core, 11);
        assert!(!s.data.quiet_batching);
        assert!(!s.data.direct_egress);
        assert!(s.relay.tls.insecure);
        assert_eq!(s.relay.token.as_deref(), Some("r"));
        assert!(s.tls.is_none(), "no certificate, no TLS listeners");
        assert_eq!(
            s.hooks.url.as_deref(),
            Some("http://127.0.0.1:9/rest/my_api")
        );
        assert_eq!(s.hooks.methods, [HookMethod::Connect].into_iter().collect());
        assert_eq!(s.hooks.timeout, Duration::from_millis(1500));
        assert_eq!(s.hooks.max_in_flight, 3);
        assert_eq!(s.signalling.max_queued, 2_000_000);
        assert_eq!(s.signalling.write_timeout, Duration::from_secs(3));
        assert_eq!(s.hooks.secret_key.as_deref(), Some("k"));
        assert!(s.hooks.allow_unavailable);
    }

    #[test]
    fn bad_hook_settings_are_refused_at_start() {
        let e = load_text("[hooks]\nurl = \"ftp://backend/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hooks.url") && e.contains("http:// or https://"),
            "{e}"
        );
        let e = load_text("[hooks]\ntimeout_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hooks.timeout_ms"), "{e}");
        let e = load_text("[hooks.apps]\nchatApp = \"chat-backend/api\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hooks.apps.chatApp"), "{e}");
        let e = load_text("[hooks]\nmethods = [\"connect\", \"OnCallEvent\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hooks.methods") && e.contains("OnCallEvent"),
            "{e}"
        );
    }

    #[test]
    fn defaults_are_open_and_limited() {
        let s = Config::default().server_config().unwrap();
        assert!(!s.rest_config.auth.is_enabled());
        assert!(s.access.app_keys.is_empty() && s.access.token.is_none());
        assert!(!s.relay.tls.insecure && s.relay.tls.ca.is_empty());
        assert!(s.signalling.max_messages_per_sec > 0 && s.signalling.max_sessions_per_ip > 0);
        assert!(s.tls.is_none());
        assert!(s.hooks.url.is_none(), "no hooks unless configured");
        assert!(
            s.data.quiet_batching,
            "the server batches a quiet core's work by default"
        );
        assert!(
            s.data.direct_egress,
            "players' media skips str0m by default"
        );
    }

    #[test]
    fn candidates_follow_public_ip_then_bind() {
        let mut c = Config {
            bind: "127.0.0.1".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(
            c.candidate_ips(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        c.public_ip = Some("203.0.113.7".parse().unwrap());
        assert_eq!(
            c.candidate_ips(),
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
        c.public_ip = None;
        c.bind = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert!(c.candidate_ips().iter().any(|ip| ip.is_loopback()));
    }
}
