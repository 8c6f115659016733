//! WCS's REST hooks: the server asks the operator's backend before it accepts a connection,
//! a publish or a play, passes it a client's `sendData`, and tells it when streams and
//! sessions start and end. Each hook is a JSON `POST` to the configured base URL plus the
//! method's name (`/connect`, `/publishStream`, `/playStream`, `/OnDataEvent`,
//! `/StreamStatusEvent`, `/ConnectionStatusEvent`), as WCS posts to an application's REST
//! URL. A 2xx answer lets the request go on; any other status refuses it, and a backend that
//! cannot be reached or does not answer within the timeout refuses it too (a hook that cannot
//! be asked does not let anyone in), unless `allow_unavailable` is set. The notifications'
//! answers change nothing. With a
//! secret key, each post carries `Authorization: WCS <hex HMAC-MD5 of the body>`, as WCS
//! signs its hooks.
//!
//! Each post runs as its own task on the control-plane thread, over a kept-alive HTTP/1.1
//! connection when one is idle. At most `max_in_flight` run at once; the others wait for a
//! slot within the same timeout. The answer goes back to the hub on a channel, and the
//! registry resumes the request it parked ([`HookPending`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsConnector;

use crate::protocol::StreamRequest;
use crate::registry::ConnId;
use crate::tls::{ClientTls, TlsError};

/// A REST hook relaycast calls, by WCS's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookMethod {
    /// `connect`: a session's `connection`.
    Connect,
    /// `publishStream`.
    PublishStream,
    /// `playStream`.
    PlayStream,
    /// `OnDataEvent`: a client's `sendData`.
    OnDataEvent,
    /// `StreamStatusEvent`: a stream went live or ended (a notification).
    StreamStatusEvent,
    /// `ConnectionStatusEvent`: a session was established or closed (a notification).
    ConnectionStatusEvent,
}

