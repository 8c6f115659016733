//! The REST server (hyper, HTTP/1.1) on the control-plane thread: WCS's `/rest-api/...`
//! methods, `/health`, `/rest-api/server/info`, and the embedded web apps. Bodies are JSON;
//! methods without a body also answer GET. Every error is a JSON `{error, status}`.
//! `/metrics` is the Prometheus page; `/health` (and `/health/ready`) answer 503 once the
//! server is stopping, `/health/live` answers 200 while it runs. With credentials configured,
//! `/rest-api/...` answers 401 without them. The same service runs over TLS (`https://`) when
//! an acceptor is given.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{AuthError, RestAuth};
use crate::hub::Hub;
use crate::listen::Listener;
use crate::protocol::{MediaSessionId, SessionId, StreamName, StreamStatus};
use crate::registry::{RestReply, RestRequest, error_reply};

/// How the REST server treats requests.
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Credentials `/rest-api/...` requires (none by default).
    pub auth: RestAuth,
    /// `/metrics` requires the same credentials.
    pub metrics_auth: bool,
    /// A client must finish the TLS handshake within this time.
    pub handshake_timeout: Duration,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            max_body: 64 << 10,
            auth: RestAuth::default(),
            metrics_auth: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections on every listener (plain `http://`, or `https://` with an acceptor)
/// until the task is aborted.
pub async fn serve(
    hub: Rc<Hub>,
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    config: RestConfig,
) {
    let loops = listeners
        .into_iter()
        .map(|(listener, tls)| accept_loop(Rc::clone(&hub), listener, tls, config.clone()));
    futures_util::future::join_all(loops).await;
}

