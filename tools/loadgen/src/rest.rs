//! A small REST client for the server's `/rest-api/...` methods: relay set-up
//! (`pull/push`, `pull/pull`) and `server/info`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("bad REST URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach REST at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("REST {path} on {url} timed out after {limit:?}")]
    Timeout {
        url: String,
        path: String,
        limit: Duration,
    },
    #[error("REST {path} on {url}: {reason}")]
    Http {
        url: String,
        path: String,
        reason: String,
    },
}

/// A REST endpoint (`http://host:port`).
#[derive(Clone, Debug)]
pub struct Rest {
    url: String,
    authority: String,
    timeout: Duration,
}

impl Rest {
    pub fn new(url: &str) -> Result<Rest, RestError> {
        let bad = |reason: &str| RestError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(bad("the scheme must be http"));
        }
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        Ok(Rest {
            url: url.trim_end_matches('/').to_owned(),
            authority: format!("{host}:{port}"),
            timeout: Duration::from_secs(10),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` to `path`; returns the status and the body (JSON, or a JSON string).
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), RestError> {
        tokio::time::timeout(self.timeout, self.call("POST", path, body.to_string()))
            .await
            .map_err(|_| RestError::Timeout {
                url: self.url.clone(),
                path: path.to_owned(),
                limit: self.timeout,
            })?
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), RestError> {
        tokio::time::timeout(self.timeout, self.call("GET", path, String::new()))
            .await
            .map_err(|_| RestError::Timeout {
                url: self.url.clone(),
                path: path.to_owned(),
                limit: self.timeout,
            })?
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: String,
    ) -> Result<(u16, Value), RestError> {
        let http = |reason: String| RestError::Http {
            url: self.url.clone(),
            path: path.to_owned(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| RestError::Connect {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}

/// The server's data-plane counters from its `/metrics` page, summed over cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoreCounters {
    /// UDP datagrams sent (media, RTCP, STUN, DTLS).
    pub packets_out: u64,
    /// UDP datagrams received.
    pub packets_in: u64,
    /// Media packets written to subscribers.
    pub forwarded: u64,
    /// Datagrams dropped, every reason.
    pub dropped: u64,
    /// Messages handed to `sendmmsg` (a UDP GSO message carries several datagrams).
    #[serde(default)]
    pub messages_out: u64,
    /// Socket-reader wake-ups that received datagrams.
    #[serde(default)]
    pub wakeups: u64,
}

impl CoreCounters {
    /// Parses the Prometheus text format: `relaycast_core_packets_total{core="0",
    /// direction="out"} 123` and friends. `None` if the page has no core counters.
    pub fn parse(text: &str) -> Option<CoreCounters> {
        let mut c = CoreCounters::default();
        let mut seen = false;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let value = value as u64;
            let name = series.split('{').next().unwrap_or(series);
            let out = series.contains("direction=\"out\"");
            match name.trim_end_matches("_total") {
                "relaycast_core_packets" => {
                    seen = true;
                    if out {
                        c.packets_out += value;
                    } else {
                        c.packets_in += value;
                    }
                }
                "relaycast_core_forwarded_packets" => c.forwarded += value,
                "relaycast_core_dropped_packets" => c.dropped += value,
                "relaycast_core_send_messages" => c.messages_out += value,
                "relaycast_core_receive_wakeups" => c.wakeups += value,
                _ => {}
            }
        }
        seen.then_some(c)
    }

    /// What happened between two readings.
    pub fn since(&self, before: &CoreCounters) -> CoreCounters {
        CoreCounters {
            packets_out: self.packets_out.saturating_sub(before.packets_out),
            packets_in: self.packets_in.saturating_sub(before.packets_in),
            forwarded: self.forwarded.saturating_sub(before.forwarded),
            dropped: self.dropped.saturating_sub(before.dropped),
            messages_out: self.messages_out.saturating_sub(before.messages_out),
            wakeups: self.wakeups.saturating_sub(before.wakeups),
        }
    }
}

impl Rest {
    /// The server's core counters now (`None` if `/metrics` has none or is unreachable).
    pub async fn core_counters(&self) -> Option<CoreCounters> {
        match self.get("/metrics").await {
            Ok((200, Value::String(text))) => CoreCounters::parse(&text),
            Ok((status, _)) => {
                tracing::debug!(status, "no /metrics page");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read /metrics");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_core_counters() {
        let text = "# HELP relaycast_core_packets UDP datagrams\n\
                    # TYPE relaycast_core_packets counter\n\
                    relaycast_core_packets_total{core=\"0\",direction=\"in\"} 10\n\
                    relaycast_core_packets_total{core=\"0\",direction=\"out\"} 100\n\
                    relaycast_core_packets_total{core=\"1\",direction=\"out\"} 50\n\
                    relaycast_core_forwarded_packets_total{core=\"0\"} 120\n\
                    relaycast_core_dropped_packets_total{core=\"0\",reason=\"malformed\"} 2\n\
                    relaycast_core_send_messages_total{core=\"0\"} 40\n\
                    relaycast_core_send_messages_total{core=\"1\"} 50\n\
                    relaycast_core_receive_wakeups_total{core=\"0\"} 9\n\
                    relaycast_rest_requests_total{status=\"200\"} 7\n";
        let c = CoreCounters::parse(text).unwrap();
        assert_eq!(
            c,
            CoreCounters {
                packets_out: 150,
                packets_in: 10,
                forwarded: 120,
                dropped: 2,
                messages_out: 90,
                wakeups: 9,
            }
        );
        assert_eq!(CoreCounters::parse("# nothing\n"), None);
    }

    #[test]
    fn urls() {
        assert!(Rest::new("http://127.0.0.1:8081").is_ok());
        assert!(Rest::new("ws://127.0.0.1:8081").is_err());
    }
}
