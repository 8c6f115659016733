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
use relaycast_controlplane::client::{ClientTimeouts, Endpoint, Session};
use relaycast_controlplane::protocol::ConnectionRequest;
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
        // A flag given in `extra` replaces the default one.
        for flag in extra.iter().filter(|f| f.starts_with("--")) {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::spawn(args)
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
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("relaycast-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_relaycast"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start relaycast");
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