impl HookMethod {
    pub const ALL: [HookMethod; 6] = [
        HookMethod::Connect,
        HookMethod::PublishStream,
        HookMethod::PlayStream,
        HookMethod::OnDataEvent,
        HookMethod::StreamStatusEvent,
        HookMethod::ConnectionStatusEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookMethod::Connect => "connect",
            HookMethod::PublishStream => "publishStream",
            HookMethod::PlayStream => "playStream",
            HookMethod::OnDataEvent => "OnDataEvent",
            HookMethod::StreamStatusEvent => "StreamStatusEvent",
            HookMethod::ConnectionStatusEvent => "ConnectionStatusEvent",
        }
    }

    /// A notification: its answer changes nothing.
    pub fn is_notification(self) -> bool {
        matches!(
            self,
            HookMethod::StreamStatusEvent | HookMethod::ConnectionStatusEvent
        )
    }

    pub fn parse(name: &str) -> Option<HookMethod> {
        HookMethod::ALL.into_iter().find(|m| m.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of hook methods: the ones the backend is asked about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookSet(u8);

impl HookSet {
    /// Every method relaycast can call.
    pub fn all() -> HookSet {
        HookMethod::ALL.into_iter().collect()
    }

    pub fn contains(self, method: HookMethod) -> bool {
        self.0 & method.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<HookMethod> for HookSet {
    fn from_iter<I: IntoIterator<Item = HookMethod>>(methods: I) -> Self {
        HookSet(methods.into_iter().fold(0, |bits, m| bits | m.bit()))
    }
}

/// Which requests the registry puts to a backend: the methods posted, for the sessions whose
/// appKey has a backend (its own, or the default one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookPlan {
    pub methods: HookSet,
    /// Every appKey has a backend (a default URL is set).
    pub every_app: bool,
    /// The appKeys with a backend of their own.
    pub apps: Vec<String>,
}

impl HookPlan {
    /// `methods` for every appKey (one backend for all).
    pub fn for_every_app(methods: HookSet) -> HookPlan {
        HookPlan {
            methods,
            every_app: true,
            apps: Vec::new(),
        }
    }

    /// Whether a request of a session with `app_key` is put to its backend as `method`.
    pub fn asks(&self, app_key: &str, method: HookMethod) -> bool {
        self.methods.contains(method)
            && (self.every_app || self.apps.iter().any(|app| app == app_key))
    }
}

/// Where and how hooks are posted.
#[derive(Clone, Debug)]
pub struct HookConfig {
    /// The backend's base URL (`[hooks] url`) for every appKey without its own; `None`:
    /// those sessions' requests go on without a backend.
    pub url: Option<String>,
    /// Backends of their own for some appKeys (`[hooks.apps]`), as WCS gives each
    /// application its own REST URL: (appKey, base URL).
    pub apps: Vec<(String, String)>,
    /// The methods posted to the backend; the others are not asked about.
    pub methods: HookSet,
    /// How long a post may take, the wait for a slot and the connection included.
    pub timeout: Duration,
    /// Posts in flight at once.
    pub max_in_flight: usize,
    /// Signs each post's body (HMAC-MD5) in `Authorization: WCS <hex>`.
    pub secret_key: Option<String>,
    /// Let a request go on when the backend cannot be reached or does not answer in time
    /// (an explicit refusal still refuses). Off by default: no answer, no entry.
    pub allow_unavailable: bool,
    /// How an `https://` backend's certificate is checked.
    pub tls: ClientTls,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            url: None,
            apps: Vec::new(),
            methods: HookSet::all(),
            timeout: Duration::from_secs(5),
            max_in_flight: 64,
            secret_key: None,
            allow_unavailable: false,
            tls: ClientTls::system(),
        }
    }
}

/// A bad hook configuration, found at start.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{key} {url:?}: {reason}")]
    Url {
        key: String,
        url: String,
        reason: String,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What the registry resumes once the backend has answered.
#[derive(Clone, Debug, PartialEq)]
pub enum HookPending {
    /// A session's `connection`, not yet answered.
    Connect { conn: ConnId },
    /// A `publishStream` (`published`) or `playStream`, not yet answered.
    Stream {
        conn: ConnId,
        request: StreamRequest,
        published: bool,
    },
    /// A `sendData`, answered with `DataStatusEvent`.
    Data { conn: ConnId, operation_id: String },
    /// Nothing waits: a notification.
    Nothing,
}

/// How the backend answered one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// A 2xx status: the request goes on.
    Passed,
    /// Another status: the request is refused.
    Refused(u16),
    /// No answer: the connection failed, or the timeout passed.
    Failed(String),
}

impl HookOutcome {
    pub fn passed(&self) -> bool {
        *self == HookOutcome::Passed
    }

    /// The label of `relaycast_hook_calls_total`: `passed`, `refused` or `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            HookOutcome::Passed => "passed",
            HookOutcome::Refused(_) => "refused",
            HookOutcome::Failed(_) => "failed",
        }
    }

    /// The `info` a refused client is given.
    pub fn info(&self) -> String {
        match self {
            HookOutcome::Passed => String::new(),
            HookOutcome::Refused(status) => format!("Refused by the backend ({status})"),
            HookOutcome::Failed(reason) => format!("Backend unavailable: {reason}"),
        }
    }
}

/// A finished hook: what it was about and how the backend answered.
#[derive(Debug)]
pub struct HookAnswer {
    pub method: HookMethod,
    pub pending: HookPending,
    pub outcome: HookOutcome,
    /// The request goes on: the backend passed it, or could not be asked and
    /// `allow_unavailable` is set.
    pub admitted: bool,
    /// From the post to its answer; zero for a method that is not posted.
    pub took: Duration,
}

/// The backend's base URL, checked once.
struct Target {
    host: String,
    port: u16,
    authority: HeaderValue,
    /// The base path, without its trailing `/`.
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Connections to this backend between requests (at most `max_in_flight`, one per slot).
    idle: RefCell<Vec<Sender>>,
}

