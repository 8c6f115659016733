//! Shared harness for the integration tests: real `relaycast` processes on loopback with
//! ephemeral ports, a REST helper, and the project's protocol client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use relaycast_controlplane::client::{ClientTimeouts, Endpoint, Session, StreamHandle};
use relaycast_controlplane::protocol::{ConnectionRequest, StreamStatus, StreamStatusEvent};
use serde_json::Value;

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub ws: SocketAddr,
    pub rest: SocketAddr,
    pub media: Vec<SocketAddr>,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts `relaycast` on 127.0.0.1 with ephemeral ports, 2 cores, and `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::spawn(Server::args(extra))
    }

    /// [`Server::start`] in a process whose `resource` limit (`libc::RLIMIT_*`) starts at
    /// `soft` (hard: `hard`).
    pub fn start_with_limit(
        extra: &[&str],
        resource: libc::__rlimit_resource_t,
        soft: u64,
        hard: u64,
    ) -> Server {
        Server::spawn_with(Server::args(extra), |command| {
            set_limit(command, resource, soft, hard)
        })
    }

    /// [`Server::start`] in a process allowed only on `cpu`.
    pub fn start_on_cpu(extra: &[&str], cpu: usize) -> Server {
        Server::spawn_with(Server::args(extra), |command| set_cpu(command, cpu))
    }

    /// The flags of a test server: ephemeral ports on loopback, two cores, then `extra` (a
    /// flag given there replaces the default one).
    pub fn args(extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--ws-port",
            "0",
            "--rest-port",
            "0",
            "--media-port-base",
            "0",
            "--bind",
            "127.0.0.1",
            "--cores",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for flag in extra.iter().filter(|f| f.starts_with("--")) {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts a server with a config file holding `toml`, plus the flags of [`Server::start`].
    pub fn with_config(toml: &str, extra: &[&str]) -> Server {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("relaycast-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write config");
        let path = path.display().to_string();
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// Starts a server with exactly these arguments.
    pub fn spawn(args: Vec<String>) -> Server {
        Server::spawn_with(args, |_| {})
    }

    fn spawn_with(args: Vec<String>, configure: impl FnOnce(&mut Command)) -> Server {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("relaycast-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_relaycast"));
        command
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file);
        configure(&mut command);
        let mut child = command.spawn().expect("start relaycast");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready line");
        let ready = parse_ready(&line).unwrap_or_else(|| {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("relaycast did not start: {line:?}\n{log_text}")
        });
        Server {
            child: Some(child),
            ws: ready.0,
            rest: ready.1,
            media: ready.2,
            log,
            args,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.ws)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; returns its exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log, once it holds `text` (waits up to 5 s); `None` if it never does.
    pub async fn log_once_it_shows(&self, text: &str) -> Option<String> {
        eventually(Duration::from_secs(5), || async {
            let log = self.log_text();
            log.contains(text).then_some(log)
        })
        .await
    }

    /// POSTs `body` to `path` on the REST port; returns the status and the JSON body.
    pub async fn rest(&self, path: &str, body: &str) -> (u16, Value) {
        rest(self.rest, path, body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- server log {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr, Vec<SocketAddr>)> {
    let rest = line.trim().strip_prefix("relaycast ready ")?;
    let mut ws = None;
    let mut api = None;
    let mut media = Vec::new();
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "ws" => ws = value.parse().ok(),
            "rest" => api = value.parse().ok(),
            "media" => media = value.split(',').filter_map(|a| a.parse().ok()).collect(),
            _ => {}
        }
    }
    Some((ws?, api?, media))
}

/// A POST to a REST endpoint with a raw body.
pub async fn rest(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    request(addr, "POST", path, body).await
}

/// Any request; the body is parsed as JSON when it is JSON, else returned as a string.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect REST");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(req).await.expect("REST response");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A client media endpoint with 2 cores.
pub fn endpoint() -> Arc<Endpoint> {
    Endpoint::loopback(2).expect("client endpoint")
}

/// A signalling session with the SDK's defaults.
pub async fn session(server: &Server) -> Session {
    Session::connect(
        &server.ws_url(),
        &ConnectionRequest::default(),
        ClientTimeouts::default(),
    )
    .await
    .expect("connect session")
}

/// Polls `f` until it returns `Some` or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Production features: TLS, auth headers, metrics (tests/production.rs)
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct TestCert {
    pub cert_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCert {
    pub fn generate() -> TestCert {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("generate a certificate");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let cert_file = dir.join(format!("relaycast-{}-{n}-cert.pem", std::process::id()));
        let key_file = dir.join(format!("relaycast-{}-{n}-key.pem", std::process::id()));
        let cert_pem = certified.cert.pem();
        std::fs::write(&cert_file, &cert_pem).expect("write cert");
        std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert_pem,
            cert_file,
            key_file,
        }
    }

    /// The `[tls]` section serving this certificate on any free ports.
    pub fn toml(&self) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nwss_port = 0\nhttps_port = 0\n",
            self.cert_file.display().to_string(),
            self.key_file.display().to_string()
        )
    }
}

/// The `wss://` and `https://` addresses a server with TLS listens on (from server/info).
pub async fn tls_addrs(server: &Server) -> (SocketAddr, SocketAddr) {
    let (code, info) = server.rest("/rest-api/server/info", "").await;
    assert_eq!(code, 200, "{info}");
    let port = |key: &str| {
        info[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {info}")) as u16
    };
    (
        SocketAddr::from(([127, 0, 0, 1], port("wssPort"))),
        SocketAddr::from(([127, 0, 0, 1], port("httpsPort"))),
    )
}

/// Any request with extra headers; returns the status, the JSON body (or a string) and the
/// response headers.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, hyper::HeaderMap) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect REST");
    send_http(
        hyper_util::rt::TokioIo::new(stream),
        addr,
        method,
        path,
        body,
        headers,
    )
    .await
}

