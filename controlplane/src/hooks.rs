//! The data hook: a client's `sendData` goes to the operator's backend as WCS's `OnDataEvent`
//! REST hook does. The server posts `{nodeId, appKey, sessionId, operationId, payload}` as
//! JSON to the configured URL (`http://` or `https://`); a 2xx answer is `ACCEPTED`, anything
//! else (another status, a refused connection, no answer within the timeout) is `FAILED`
//! with the reason. Without a URL every `sendData` is accepted and goes no further, as with
//! WCS's default application. Each post runs as its own task on the control-plane thread; at
//! most [`MAX_IN_FLIGHT`] at once, beyond which a `sendData` fails at once.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::protocol::{self, AppData};
use crate::registry::ConnId;
use crate::tls::{ClientTls, TlsError};

/// Posts in flight at once; a `sendData` beyond them fails with "Data hook busy".
pub const MAX_IN_FLIGHT: usize = 64;

/// Where and how the data hook posts.
#[derive(Clone, Debug)]
pub struct HookConfig {
    /// The URL `sendData` is posted to (`[hooks] data_url`); `None`: accepted, not posted.
    pub data_url: Option<String>,
    /// How long a post may take, connection included.
    pub timeout: Duration,
    /// How an `https://` hook's certificate is checked.
    pub tls: ClientTls,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            data_url: None,
            timeout: Duration::from_secs(5),
            tls: ClientTls::system(),
        }
    }
}

/// A bad hook configuration, found at start.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hooks.data_url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The finished answer to one `sendData`: the connection and its `DataStatusEvent` frame.
pub type HookAnswer = (ConnId, String, bool);

/// The data hook's target, checked once.
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    authority: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// Posts clients' `sendData` to the backend and hands the answers back to the hub.
pub struct DataHook {
    target: Option<Rc<Target>>,
    timeout: Duration,
    in_flight: Rc<Cell<usize>>,
    answers: mpsc::UnboundedSender<HookAnswer>,
}

impl DataHook {
    /// The hook for `config`, and the receiver of the answers its posts produce.
    pub fn new(
        config: &HookConfig,
    ) -> Result<(DataHook, mpsc::UnboundedReceiver<HookAnswer>), HookError> {
        let target = match &config.data_url {
            Some(url) => Some(Rc::new(target(url, &config.tls)?)),
            None => None,
        };
        let (answers, rx) = mpsc::unbounded_channel();
        let hook = DataHook {
            target,
            timeout: config.timeout,
            in_flight: Rc::new(Cell::new(0)),
            answers,
        };
        Ok((hook, rx))
    }

    /// Answers `conn`'s `sendData` of `data`: at once when no hook is configured or too many
    /// posts are in flight, otherwise when the backend has answered. The answer arrives on
    /// the receiver [`DataHook::new`] returned.
    pub fn submit(&self, conn: ConnId, data: AppData) {
        let operation = data.operation_id.clone();
        let session = data.session_id.clone();
        let body = self
            .target
            .as_ref()
            .map(|_| serde_json::to_string(&data).unwrap_or_default());
        let answer = move |accepted: bool, info: Option<&str>| {
            (
                conn,
                protocol::data_status(&data.operation_id, accepted, info),
                accepted,
            )
        };
        let (Some(target), Some(body)) = (&self.target, body) else {
            tracing::debug!(%session, %operation, "sendData accepted (no data hook configured)");
            let _ = self.answers.send(answer(true, None));
            return;
        };
        if self.in_flight.get() >= MAX_IN_FLIGHT {
            tracing::warn!(%session, limit = MAX_IN_FLIGHT,
                "sendData failed: too many data hook posts in flight");
            let _ = self.answers.send(answer(false, Some("Data hook busy")));
            return;
        }
        let target = Rc::clone(target);
        let in_flight = Rc::clone(&self.in_flight);
        let answers = self.answers.clone();
        let timeout = self.timeout;
        in_flight.set(in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let result = match tokio::time::timeout(timeout, post(&target, body)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
                Ok(Ok(status)) => Err(format!("Data hook answered {status}")),
                Ok(Err(reason)) => Err(format!("Data hook failed: {reason}")),
                Err(_) => Err(format!(
                    "Data hook did not answer within {} ms",
                    timeout.as_millis()
                )),
            };
            in_flight.set(in_flight.get() - 1);
            let sent = match &result {
                Ok(()) => {
                    tracing::debug!(%session, %operation, "sendData accepted by the data hook");
                    answer(true, None)
                }
                Err(info) => {
                    tracing::warn!(%session, %operation, url = %target.uri, %info,
                        "sendData failed");
                    answer(false, Some(info))
                }
            };
            let _ = answers.send(sent);
        });
    }
}

/// Checks a hook URL: `http://` or `https://` with a host.
fn target(url: &str, tls: &ClientTls) -> Result<Target, HookError> {
    let bad = |reason: &str| HookError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let secure = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(bad("the scheme must be http:// or https://"));
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&format!("not a URL: {e}")))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let authority = HeaderValue::from_str(authority).map_err(|e| bad(&e.to_string()))?;
    let tls = if secure {
        let name = ServerName::try_from(host.clone()).map_err(|e| bad(&e.to_string()))?;
        Some((TlsConnector::from(tls.client_config()?), name))
    } else {
        None
    };
    Ok(Target {
        uri,
        host,
        port,
        authority,
        tls,
    })
}

/// One POST of `body` to the target: the answer's HTTP status.
async fn post(target: &Target, body: String) -> Result<u16, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let path = target
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let request = Request::post(path)
        .header(HOST, target.authority.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match &target.tls {
        None => exchange(tcp, request).await,
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(tls, request).await
        }
    }
}

async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_urls_are_checked_at_start() {
        let tls = ClientTls::system();
        for (url, reason) in [
            (
                "ftp://backend/OnDataEvent",
                "the scheme must be http:// or https://",
            ),
            (
                "backend/OnDataEvent",
                "the scheme must be http:// or https://",
            ),
            ("http:///OnDataEvent", ""),
        ] {
            let error = target(url, &tls).err().expect("refused").to_string();
            assert!(
                error.starts_with(&format!("hooks.data_url {url:?}")),
                "{error}"
            );
            assert!(error.contains(reason), "{error}");
        }
        let plain = target("http://127.0.0.1:8081/rest/my_api/OnDataEvent", &tls).unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 8081));
        assert_eq!(plain.authority, "127.0.0.1:8081");
        assert!(plain.tls.is_none());
        let secure = target("https://[::1]/hook", &ClientTls::insecure()).unwrap();
        assert_eq!((secure.host.as_str(), secure.port), ("::1", 443));
        assert!(secure.tls.is_some());
    }
}