/// Posts hooks to the backend and hands the answers back to the hub.
pub struct Hooks {
    /// When a failed notification was last logged: they are logged at most every 10 s.
    notice_logged: Rc<Cell<Option<Instant>>>,
    /// The default backend, for appKeys without their own.
    target: Option<Rc<Target>>,
    /// The appKeys' own backends.
    apps: Vec<(String, Rc<Target>)>,
    methods: HookSet,
    timeout: Duration,
    slots: Rc<Semaphore>,
    secret: Option<Rc<[u8]>>,
    answers: mpsc::UnboundedSender<HookAnswer>,
    /// Posts started and not yet answered (a graceful stop waits for them).
    pending: Rc<Cell<usize>>,
    allow_unavailable: bool,
}

impl Hooks {
    /// The hooks for `config`, and the receiver of the answers its posts produce.
    pub fn new(
        config: &HookConfig,
    ) -> Result<(Hooks, mpsc::UnboundedReceiver<HookAnswer>), HookError> {
        let default = match &config.url {
            Some(url) => Some(Rc::new(target("hooks.url", url, &config.tls)?)),
            None => None,
        };
        let mut apps = Vec::new();
        for (app, url) in &config.apps {
            let key = format!("hooks.apps.{app}");
            apps.push((app.clone(), Rc::new(target(&key, url, &config.tls)?)));
        }
        let (answers, rx) = mpsc::unbounded_channel();
        let hooks = Hooks {
            notice_logged: Rc::new(Cell::new(None)),
            methods: if default.is_some() || !apps.is_empty() {
                config.methods
            } else {
                HookSet::default()
            },
            target: default,
            apps,
            timeout: config.timeout,
            slots: Rc::new(Semaphore::new(config.max_in_flight.max(1))),
            secret: config
                .secret_key
                .as_ref()
                .map(|key| Rc::from(key.as_bytes())),
            answers,
            pending: Rc::new(Cell::new(0)),
            allow_unavailable: config.allow_unavailable,
        };
        Ok((hooks, rx))
    }

    /// Posts started and not yet answered or timed out.
    pub fn in_flight(&self) -> usize {
        self.pending.get()
    }

    /// What the registry puts to a backend: nothing without a URL.
    pub fn plan(&self) -> HookPlan {
        HookPlan {
            methods: self.methods,
            every_app: self.target.is_some(),
            apps: self.apps.iter().map(|(app, _)| app.clone()).collect(),
        }
    }

    /// The backend of the session `body` names by its `appKey`.
    fn target_for(&self, body: &Value) -> Option<&Rc<Target>> {
        let app = body["appKey"].as_str().unwrap_or_default();
        self.apps
            .iter()
            .find(|(key, _)| key == app)
            .map(|(_, target)| target)
            .or(self.target.as_ref())
    }

    /// Posts `body` to `method` of the backend of the body's `appKey`; the answer, with
    /// `pending`, arrives on the receiver [`Hooks::new`] returned. A method that is not
    /// configured, or an appKey without a backend, passes at once.
    pub fn call(&self, method: HookMethod, body: Value, pending: HookPending) {
        let target = match self.target_for(&body) {
            Some(target) if self.methods.contains(method) => Rc::clone(target),
            _ => {
                let outcome = HookOutcome::Passed;
                let _ = self.answers.send(HookAnswer {
                    method,
                    pending,
                    outcome,
                    admitted: true,
                    took: Duration::ZERO,
                });
                return;
            }
        };
        let body = body.to_string();
        let signature = self.secret.as_deref().map(|key| sign(key, body.as_bytes()));
        let slots = Rc::clone(&self.slots);
        let answers = self.answers.clone();
        let timeout = self.timeout;
        let notice_logged = Rc::clone(&self.notice_logged);
        let in_flight = Rc::clone(&self.pending);
        let allow_unavailable = self.allow_unavailable;
        in_flight.set(in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let started = Instant::now();
            let posted = async {
                let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
                post(&target, method, body, signature).await
            };
            let outcome = match tokio::time::timeout(timeout, posted).await {
                Ok(Ok(status)) if (200..300).contains(&status) => HookOutcome::Passed,
                Ok(Ok(status)) => HookOutcome::Refused(status),
                Ok(Err(reason)) => HookOutcome::Failed(reason),
                Err(_) => {
                    HookOutcome::Failed(format!("no answer within {} ms", timeout.as_millis()))
                }
            };
            in_flight.set(in_flight.get() - 1);
            if outcome.passed() {
                tracing::debug!(method = method.as_str(), "hook passed");
            } else if !method.is_notification() {
                let what = if allow_unavailable && matches!(outcome, HookOutcome::Failed(_)) {
                    "the backend could not be asked; the request goes on (allow_unavailable)"
                } else {
                    "hook refused the request"
                };
                tracing::warn!(method = method.as_str(), info = %outcome.info(),
                    path = %target.path, "{what}");
            } else if notice_logged
                .get()
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
            {
                notice_logged.set(Some(Instant::now()));
                tracing::warn!(method = method.as_str(), info = %outcome.info(),
                    path = %target.path,
                    "the backend did not take a notification (logged at most every 10 s)");
            }
            let admitted = match outcome {
                HookOutcome::Passed => true,
                HookOutcome::Refused(_) => false,
                HookOutcome::Failed(_) => allow_unavailable,
            };
            let _ = answers.send(HookAnswer {
                method,
                pending,
                outcome,
                admitted,
                took: started.elapsed(),
            });
        });
    }
}

