//! The loadgen binary against a real `relaycast` server on loopback: the JSON summary of
//! fanout, publish + play, soak and relay-chain runs, and the one-line errors for a bad URL,
//! a refused connection and an unknown stream. Each run lasts a few seconds.
//!
//! The server binary is `RELAYCAST_BIN` or `relaycast` next to the loadgen binary (built by
//! `cargo build --workspace`, as scripts/test does first).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_relaycast-loadgen");

/// A `relaycast` process on ephemeral loopback ports.
struct Server {
    child: Child,
    ws: String,
    rest: String,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with `extra` flags as well.
    fn start_with(extra: &[&str]) -> Server {
        let bin = server_binary();
        let mut child = Command::new(&bin)
            .args(extra)
            .args([
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
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready = line
            .trim()
            .strip_prefix("relaycast ready ")
            .unwrap_or_else(|| panic!("relaycast did not start: {line:?}"));
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .unwrap()
                .to_owned()
        };
        Server {
            ws: format!("ws://{}/", field("ws=")),
            rest: format!("http://{}", field("rest=")),
            child,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("RELAYCAST_BIN") {
        return PathBuf::from(bin);
    }
    let bin = PathBuf::from(LOADGEN).with_file_name("relaycast");
    assert!(
        bin.exists(),
        "{} is missing: build the server first (cargo build -p relaycast) or set RELAYCAST_BIN",
        bin.display()
    );
    bin
}

/// Starts the loadgen in the background, its output piped.
fn spawn(args: &[&str]) -> Child {
    Command::new(LOADGEN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relaycast-loadgen")
}

/// A 4-player fan-out of a light stream for `duration`, in the background: the window opens
/// about 2.5 s in (joins, 1 s warm-up, 1 s for packets in flight).
fn spawn_fanout(server: &Server, duration: &str) -> Child {
    spawn(&[
        "fanout",
        "--server",
        &server.ws,
        "--players",
        "4",
        "--ramp",
        "20/s",
        "--warmup",
        "1s",
        "--duration",
        duration,
        "--bitrate",
        "300k",
        "--json",
    ])
}

/// Waits for a background run, expects exit `code`, and parses its JSON summary; also its
/// stderr.
fn finished(run: Child, code: i32) -> (Value, String) {
    let out = run.wait_with_output_timeout();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (summary, stderr)
}

fn loadgen(args: &[&str]) -> Output {
    spawn(args).wait_with_output_timeout()
}

/// `relay-chain` from `a` through `b` (`mode`: pull or push): 3 players on `a`, 2 on `b`.
fn spawn_relay_chain(a: &Server, b: &Server, mode: &str, bitrate: &str, duration: &str) -> Child {
    spawn(&[
        "relay-chain",
        "--server",
        &a.ws,
        "--rest",
        &a.rest,
        "--hop",
        &b.ws,
        "--hop-rest",
        &b.rest,
        "--mode",
        mode,
        "--players",
        "3",
        "--hop-players",
        "2",
        "--bitrate",
        bitrate,
        "--warmup",
        "1s",
        "--duration",
        duration,
        "--json",
    ])
}

/// Runs the loadgen, expects success, and parses its JSON summary.
fn summary(args: &[&str]) -> Value {
    finished(spawn(args), 0).0
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v:#}"))
}

/// The error path: non-zero exit, one line on stderr naming the problem.
fn fails(args: &[&str], code: i32, needle: &str) {
    let out = loadgen(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("relaycast-loadgen: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    assert!(out.stdout.is_empty(), "no summary on failure");
}

#[test]
fn fanout_prints_the_summary() {
    let server = Server::start();
    let pid = server.pid();
    let s = summary(&[
        "fanout",
        "--server",
        &server.ws,
        "--rest",
        &server.rest,
        "--players",
        "6",
        "--ramp",
        "20/s",
        "--warmup",
        "1s",
        "--duration",
        "3s",
        "--server-pid",
        &pid,
        "--cores",
        "2",
        "--json",
    ]);
    assert_eq!(s["command"], "fanout");
    assert_eq!(s["players"], 6);
    assert_eq!(s["connected"], 6, "{s:#}");
    assert_eq!(f(&s, &["failed", "count"]), 0.0);
    assert!(f(&s, &["packets_sent"]) > 100.0, "{s:#}");
    // Six players each receive what the publisher sent during the window.
    let received = f(&s, &["packets_received"]);
    assert!(received > 5.0 * f(&s, &["packets_sent"]), "{s:#}");
    assert!(f(&s, &["loss_pct"]) < 1.0, "{s:#}");
    assert_eq!(f(&s, &["stalled"]), 0.0);
    // Reordering and duplicates are counted (on loopback, through one core per stream, a
    // handful at most).
    for key in ["packets_reordered", "packets_duplicated"] {
        assert!(f(&s, &[key]) < 0.01 * received, "{key}: {s:#}");
    }
    for q in ["p50", "p95", "p99", "max"] {
        assert!(f(&s, &["latency_ms", q]) > 0.0, "latency {q} in {s:#}");
    }
    assert!(f(&s, &["latency_ms", "p50"]) <= f(&s, &["latency_ms", "p99"]));
    assert!(f(&s, &["join_ms", "p50"]) > 0.0);
    assert!(f(&s, &["join_ms", "p99"]) < 15_000.0);
    // --server-pid and --rest: the server's cost, per packet it sent.
    assert!(f(&s, &["cpu_us_per_forwarded_packet"]) > 0.0, "{s:#}");
    assert!(f(&s, &["rss_mb"]) > 1.0);
    assert!(f(&s, &["server_counters", "packets_out"]) >= received);
    assert_eq!(
        f(&s, &["forwarded_packets"]),
        f(&s, &["server_counters", "packets_out"])
    );
}

#[test]
fn publish_and_play_in_two_processes() {
    let server = Server::start();
    let stream = format!("pp-{}", std::process::id());
    let publisher = spawn(&[
        "publish",
        "--server",
        &server.ws,
        "--stream",
        &stream,
        "--bitrate",
        "500k",
        "--warmup",
        "0s",
        "--duration",
        "8s",
        "--json",
    ]);

    // Wait for the stream to exist, then play it. These players wait on each socket
    // (`--read-sweep 0`); every other test here reads in the default 1 ms sweep.
    let mut played = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        let out = loadgen(&[
            "play",
            "--server",
            &server.ws,
            "--stream",
            &stream,
            "--players",
            "3",
            "--warmup",
            "1s",
            "--duration",
            "2s",
            "--read-sweep",
            "0",
            "--json",
        ]);
        if out.status.success() {
            played = Some(serde_json::from_slice::<Value>(&out.stdout).unwrap());
            break;
        }
    }
    let s = played.expect("the published stream never became playable");
    assert_eq!(s["command"], "play");
    assert_eq!(s["connected"], 3, "{s:#}");
    assert!(
        s["packets_sent"].is_null(),
        "the publisher is in another process"
    );
    assert!(f(&s, &["packets_received"]) > 50.0, "{s:#}");
    assert!(f(&s, &["loss_pct"]) < 1.0, "{s:#}");
    assert!(f(&s, &["latency_ms", "p99"]) > 0.0);

    let (p, _) = finished(publisher, 0);
    assert_eq!(p["command"], "publish");
    assert_eq!(p["connected"], 1);
    assert!(f(&p, &["packets_sent"]) > 100.0, "{p:#}");
}

#[test]
fn soak_replaces_players() {
    let server = Server::start();
    let s = summary(&[
        "soak",
        "--server",
        &server.ws,
        "--players",
        "4",
        "--churn",
        "3/s",
        "--warmup",
        "1s",
        "--duration",
        "3s",
        "--bitrate",
        "300k",
        "--json",
    ]);
    assert_eq!(s["command"], "soak");
    assert!(f(&s, &["churn", "left"]) >= 5.0, "{s:#}");
    assert!(f(&s, &["churn", "joined"]) >= 4.0, "{s:#}");
    assert_eq!(f(&s, &["failed", "count"]), 0.0, "{s:#}");
    assert!(f(&s, &["packets_received"]) > 100.0);
    assert!(f(&s, &["loss_pct"]) < 1.0, "{s:#}");
}

#[test]
fn relay_chain_measures_each_hop() {
    let (a, b) = (Server::start(), Server::start());
    for mode in ["pull", "push"] {
        let s = finished(spawn_relay_chain(&a, &b, mode, "500k", "3s"), 0).0;
        assert_eq!(s["command"], "relay-chain");
        assert_eq!(s["connected"], 3, "{mode}: {s:#}");
        let hops = s["hops"].as_array().expect("hops");
        assert_eq!(hops.len(), 2, "{mode}: {s:#}");
        assert_eq!(hops[0]["connected"], 2);
        for hop in hops {
            // Every player of the hop received media in the window: one that received
            // nothing shows as at least 33% loss (a third of a 3-player hop). The bound is
            // not tighter because a busy CI machine can stall a process for a fraction of
            // this 3 s window; delivery quality through a hop is checked in tests/relay.rs.
            let loss = f(hop, &["loss_pct"]);
            assert!(loss < 25.0, "{mode}: {loss}% loss: {s:#}");
            assert!(f(hop, &["packets_received"]) > 0.0, "{mode}: {s:#}");
            assert!(f(hop, &["latency_ms", "p50"]) > 0.0, "{mode}: {s:#}");
        }
        assert!(hops[1]["added_ms"]["p99"].is_number(), "{mode}: {s:#}");
    }
}

#[test]
fn a_server_that_dies_mid_run_shows_as_dropped_players_and_loss() {
    let mut server = Server::start();
    let run = spawn_fanout(&server, "8s");
    // The publisher's figure that closes the window is read about 10 s in: the server is
    // gone for more than half of the window.
    std::thread::sleep(Duration::from_secs(5));
    server.child.kill().unwrap();
    let _ = server.child.wait();
    let (s, stderr) = finished(run, 0);
    // Every player lost its session, and what the publisher sent after that counts as lost:
    // the players' sequences stop without a gap, so only the publisher's figure shows it.
    assert_eq!(f(&s, &["dropped", "count"]), 4.0, "{s:#}");
    let reasons = s["dropped"]["reasons"].as_object().unwrap();
    assert!(
        reasons.keys().all(|r| r.starts_with("session closed")),
        "{s:#}"
    );
    assert_eq!(s["connected"], 0, "{s:#}");
    assert!(f(&s, &["packets_received"]) > 0.0, "{s:#}");
    let loss = f(&s, &["loss_pct"]);
    assert!(loss > 30.0, "{loss}% loss: {s:#}");
    // The publisher's session ended too, which the summary's player figures do not say.
    assert!(
        stderr.contains("the server dropped the publisher"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_relay_ended_mid_run_shows_on_its_hop() {
    let (a, b) = (Server::start(), Server::start());
    let run = spawn_relay_chain(&a, &b, "pull", "300k", "8s");
    // The relay is up within a second or two and the window opens about 3 s in; its
    // closing figure is read about 10 s in. End the relay (B pulls from A) at 6 s.
    std::thread::sleep(Duration::from_secs(6));
    let reply = post(
        &b.rest,
        "/rest-api/pull/terminate",
        &format!(r#"{{"uri":"{}"}}"#, a.ws),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let (s, _) = finished(run, 0);
    let hops = s["hops"].as_array().expect("hops");
    // The origin's players are untouched.
    assert_eq!(hops[0]["connected"], 2, "{s:#}");
    assert!(f(&hops[0], &["loss_pct"]) < 25.0, "{s:#}");
    // The relayed stream ended: B stopped its players, whose figures still count (their
    // peers are gone, but their last reports are kept) and who missed the rest.
    assert_eq!(hops[1]["connected"], 0, "{s:#}");
    assert_eq!(s["connected"], 0, "{s:#}");
    assert_eq!(f(&s, &["dropped", "count"]), 3.0, "{s:#}");
    let reasons = s["dropped"]["reasons"].as_object().unwrap();
    assert!(
        reasons.keys().all(|r| r.starts_with("stream STOPPED")),
        "{s:#}"
    );
    assert!(f(&hops[1], &["packets_received"]) > 0.0, "{s:#}");
    assert!(f(&hops[1], &["loss_pct"]) > 20.0, "{s:#}");
}

/// A POST with a JSON body on plain HTTP/1.1; the whole response as text.
fn post(base: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let host = base.strip_prefix("http://").unwrap();
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn ctrl_c_closes_the_window_early_with_a_summary() {
    let server = Server::start();
    let run = spawn_fanout(&server, "60s");
    std::thread::sleep(Duration::from_secs(5));
    let kill = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", run.id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let (s, stderr) = finished(run, 130);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(s["interrupted"], true, "{s:#}");
    let window = f(&s, &["duration_s"]);
    assert!(window > 1.0 && window < 10.0, "{s:#}");
    assert_eq!(s["connected"], 4, "{s:#}");
    assert!(f(&s, &["packets_received"]) > 100.0, "{s:#}");
    // Closing early still leaves the packets in flight time to arrive: no false loss.
    assert!(f(&s, &["loss_pct"]) < 1.0, "{s:#}");
}

#[test]
fn a_bad_url_is_a_usage_error() {
    fails(
        &[
            "fanout",
            "--server",
            "http://127.0.0.1:1/",
            "--duration",
            "1s",
        ],
        2,
        "bad server URL",
    );
    fails(&["play", "--server", "not a url"], 2, "bad server URL");
}

#[test]
fn a_refused_connection_says_so() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    fails(
        &["fanout", "--server", &url, "--duration", "1s"],
        3,
        "cannot connect to",
    );
}

#[test]
fn an_unknown_stream_says_so() {
    let server = Server::start();
    fails(
        &[
            "play",
            "--server",
            &server.ws,
            "--stream",
            "no-such-stream",
            "--duration",
            "1s",
        ],
        3,
        "Stream not found",
    );
}

/// A server that requires its shared secret in `connection`'s `custom.token`: the loadgen's
/// `--custom` carries it.
#[test]
fn custom_carries_the_token_a_server_requires() {
    let config = std::env::temp_dir().join(format!("loadgen-token-{}.toml", std::process::id()));
    std::fs::write(&config, "[auth]\ntoken = \"s3cret\"\n").unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()]);
    let base = [
        "fanout",
        "--server",
        &server.ws,
        "--players",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--bitrate",
        "100k",
        "--fps",
        "10",
        "--json",
    ];
    fails(&base, 3, "Restricted access");
    let mut with_token = base.to_vec();
    with_token.extend(["--custom", r#"{"token":"s3cret"}"#]);
    let s = summary(&with_token);
    assert_eq!(
        (f(&s, &["connected"]), f(&s, &["failed", "count"])),
        (2.0, 0.0)
    );
    // A bad --custom is refused by the argument parser, naming the option.
    for (custom, reason) in [("[1]", "must be a JSON object"), ("{nope", "not JSON")] {
        let out = loadgen(&["fanout", "--custom", custom]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--custom") && stderr.contains(reason),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(config);
}

#[test]
fn a_wrong_server_pid_is_a_usage_error() {
    fails(
        &["fanout", "--server-pid", "999999999", "--duration", "1s"],
        2,
        "--server-pid",
    );
}

trait WaitTimeout {
    fn wait_with_output_timeout(self) -> Output;
}

impl WaitTimeout for Child {
    /// A hung run must not hang the suite: after 60 s it is killed (and fails its checks).
    fn wait_with_output_timeout(mut self) -> Output {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_with_output().unwrap()
    }
}
