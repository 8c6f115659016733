//! The Prometheus page (`/metrics`, text format, prometheus-client). Events the control plane
//! sees as they happen (signalling errors, REST requests) are counted in [`Metrics`]; the
//! rest is read at scrape time: the registry's counts and stats, the relays' states, and each
//! data-plane core's counters (relaxed atomics written only by their core).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::hub::Hub;
use crate::relay::RelayStatus;

type Labels = Vec<(&'static str, String)>;

/// Counters of control-plane events, kept for the server's life.
#[derive(Clone, Debug)]
pub struct Metrics {
    signalling_errors: Family<Labels, Counter>,
    rest_requests: Family<Labels, Counter>,
    rest_auth_failures: Counter,
    hook_calls: Family<Labels, Counter>,
    hook_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            signalling_errors: Family::default(),
            rest_requests: Family::default(),
            rest_auth_failures: Counter::default(),
            hook_calls: Family::default(),
            // 1 ms to 8 s.
            hook_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
        }
    }
}

impl Metrics {
    /// A signalling error of `kind`: `bad_frame`, `unsupported_method`, `binary_frame`,
    /// `oversized_frame`, `rate_limited`, `sessions_per_ip`, `keepalive_timeout`, `tls_handshake`.
    pub fn signalling_error(&self, kind: &'static str) {
        self.signalling_errors
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// A REST request answered with `status`.
    pub fn rest_request(&self, status: u16) {
        self.rest_requests
            .get_or_create(&vec![("status", status.to_string())])
            .inc();
    }

    /// A REST hook the backend answered: its `method`, `result` (`passed`, `refused`,
    /// `failed`) and how long the answer took (the wait for a slot included).
    pub fn hook_call(&self, method: &'static str, result: &'static str, took: Duration) {
        self.hook_calls
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
        self.hook_seconds
            .get_or_create(&vec![("method", method.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// A REST request refused for missing or wrong credentials.
    pub fn rest_auth_failure(&self) {
        self.rest_auth_failures.inc();
    }
}

/// The `/metrics` page for the server's current state.
pub fn render(hub: &Hub) -> String {
    let mut r = Registry::with_prefix("relaycast");
    let m = hub.metrics();
    r.register(
        "signalling_errors",
        "Signalling frames and connections refused or failed, by kind",
        m.signalling_errors.clone(),
    );
    r.register(
        "rest_requests",
        "REST requests answered, by HTTP status",
        m.rest_requests.clone(),
    );
    r.register(
        "rest_auth_failures",
        "REST requests refused with 401",
        m.rest_auth_failures.clone(),
    );
    r.register(
        "hook_calls",
        "REST hooks the backend answered, by method and result (passed, refused, failed)",
        m.hook_calls.clone(),
    );
    r.register(
        "hook_duration_seconds",
        "Time from posting a REST hook to its answer (or failure), by method",
        m.hook_seconds.clone(),
    );

    r.register(
        "signalling_connections",
        "Open WebSocket signalling connections",
        gauge(hub.connection_count()),
    );
    {
        let registry = hub.registry();
        r.register(
            "sessions",
            "Signalling sessions",
            gauge(registry.session_count()),
        );
        r.register(
            "streams",
            "Published streams",
            gauge(registry.stream_count()),
        );
        let (publishers, players) = registry.media_by_kind();
        let media = Family::<Labels, Gauge>::default();
        media
            .get_or_create(&vec![("kind", "publisher".into())])
            .set(publishers as i64);
        media
            .get_or_create(&vec![("kind", "player".into())])
            .set(players as i64);
        r.register(
            "media_sessions",
            "Publisher and player media sessions",
            media,
        );
        let stats = registry.stats();
        r.register(
            "streams_published",
            "Publish requests accepted",
            counter(stats.published),
        );
        r.register(
            "streams_played",
            "Play requests accepted",
            counter(stats.played),
        );
        r.register(
            "requests_refused",
            "publishStream, playStream and connection requests refused, by reason",
            counters_by("kind", &stats.refused),
        );
        let ended = Family::<Labels, Counter>::default();
        for ((status, info), n) in &stats.ended {
            ended
                .get_or_create(&vec![
                    ("status", status.as_str().to_owned()),
                    ("info", (*info).to_owned()),
                ])
                .inc_by(*n);
        }
        r.register(
            "stream_ends",
            "Media sessions ended, by final status and info",
            ended,
        );
        r.register(
            "stream_events",
            "Stream events (mute, unmute, data) of publishers and pull relays passed to players, by type",
            counters_by("type", &stats.stream_events),
        );
        r.register(
            "app_data",
            "Application data: clients' sendData accepted or failed, data sent to clients by REST",
            counters_by("result", &stats.app_data),
        );
    }

    let relays = hub.relays().snapshot();
    let by_status = Family::<Labels, Gauge>::default();
    for status in [
        RelayStatus::New,
        RelayStatus::Pending,
        RelayStatus::Publishing,
        RelayStatus::Playing,
        RelayStatus::Failed,
    ] {
        let n = relays.iter().filter(|r| r.status == status).count();
        by_status
            .get_or_create(&vec![("status", relay_status(status).to_owned())])
            .set(n as i64);
    }
    r.register("relays", "Relays by status", by_status);
    let attempts = Family::<Labels, Gauge>::default();
    for relay in &relays {
        attempts
            .get_or_create(&vec![
                ("relay", relay.local_media_session_id.clone()),
                ("uri", relay.uri.clone()),
                ("stream", relay.local_stream_name.clone()),
                ("status", relay_status(relay.status).to_owned()),
            ])
            .set(i64::from(relay.attempts));
    }
    r.register(
        "relay_attempts",
        "Connection attempts of each relay so far",
        attempts,
    );
    // The link of each relay that is up: RTT, loss and bitrate, as its peer last measured.
    let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let loss = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let bitrate = Family::<Labels, Gauge>::default();
    for relay in &relays {
        let Some(link) = relay.link else { continue };
        let labels = vec![
            ("relay", relay.local_media_session_id.clone()),
            ("uri", relay.uri.clone()),
            ("stream", relay.local_stream_name.clone()),
        ];
        if let Some(ms) = link.rtt_ms {
            rtt.get_or_create(&labels).set(ms / 1e3);
        }
        if let Some(pct) = link.loss_pct {
            loss.get_or_create(&labels).set(pct / 1e2);
        }
        for (direction, bits) in [("in", link.bitrate_in), ("out", link.bitrate_out)] {
            let mut labels = labels.clone();
            labels.push(("direction", direction.to_owned()));
            bitrate
                .get_or_create(&labels)
                .set(i64::try_from(bits).unwrap_or(i64::MAX));
        }
    }
    r.register(
        "relay_rtt_seconds",
        "Round-trip time to the remote server of each relay that is up (RTCP)",
        rtt,
    );
    r.register(
        "relay_loss_ratio",
        "Fraction of packets lost on each relay's link (RTCP receiver reports)",
        loss,
    );
    r.register(
        "relay_bitrate_bits_per_second",
        "Bits per second on each relay's link, received (in) and sent (out)",
        bitrate,
    );

    let peers = Family::<Labels, Gauge>::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let forwarded = Family::<Labels, Counter>::default();
    let dropped = Family::<Labels, Counter>::default();
    let keyframes = Family::<Labels, Counter>::default();
    let player_keyframes = Family::<Labels, Counter>::default();
    let nacks = Family::<Labels, Counter>::default();
    let resent = Family::<Labels, Counter>::default();
    let padded = Family::<Labels, Counter>::default();
    let messages = Family::<Labels, Counter>::default();
    let wakeups = Family::<Labels, Counter>::default();
    for (n, c) in hub.data().counters().iter().enumerate() {
        let core = n.to_string();
        let per_core = || vec![("core", core.clone())];
        let with = |k: &'static str, v: &str| vec![("core", core.clone()), (k, v.to_owned())];
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let add = |family: &Family<Labels, Counter>, labels: Labels, value| {
            family.get_or_create(&labels).inc_by(load(value));
        };
        // Read before the datagram counts, which a core bumps first: never more messages
        // than datagrams out, nor wake-ups than datagrams in, on one page.
        add(&messages, per_core(), &c.tx_messages);
        add(&wakeups, per_core(), &c.rx_wakeups);
        peers.get_or_create(&per_core()).set(load(&c.peers) as i64);
        for (family, inbound, outbound) in [
            (&packets, &c.rx_packets, &c.tx_packets),
            (&bytes, &c.rx_bytes, &c.tx_bytes),
            (&nacks, &c.nacks_received, &c.nacks_sent),
        ] {
            add(family, with("direction", "in"), inbound);
            add(family, with("direction", "out"), outbound);
        }
        add(&forwarded, per_core(), &c.forwarded);
        for (reason, value) in [
            ("unknown_source", &c.dropped_unknown_source),
            ("malformed", &c.dropped_malformed),
            ("send_error", &c.dropped_send_error),
            ("ring_full", &c.dropped_ring_full),
        ] {
            add(&dropped, with("reason", reason), value);
        }
        add(&keyframes, per_core(), &c.keyframe_requests);
        add(&player_keyframes, per_core(), &c.player_keyframe_requests);
        add(&resent, per_core(), &c.resent);
        add(&padded, per_core(), &c.tx_padded);
    }
    r.register("core_peers", "Peer connections on each core", peers);
    r.register(
        "core_packets",
        "UDP datagrams received and sent by each core",
        packets,
    );
    r.register(
        "core_bytes",
        "UDP payload bytes received and sent by each core",
        bytes,
    );
    r.register(
        "core_send_messages",
        "Messages handed to sendmmsg by each core: one per datagram, or one per UDP GSO run",
        messages,
    );
    r.register(
        "core_receive_wakeups",
        "Wake-ups of each core's socket readers that received datagrams",
        wakeups,
    );
    r.register(
        "core_forwarded_packets",
        "Media packets written to subscribers by each core",
        forwarded,
    );
    r.register(
        "core_dropped_packets",
        "Datagrams dropped by each core, by reason",
        dropped,
    );
    r.register(
        "core_keyframe_requests",
        "Keyframe requests (PLI) sent to stream sources by each core, after coalescing",
        keyframes,
    );
    r.register(
        "core_player_keyframe_requests",
        "Keyframe requests (PLI/FIR) received from players on each core",
        player_keyframes,
    );
    r.register(
        "core_resent_packets",
        "NACKed packets each core resent to players from its history (direct egress path)",
        resent,
    );
    r.register(
        "core_padded_packets",
        "Datagrams to players given RTP padding, so that a run of one player's packets of near \
         sizes goes as one UDP GSO message (direct egress path)",
        padded,
    );
    r.register(
        "core_nacks",
        "Packets NACKed: by players to this core (in), by this core to publishers (out)",
        nacks,
    );
    r.register(
        "stopping",
        "1 while the server shuts down",
        gauge(usize::from(hub.is_stopping())),
    );

    let mut text = String::new();
    if let Err(e) = encode(&mut text, &r) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    text
}

fn gauge(value: usize) -> Gauge {
    let g = Gauge::default();
    g.set(value as i64);
    g
}

/// A counter family with one label, `label`, from counts kept by that label's value.
fn counters_by(
    label: &'static str,
    counts: &std::collections::BTreeMap<&'static str, u64>,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (value, n) in counts {
        family
            .get_or_create(&vec![(label, (*value).to_owned())])
            .inc_by(*n);
    }
    family
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn relay_status(status: RelayStatus) -> &'static str {
    match status {
        RelayStatus::New => "NEW",
        RelayStatus::Pending => "PENDING",
        RelayStatus::Publishing => "PUBLISHING",
        RelayStatus::Playing => "PLAYING",
        RelayStatus::Failed => "FAILED",
    }
}