/// `Authorization: WCS <hex>`: the HMAC-MD5 of `body` with `key`, in lowercase hex.
fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<md5::Md5>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("WCS {hex}")
}

/// Checks the base URL set as `key`: `http://` or `https://`, a host, no query.
fn target(key: &str, url: &str, tls: &ClientTls) -> Result<Target, HookError> {
    let bad = |reason: &str| HookError::Url {
        key: key.to_owned(),
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
    if uri.query().is_some() {
        return Err(bad(
            "a base URL takes no query: the method's name is appended",
        ));
    }
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
        host,
        port,
        authority,
        path: uri.path().trim_end_matches('/').to_owned(),
        tls,
        idle: RefCell::new(Vec::new()),
    })
}

/// An HTTP/1.1 connection to the backend, ready for its next request.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One POST of `body` to the target's `method`: the answer's HTTP status. It goes on an idle
/// connection when there is one (HTTP keep-alive), else on a new one. When the backend has
/// closed an idle connection before the request went out, the request goes on a new one;
/// once it went out, it is never sent twice.
async fn post(
    target: &Target,
    method: HookMethod,
    body: String,
    signature: Option<String>,
) -> Result<u16, String> {
    let mut request = Request::post(format!("{}/{}", target.path, method.as_str()))
        .header(HOST, target.authority.clone())
        .header(CONTENT_TYPE, "application/json");
    if let Some(signature) = signature {
        request = request.header(AUTHORIZATION, signature);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let idle = &target.idle;
    let reused = idle.borrow_mut().pop();
    let request = match reused {
        None => request,
        Some(sender) => match send(sender, request).await {
            Ok((status, sender)) => {
                keep(idle, sender);
                return Ok(status);
            }
            Err(Failed {
                unsent: Some(again),
                error,
            }) => {
                tracing::debug!(%error, "an idle hook connection was closed; reconnecting");
                again
            }
            Err(Failed { error, .. }) => return Err(error),
        },
    };
    let sender = connect(target).await?;
    let (status, sender) = send(sender, request).await.map_err(|f| f.error)?;
    keep(idle, sender);
    Ok(status)
}

/// A request that failed: why, and the request itself when it never went out.
struct Failed {
    unsent: Option<Request<Full<Bytes>>>,
    error: String,
}

/// Keeps a connection for the next request, unless the backend is closing it.
fn keep(idle: &RefCell<Vec<Sender>>, sender: Option<Sender>) {
    if let Some(sender) = sender.filter(|s| !s.is_closed()) {
        idle.borrow_mut().push(sender);
    }
}

/// Sends one request and reads its whole answer: the status, and the connection when it can
/// carry the next request.
async fn send(
    mut sender: Sender,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Option<Sender>), Failed> {
    if let Err(e) = sender.ready().await {
        return Err(Failed {
            unsent: Some(request),
            error: e.to_string(),
        });
    }
    let response = sender
        .try_send_request(request)
        .await
        .map_err(|mut e| Failed {
            unsent: e.take_message(),
            error: e.into_error().to_string(),
        })?;
    let status = response.status().as_u16();
    // The answer's body is not used, only drained so the connection can carry the next
    // request; a body beyond the bound is not read, and its connection is not kept.
    match Limited::new(response.into_body(), MAX_ANSWER_BODY)
        .collect()
        .await
    {
        Ok(_) => Ok((status, Some(sender))),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Ok((status, None)),
        Err(e) => Err(Failed {
            unsent: None,
            error: e.to_string(),
        }),
    }
}

/// The most of an answer's body that is read (and dropped) to keep its connection.
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// A new connection to the backend (TCP, then TLS for https://).
async fn connect(target: &Target) -> Result<Sender, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => handshake(tcp).await,
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake(tls).await
        }
    }
}