async fn accept_loop(
    hub: Rc<Hub>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: RestConfig,
) {
    let mut listener = Listener::new(listener, "REST");
    loop {
        let (stream, remote) = listener.accept().await;
        let hub = Rc::clone(&hub);
        let config = config.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            match tls {
                None => serve_connection(hub, stream, remote, config).await,
                Some(acceptor) => {
                    match tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => serve_connection(hub, stream, remote, config).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed (https)");
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out (https)"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    hub: Rc<Hub>,
    stream: S,
    remote: SocketAddr,
    config: RestConfig,
) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |req| {
        let hub = Rc::clone(&hub);
        let config = config.clone();
        async move { Ok::<_, Infallible>(handle(&hub, req, &config, remote).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%remote, error = %e, "REST connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    hub: &Rc<Hub>,
    req: Request<Incoming>,
    config: &RestConfig,
    remote: SocketAddr,
) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let is_metrics = path == "/metrics";
    if path.starts_with("/rest-api/") || (is_metrics && config.metrics_auth) {
        let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if let Err(e) = config.auth.check(header) {
            let reason = match e {
                AuthError::Missing => "no credentials",
                AuthError::Wrong => "wrong credentials",
            };
            tracing::warn!(%remote, %path, reason, "REST request refused: 401");
            hub.metrics().rest_auth_failure();
            hub.metrics().rest_request(401);
            let mut response = json_reply(error_reply(401, &e.to_string()));
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(config.auth.challenge()),
            );
            return response;
        }
    }
    if is_metrics {
        let mut response = Response::new(Full::new(Bytes::from(crate::metrics::render(hub))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return response;
    }
    if let Some(page) = crate::web::page(&path) {
        if method != Method::GET && method != Method::HEAD {
            return json_reply(error_reply(405, "use GET for pages"));
        }
        let mut response = Response::new(Full::new(Bytes::from_static(page.body)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
        return response;
    }
    if method != Method::GET && method != Method::POST {
        return json_reply(error_reply(
            405,
            "use POST (or GET for methods without a body)",
        ));
    }
    let body = match Limited::new(req.into_body(), config.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let message = if e.is::<http_body_util::LengthLimitError>() {
                format!("request body exceeds {} bytes", config.max_body)
            } else {
                format!("could not read the request body: {e}")
            };
            tracing::info!(%path, %message, "REST request refused");
            return json_reply(error_reply(413, &message));
        }
    };
    let reply = if path.starts_with("/rest-api/pull/") {
        crate::relay::rest(hub, &path, &body).await
    } else {
        route(hub, &path, &body)
    };
    if path.starts_with("/rest-api/") {
        hub.metrics().rest_request(reply.status);
    }
    if reply.status >= 400 {
        tracing::info!(%path, status = reply.status, body = %reply.body, "REST error");
    } else {
        tracing::debug!(%path, status = reply.status, "REST request");
    }
    json_reply(reply)
}

fn route(hub: &Rc<Hub>, path: &str, body: &[u8]) -> RestReply {
    let path = path.trim_end_matches('/');
    match path {
        "/health" | "/health/ready" => {
            if hub.is_stopping() {
                error_reply(503, "stopping")
            } else {
                RestReply {
                    status: 200,
                    body: json!({ "status": "ok" }),
                }
            }
        }
        "/health/live" => RestReply {
            status: 200,
            body: json!({ "status": "ok" }),
        },
        "/rest-api/server/info" => {
            let facts = hub.facts();
            let mut info = json!({
                "version": facts.version,
                "wsPort": facts.ws_addr.map(|a| a.port()),
                "restPort": facts.rest_addr.map(|a| a.port()),
                "wssPort": facts.wss_addr.map(|a| a.port()),
                "httpsPort": facts.https_addr.map(|a| a.port()),
                "mediaPorts": facts.media_addrs.iter().map(|a| a.port()).collect::<Vec<_>>(),
                "cores": facts.media_addrs.len(),
                "connections": hub.connection_count(),
            });
            if let (Value::Object(info), Value::Object(counts)) = (&mut info, hub.counts()) {
                info.extend(counts);
            }
            RestReply {
                status: 200,
                body: info,
            }
        }
        _ => match parse_request(path, body) {
            Ok(request) => hub.rest(request),
            Err(reply) => reply,
        },
    }
}

/// Parses a call of the registry's REST methods (`/rest-api/stream/...`,
/// `/rest-api/connection/...`) from its path and JSON body: the request, or the error answer
/// (400 for a bad body, 404 for an unknown method). Never panics, whatever the input.
pub fn parse_request(path: &str, body: &[u8]) -> Result<RestRequest, RestReply> {
    let path = path.trim_end_matches('/');
    match path {
        "/rest-api/stream/find_all" => Ok(RestRequest::StreamFindAll),
        "/rest-api/stream/find" => {
            let b = parse::<FindBody>(body)?;
            Ok(RestRequest::StreamFind {
                media_session_id: b.media_session_id.map(MediaSessionId),
                name: b.name.map(StreamName),
                published: b.published,
                status: b.status,
            })
        }
        "/rest-api/stream/terminate" => {
            let b = parse::<TerminateBody>(body)?;
            let mut ids: Vec<MediaSessionId> = b
                .media_session_ids
                .unwrap_or_default()
                .into_iter()
                .map(MediaSessionId)
                .collect();
            ids.extend(b.media_session_id.map(MediaSessionId));
            if ids.is_empty() && b.name.is_none() {
                return Err(error_reply(
                    400,
                    "one of mediaSessionId, mediaSessionIds or name is required",
                ));
            }
            Ok(RestRequest::StreamTerminate {
                media_session_ids: ids,
                name: b.name.map(StreamName),
            })
        }
        "/rest-api/connection/find_all" => Ok(RestRequest::ConnectionFindAll),
        "/rest-api/connection/terminate" => {
            let b = parse::<ConnectionBody>(body)?;
            match b.session_id {
                Some(id) if !id.is_empty() => Ok(RestRequest::ConnectionTerminate {
                    session_id: SessionId(id),
                }),
                _ => Err(error_reply(400, "sessionId is required")),
            }
        }
        "/rest-api/data/send" => {
            let b = parse::<DataSendBody>(body)?;
            let session_id = match b.session_id {
                Some(id) if !id.is_empty() => SessionId(id),
                _ => return Err(error_reply(400, "sessionId is required")),
            };
            let Some(payload) = b.payload else {
                return Err(error_reply(400, "payload is required"));
            };
            Ok(RestRequest::DataSend {
                session_id,
                operation_id: b.operation_id.filter(|id| !id.is_empty()),
                payload,
            })
        }
        _ => Err(error_reply(404, &format!("no such method: {path}"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FindBody {
    media_session_id: Option<String>,
    name: Option<String>,
    published: Option<bool>,
    status: Option<StreamStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TerminateBody {
    media_session_id: Option<String>,
    media_session_ids: Option<Vec<String>>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionBody {
    session_id: Option<String>,
}

/// `/rest-api/data/send`, as WCS documents it (`nodeId` and other fields are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataSendBody {
    session_id: Option<String>,
    operation_id: Option<String>,
    payload: Option<Value>,
}

/// Parses a JSON object body; an empty body is an empty object.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RestReply> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| error_reply(400, &format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(error_reply(400, "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| error_reply(400, &format!("bad field: {e}")))
}

fn json_reply(reply: RestReply) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(reply.body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_is_an_empty_object() {
        let b: FindBody = parse(b"  ").unwrap();
        assert!(b.name.is_none() && b.media_session_id.is_none());
    }

    #[test]
    fn malformed_json_and_wrong_types_are_400() {
        let e = parse::<FindBody>(b"{nope").err().unwrap();
        assert_eq!(e.status, 400);
        assert!(e.body["error"].as_str().unwrap().contains("malformed JSON"));
        let e = parse::<FindBody>(br#"{"published":"yes"}"#).err().unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(e.body["status"], 400);
        let e = parse::<FindBody>(b"[1,2]").err().unwrap();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn find_filters_by_status() {
        let found = parse_request(
            "/rest-api/stream/find",
            br#"{"name":"s","status":"PUBLISHING"}"#,
        );
        assert_eq!(
            found,
            Ok(RestRequest::StreamFind {
                media_session_id: None,
                name: Some(StreamName("s".into())),
                published: None,
                status: Some(StreamStatus::Publishing),
            })
        );
        let e = parse_request("/rest-api/stream/find", br#"{"status":"LIVE"}"#)
            .expect_err("not a status");
        assert_eq!(e.status, 400);
        assert!(
            e.body["error"].as_str().unwrap().contains("LIVE"),
            "{}",
            e.body
        );
    }

    #[test]
    fn data_send_needs_a_session_and_a_payload() {
        let path = "/rest-api/data/send";
        let ok = parse_request(
            path,
            br#"{"nodeId":"n","sessionId":"s1","operationId":"op","payload":{"a":[1]}}"#,
        );
        assert_eq!(
            ok,
            Ok(RestRequest::DataSend {
                session_id: SessionId("s1".into()),
                operation_id: Some("op".into()),
                payload: json!({"a": [1]}),
            })
        );
        // A payload may be any JSON value; the operationId is optional.
        let ok = parse_request(path, br#"{"sessionId":"s1","payload":"text"}"#);
        assert_eq!(
            ok,
            Ok(RestRequest::DataSend {
                session_id: SessionId("s1".into()),
                operation_id: None,
                payload: json!("text"),
            })
        );
        for (body, error) in [
            (&br#"{"payload":1}"#[..], "sessionId is required"),
            (br#"{"sessionId":"","payload":1}"#, "sessionId is required"),
            (br#"{"sessionId":"s1"}"#, "payload is required"),
        ] {
            let e = parse_request(path, body).expect_err("refused");
            assert_eq!((e.status, e.body["error"].as_str()), (400, Some(error)));
        }
        let e = parse_request(path, br#"{"sessionId":5,"payload":1}"#).expect_err("refused");
        assert_eq!(e.status, 400);
    }
}
