//! Access control, both off by default as in WCS: REST credentials (HTTP Basic or a bearer
//! token, compared in constant time) and the signalling rules the registry applies (allowed
//! `appKey`s, a shared-secret token carried in `custom.token`).

use base64::Engine;
use serde_json::Value;
use subtle::ConstantTimeEq;

/// Who may call the REST API (`/rest-api/...`). Both kinds may be configured at once; either
/// is then accepted. Nothing configured: every request is accepted.
#[derive(Clone, Debug, Default)]
pub struct RestAuth {
    /// `Authorization: Basic base64(user:password)`.
    pub basic: Option<(String, String)>,
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
}

/// Why a REST request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials required")]
    Missing,
    #[error("wrong credentials")]
    Wrong,
}

impl RestAuth {
    pub fn is_enabled(&self) -> bool {
        self.basic.is_some() || self.bearer.is_some()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let Some(header) = authorization else {
            return Err(AuthError::Missing);
        };
        let (scheme, credentials) = match header.iter().position(|b| *b == b' ') {
            Some(i) => (&header[..i], trim(&header[i + 1..])),
            None => return Err(AuthError::Wrong),
        };
        let ok = if scheme.eq_ignore_ascii_case(b"basic") {
            self.basic.as_ref().is_some_and(|(user, password)| {
                let expected = format!("{user}:{password}");
                let given = base64::engine::general_purpose::STANDARD
                    .decode(credentials)
                    .unwrap_or_default();
                constant_time_eq(&given, expected.as_bytes())
            })
        } else if scheme.eq_ignore_ascii_case(b"bearer") {
            self.bearer
                .as_ref()
                .is_some_and(|token| constant_time_eq(credentials, token.as_bytes()))
        } else {
            false
        };
        if ok { Ok(()) } else { Err(AuthError::Wrong) }
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(&self) -> &'static str {
        if self.basic.is_some() {
            "Basic realm=\"relaycast\", charset=\"UTF-8\""
        } else {
            "Bearer realm=\"relaycast\""
        }
    }
}

/// Who may use the signalling server.
#[derive(Clone, Debug, Default)]
pub struct SignallingAccess {
    /// `appKey`s accepted in `connection`; empty: any.
    pub app_keys: Vec<String>,
    /// When set, `custom.token` must carry it, in `connection` (for the whole session) or in
    /// each `publishStream`/`playStream`.
    pub token: Option<String>,
}

/// What a request's `custom.token` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// No token is required, or the right one was given.
    Granted,
    /// A token is required and none was given.
    Absent,
    /// A token was given and it is wrong.
    Wrong,
}

impl SignallingAccess {
    pub fn app_key_allowed(&self, app_key: &str) -> bool {
        self.app_keys.is_empty() || self.app_keys.iter().any(|k| k == app_key)
    }

    /// Checks the `token` of a request's `custom` object.
    pub fn token(&self, custom: &Value) -> TokenCheck {
        let Some(secret) = &self.token else {
            return TokenCheck::Granted;
        };
        match custom.get("token").and_then(Value::as_str) {
            None => TokenCheck::Absent,
            Some(given) if constant_time_eq(given.as_bytes(), secret.as_bytes()) => {
                TokenCheck::Granted
            }
            Some(_) => TokenCheck::Wrong,
        }
    }
}

/// Equality whose time does not depend on where the inputs differ (only on their lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn off_by_default() {
        assert_eq!(RestAuth::default().check(None), Ok(()));
    }

    #[test]
    fn basic_and_bearer() {
        let auth = RestAuth {
            basic: Some(("admin".into(), "s3cret".into())),
            bearer: Some("tok".into()),
        };
        assert_eq!(auth.check(None), Err(AuthError::Missing));
        assert_eq!(auth.check(Some(&basic("admin", "s3cret"))), Ok(()));
        assert_eq!(auth.check(Some(b"basic  YWRtaW46czNjcmV0 ")), Ok(()));
        assert_eq!(
            auth.check(Some(&basic("admin", "wrong"))),
            Err(AuthError::Wrong)
        );
        assert_eq!(auth.check(Some(b"Bearer tok")), Ok(()));
        assert_eq!(auth.check(Some(b"Bearer to")), Err(AuthError::Wrong));
        assert_eq!(auth.check(Some(b"Bearer")), Err(AuthError::Wrong));
        assert_eq!(auth.check(Some(b"Basic !!!")), Err(AuthError::Wrong));
        assert_eq!(auth.check(Some(b"Digest x")), Err(AuthError::Wrong));
        let bearer_only = RestAuth {
            basic: None,
            bearer: Some("tok".into()),
        };
        assert_eq!(
            bearer_only.check(Some(&basic("admin", "s3cret"))),
            Err(AuthError::Wrong)
        );
        assert!(bearer_only.challenge().starts_with("Bearer"));
    }

    #[test]
    fn signalling_rules() {
        let open = SignallingAccess::default();
        assert!(open.app_key_allowed("anything"));
        assert_eq!(open.token(&Value::Null), TokenCheck::Granted);
        let closed = SignallingAccess {
            app_keys: vec!["defaultApp".into()],
            token: Some("secret".into()),
        };
        assert!(closed.app_key_allowed("defaultApp"));
        assert!(!closed.app_key_allowed("other"));
        assert_eq!(closed.token(&Value::Null), TokenCheck::Absent);
        assert_eq!(closed.token(&json!({"token": 1})), TokenCheck::Absent);
        assert_eq!(closed.token(&json!({"token": "nope"})), TokenCheck::Wrong);
        assert_eq!(
            closed.token(&json!({"token": "secret"})),
            TokenCheck::Granted
        );
    }
}