async fn handshake<I>(io: I) -> Result<Sender, String>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_at_start() {
        let tls = ClientTls::system();
        for (url, reason) in [
            (
                "ftp://backend/rest",
                "the scheme must be http:// or https://",
            ),
            ("backend/rest", "the scheme must be http:// or https://"),
            ("http:///rest", ""),
            ("http://backend/rest?app=1", "takes no query"),
        ] {
            let error = target("hooks.url", url, &tls)
                .err()
                .expect("refused")
                .to_string();
            assert!(error.starts_with(&format!("hooks.url {url:?}")), "{error}");
            assert!(error.contains(reason), "{error}");
        }
        let plain = target("hooks.url", "http://127.0.0.1:8081/rest/my_api/", &tls).unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 8081));
        assert_eq!(plain.authority, "127.0.0.1:8081");
        assert_eq!(plain.path, "/rest/my_api");
        assert!(plain.tls.is_none());
        let secure = target("hooks.url", "https://[::1]", &ClientTls::insecure()).unwrap();
        assert_eq!((secure.host.as_str(), secure.port), ("::1", 443));
        assert_eq!(secure.path, "");
        assert!(secure.tls.is_some());
    }

    #[test]
    fn the_plan_says_which_sessions_are_put_to_a_backend() {
        let only_chat = HookPlan {
            methods: [HookMethod::Connect].into_iter().collect(),
            every_app: false,
            apps: vec!["chatApp".into()],
        };
        assert!(only_chat.asks("chatApp", HookMethod::Connect));
        assert!(!only_chat.asks("defaultApp", HookMethod::Connect));
        assert!(!only_chat.asks("chatApp", HookMethod::PlayStream));
        let everyone = HookPlan {
            every_app: true,
            ..only_chat
        };
        assert!(everyone.asks("defaultApp", HookMethod::Connect));
        assert!(!HookPlan::default().asks("defaultApp", HookMethod::Connect));
    }

    #[test]
    fn posts_are_signed_with_hmac_md5_of_the_body() {
        // RFC 2104's second test vector for HMAC-MD5.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "WCS 750c783e6ab0b503eaa86e310a5db738"
        );
    }

    #[test]
    fn method_names_and_sets() {
        for method in HookMethod::ALL {
            assert_eq!(HookMethod::parse(method.as_str()), Some(method));
        }
        assert_eq!(HookMethod::parse("OnCallEvent"), None);
        assert!(HookMethod::StreamStatusEvent.is_notification());
        assert!(!HookMethod::Connect.is_notification());
        let set: HookSet = [HookMethod::Connect, HookMethod::OnDataEvent]
            .into_iter()
            .collect();
        assert!(set.contains(HookMethod::Connect) && set.contains(HookMethod::OnDataEvent));
        assert!(!set.contains(HookMethod::PlayStream));
        assert!(
            HookMethod::ALL
                .into_iter()
                .all(|m| HookSet::all().contains(m))
        );
        assert!(HookSet::default().is_empty());
    }

    #[test]
    fn outcomes_say_why() {
        assert!(HookOutcome::Passed.passed());
        assert_eq!(
            HookOutcome::Refused(403).info(),
            "Refused by the backend (403)"
        );
        assert_eq!(
            HookOutcome::Failed("connection refused".into()).info(),
            "Backend unavailable: connection refused"
        );
        assert_eq!(HookOutcome::Refused(500).label(), "refused");
    }
}
