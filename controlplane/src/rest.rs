//! The REST server (hyper, HTTP/1.1) on the control-plane thread: WCS's `/rest-api/...`
//! methods, `/health`, `/rest-api/server/info`, and the embedded web apps. Bodies are JSON;
//! methods without a body also answer GET. Every error is a JSON `{error, status}`.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::hub::Hub;
use crate::protocol::{MediaSessionId, SessionId, StreamName};
use crate::registry::{RestReply, RestRequest, error_reply};

/// How the REST server treats requests.
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig { max_body: 64 << 10 }
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(hub: Rc<Hub>, listener: TcpListener, config: RestConfig) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "REST accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let hub = Rc::clone(&hub);
        let config = config.clone();
        tokio::task::spawn_local(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let hub = Rc::clone(&hub);
                let config = config.clone();
                async move { Ok::<_, Infallible>(handle(&hub, req, &config).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%remote, error = %e, "REST connection ended with an error");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(hub: &Rc<Hub>, req: Request<Incoming>, config: &RestConfig) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
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
        "/health" => RestReply {
            status: 200,
            body: json!({ "status": "ok" }),
        },
        "/rest-api/server/info" => {
            let facts = hub.facts();
            let mut info = json!({
                "version": facts.version,
                "wsPort": facts.ws_addr.map(|a| a.port()),
                "restPort": facts.rest_addr.map(|a| a.port()),
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
        "/rest-api/stream/find_all" => hub.rest(RestRequest::StreamFindAll),
        "/rest-api/stream/find" => match parse::<FindBody>(body) {
            Ok(b) => hub.rest(RestRequest::StreamFind {
                media_session_id: b.media_session_id.map(MediaSessionId),
                name: b.name.map(StreamName),
                published: b.published,
            }),
            Err(reply) => reply,
        },
        "/rest-api/stream/terminate" => match parse::<TerminateBody>(body) {
            Ok(b) => {
                let mut ids: Vec<MediaSessionId> = b
                    .media_session_ids
                    .unwrap_or_default()
                    .into_iter()
                    .map(MediaSessionId)
                    .collect();
                ids.extend(b.media_session_id.map(MediaSessionId));
                if ids.is_empty() && b.name.is_none() {
                    return error_reply(
                        400,
                        "one of mediaSessionId, mediaSessionIds or name is required",
                    );
                }
                hub.rest(RestRequest::StreamTerminate {
                    media_session_ids: ids,
                    name: b.name.map(StreamName),
                })
            }
            Err(reply) => reply,
        },
        "/rest-api/connection/find_all" => hub.rest(RestRequest::ConnectionFindAll),
        "/rest-api/connection/terminate" => match parse::<ConnectionBody>(body) {
            Ok(b) => match b.session_id {
                Some(id) if !id.is_empty() => hub.rest(RestRequest::ConnectionTerminate {
                    session_id: SessionId(id),
                }),
                _ => error_reply(400, "sessionId is required"),
            },
            Err(reply) => reply,
        },
        _ => error_reply(404, &format!("no such method: {path}")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FindBody {
    media_session_id: Option<String>,
    name: Option<String>,
    published: Option<bool>,
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

/// Parses a JSON object body; an empty body is an empty object.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RestReply> {
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
}