/// A request over TLS, trusting only `ca_pem`.
pub async fn https_request(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect HTTPS");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (status, value, _) = send_http(
        hyper_util::rt::TokioIo::new(tls),
        addr,
        method,
        path,
        body,
        &[],
    )
    .await;
    (status, value)
}

async fn send_http<T>(
    io: T,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, hyper::HeaderMap)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response = sender.send_request(req).await.expect("HTTP response");
    let status = response.status().as_u16();
    let response_headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, response_headers)
}

/// The `/metrics` page.
pub async fn metrics(server: &Server) -> String {
    let (code, body) = request(server.rest, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "{body}");
    body.as_str().expect("metrics are text").to_owned()
}

/// The sum of every sample of `name` whose labels include all of `labels` (`k="v"` each).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (metric_name == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A player's media packets received, loss in percent, and latency p50 and p99 (us) so far.
pub async fn player_figures(
    player: &relaycast_controlplane::client::ClientStream,
) -> (u64, f64, u64, u64) {
    let probe = player
        .report()
        .await
        .expect("player report")
        .probe
        .expect("probe stats");
    let media = probe.audio_packets + probe.video_packets;
    let loss = if media + probe.lost == 0 {
        100.0
    } else {
        probe.lost as f64 * 100.0 / (media + probe.lost) as f64
    };
    (media, loss, probe.latency_us.p50, probe.latency_us.p99)
}

/// Keyframe requests a synthetic publisher has received so far (0 without a report).
pub async fn keyframe_requests(publisher: &relaycast_controlplane::client::ClientStream) -> u64 {
    let report = publisher.report().await;
    report
        .and_then(|r| r.generator)
        .map_or(0, |g| g.keyframe_requests)
}

/// Keyframes a player has received so far (0 without a report).
pub async fn keyframes_received(player: &relaycast_controlplane::client::ClientStream) -> u64 {
    let report = player.report().await;
    report.and_then(|r| r.probe).map_or(0, |p| p.keyframes)
}

/// Waits up to `limit` for a stream to end (STOPPED or FAILED) and returns that status;
/// panics with `what` if it does not.
pub async fn ended(handle: &mut StreamHandle, limit: Duration, what: &str) -> StreamStatusEvent {
    handle
        .wait_for(&[StreamStatus::Stopped, StreamStatus::Failed], limit)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// A REST-hook backend
// ---------------------------------------------------------------------------------------------

/// One post a test backend got: its path, `Authorization` header and JSON body.
#[derive(Debug)]
pub struct Post {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A WCS-style backend for the REST hooks. It records each post and answers a 1 MB body to
/// data whose payload says `{"big": true}`, 403 to a
/// `connect` whose `custom.login` is "mallory", to a `publishStream` or `playStream` of a
/// stream named "forbidden-*", and to data whose payload says `{"answer": 403}`; it never
/// answers data saying `{"answer": "never"}`; everything else gets 200.
/// Its address, its posts, and the number of TCP connections it accepted.
pub async fn hook_backend() -> (
    SocketAddr,
    Posts,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    hook_backend_with(None).await
}

/// [`hook_backend`] over `https://` with this certificate (its address, its posts).
pub async fn https_hook_backend(cert: &TestCert) -> (SocketAddr, Posts) {
    let pem = |path: &PathBuf| std::fs::read(path).expect("read PEM");
    let chain: Vec<_> =
        rustls::pki_types::pem::PemObject::pem_slice_iter(&pem(&cert.cert_file)[..])
            .map(|c| c.expect("certificate PEM"))
            .collect();
    let key = rustls::pki_types::pem::PemObject::from_pem_slice(&pem(&cert.key_file)[..])
        .expect("key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    let (addr, posts, _) =
        hook_backend_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    (addr, posts)
}

async fn hook_backend_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (
    SocketAddr,
    Posts,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (posts, rx) = tokio::sync::mpsc::unbounded_channel();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let posts = posts.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let posts = posts.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let authorization = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let raw = req.into_body().collect().await?.to_bytes();
                        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                        let refused = body["custom"]["login"] == "mallory"
                            || body["name"]
                                .as_str()
                                .is_some_and(|n| n.starts_with("forbidden-"))
                            || body["payload"]["answer"] == 403;
                        let never = body["payload"]["answer"] == "never";
                        let answer = if body["payload"]["big"] == true {
                            "x".repeat(1 << 20)
                        } else {
                            "{}".to_owned()
                        };
                        let _ = posts.send(Post {
                            path,
                            authorization,
                            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                        });
                        if never {
                            std::future::pending::<()>().await;
                        }
                        let mut response = hyper::Response::new(Full::new(Bytes::from(answer)));
                        if refused {
                            *response.status_mut() = hyper::StatusCode::FORBIDDEN;
                        }
                        Ok::<_, hyper::Error>(response)
                    }
                });
            let tls = tls.clone();
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, service).await;
                    }
                    Some(acceptor) => {
                        // A client that refuses the certificate ends here.
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, service).await;
                    }
                }
            });
        }
    });
    let posts = Posts {
        rx,
        aside: Vec::new(),
        taken: 0,
    };
    (addr, posts, connections)
}

/// The posts a test backend got, taken by method in order; the others are kept aside.
pub struct Posts {
    rx: tokio::sync::mpsc::UnboundedReceiver<Post>,
    pub aside: Vec<Post>,
    /// Posts returned by `next`.
    pub taken: usize,
}

impl Posts {
    /// The next post to `<base>/<method>`.
    pub async fn next(&mut self, method: &str) -> Post {
        self.taken += 1;
        if let Some(i) = self
            .aside
            .iter()
            .position(|p| p.path.ends_with(&format!("/{method}")))
        {
            return self.aside.remove(i);
        }
        loop {
            let post = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {method} hook within 10 s"))
                .expect("the backend runs");
            if post.path.ends_with(&format!("/{method}")) {
                return post;
            }
            self.aside.push(post);
        }
    }
}

/// Makes `command`'s process start with its `resource` limit at `soft` (hard: `hard`).
pub fn set_limit(command: &mut Command, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec, and only calls setrlimit
    // (async-signal-safe) on a struct it owns.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(resource, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Makes `command`'s process start allowed only on `cpu` (as `taskset -c CPU` does).
pub fn set_cpu(command: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec, and only builds a CPU set it owns and
    // calls sched_setaffinity (async-signal-safe) with it.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
