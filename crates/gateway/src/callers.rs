//! Who is calling: caller tokens (JWTs) verified with the key the node is given, and the
//! gate of the client routes that lets in callers, services and (on an open node) anyone.
//!
//! A verified token's `sub` becomes the handler's [`Ctx::caller`](perennial_core::Ctx::caller).
//! The gateway checks the signature, `exp` (required, with 60 s of leeway for clocks), `nbf`
//! when present, and the issuer and audience when the key names them.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use perennial_core::Caller;

use crate::error::ApiError;
use crate::guard::{Access, same};

/// The longest caller name (`sub`) accepted, in bytes.
pub(crate) const MAX_SUBJECT_BYTES: usize = 256;

/// The key that signs caller tokens, and what a token must say besides.
///
/// ```
/// use perennial_gateway::CallerKey;
///
/// // HS256 (or HS384, HS512) with a secret shared with whoever issues the tokens:
/// let key = CallerKey::secret(b"a long random secret, at least 32 bytes")
///     .issuer("https://auth.example.com")
///     .audience("poker");
/// # let _ = key;
/// ```
#[derive(Clone)]
pub struct CallerKey {
    key: Arc<DecodingKey>,
    validation: Validation,
    /// What the key is, for messages: "an HMAC secret", "an RSA public key", …
    what: &'static str,
}

/// Why a caller key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CallerKeyError(String);

impl CallerKey {
    /// Tokens signed with HMAC (HS256, HS384 or HS512) and this shared secret.
    pub fn secret(secret: &[u8]) -> Self {
        let algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        Self::new(
            DecodingKey::from_secret(secret),
            algorithms,
            "an HMAC secret",
        )
    }

    /// Tokens signed with the private half of this PEM public key: RSA (RS256, RS384,
    /// RS512, PS256, PS384, PS512), EC (ES256, ES384) or Ed25519 (EdDSA).
    pub fn public_pem(pem: &[u8]) -> Result<Self, CallerKeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            use Algorithm::{PS256, PS384, PS512, RS256, RS384, RS512};
            let algorithms = vec![RS256, RS384, RS512, PS256, PS384, PS512];
            return Ok(Self::new(key, algorithms, "an RSA public key"));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let algorithms = vec![Algorithm::ES256, Algorithm::ES384];
            return Ok(Self::new(key, algorithms, "an EC public key"));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Self::new(
                key,
                vec![Algorithm::EdDSA],
                "an Ed25519 public key",
            ));
        }
        Err(CallerKeyError(
            "the caller key is not a PEM public key (RSA, EC or Ed25519): give the public key \
             (`-----BEGIN PUBLIC KEY-----`), or an HMAC secret"
                .into(),
        ))
    }

    /// The key in a file's bytes: a PEM public key if it starts like one, else an HMAC
    /// secret (the whole file, without a final line break).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, CallerKeyError> {
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Self::public_pem(bytes);
        }
        Ok(Self::secret(secret_in(bytes)?))
    }

    /// Accepts only tokens whose `iss` is `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Accepts only tokens whose `aud` names `audience`. Without one, any audience is
    /// accepted.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self
    }

    fn new(key: DecodingKey, algorithms: Vec<Algorithm>, what: &'static str) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Self {
            key: Arc::new(key),
            validation,
            what,
        }
    }

    /// The caller a token names, if the token is valid.
    pub(crate) fn verify(&self, token: &str) -> Result<Caller, String> {
        #[derive(serde::Deserialize)]
        struct Claims {
            /// Checked here, so a token without one is told so.
            #[serde(default)]
            sub: Option<String>,
        }
        let data = jsonwebtoken::decode::<Claims>(token.as_bytes(), &self.key, &self.validation)
            .map_err(|e| why(e.kind()))?;
        let subject = data
            .claims
            .sub
            .ok_or_else(|| why(&ErrorKind::MissingRequiredClaim("sub".into())))?;
        if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
            return Err(format!(
                "the token's `sub` must be 1 to {MAX_SUBJECT_BYTES} bytes, not {}",
                subject.len()
            ));
        }
        Ok(Caller::new(subject))
    }
}

/// The HMAC secret in a key file's bytes: the whole file without a final line break, at
/// least 32 bytes.
fn secret_in(bytes: &[u8]) -> Result<&[u8], CallerKeyError> {
    let secret = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    if secret.len() < 32 {
        return Err(CallerKeyError(format!(
            "an HMAC caller secret must be at least 32 bytes (this one is {}): make one with \
             `openssl rand -hex 32`",
            secret.len()
        )));
    }
    Ok(secret)
}

/// What a caller token made by [`sign_caller_token`] says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallerClaims<'a> {
    /// Who is calling.
    pub sub: &'a str,
    /// When the token expires, in seconds since the Unix epoch.
    pub exp: u64,
    /// The issuer, if the node checks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    /// The audience, if the node checks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
}

/// An HS256 caller token with `claims`, signed with the HMAC secret in a key file's bytes
/// (as [`CallerKey::from_file_bytes`] reads them): for trying a node out and for tests. In
/// production, your identity provider issues the tokens.
pub fn sign_caller_token(
    key_file: &[u8],
    claims: &CallerClaims<'_>,
) -> Result<String, CallerKeyError> {
    if key_file.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(CallerKeyError(
            "a public key verifies tokens but cannot sign them: sign with its private key \
             where your tokens are issued"
                .into(),
        ));
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret_in(key_file)?);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key)
        .map_err(|e| CallerKeyError(format!("cannot sign the token: {e}")))
}

impl fmt::Debug for CallerKey {
    // Keys never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerKey")
            .field("key", &self.what)
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish()
    }
}

/// What a refused token gets told: enough to fix it, nothing about the key.
fn why(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired: get a new one".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (`iss`) is not the one expected".into(),
        ErrorKind::InvalidAudience => {
            "the token's audience (`aud`) does not name this service".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        ErrorKind::InvalidAlgorithm => {
            "the token is signed with an algorithm this node's caller key does not use".into()
        }
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        _ => "the token is not a valid JWT".into(),
    }
}

/// Who the client routes let in: the [`Access`] of the node's client token, and the
/// caller key if it has one.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) access: Access,
    pub(crate) callers: Option<CallerKey>,
}

/// The caller of a request the gate let in: `None` for anonymous calls and services.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated(pub(crate) Option<Caller>);

/// Lets a request into the client routes, or answers why not.
///
/// Without a caller key, as [`Access`] says. With one, a request needs `Authorization:
/// Bearer <token>` with either a valid caller token (its calls come from that caller) or
/// the client token (a service's calls, with no caller). A `GET` (the watch stream, which
/// browsers open without headers) may carry the token as `?access_token=` instead.
pub(crate) async fn admit(
    State(gate): State<Arc<Gate>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(key) = &gate.callers else {
        if let Some(refused) = crate::guard::refusal(&gate.access, &request) {
            return refused;
        }
        request.extensions_mut().insert(Authenticated(None));
        return next.run(request).await;
    };
    let token = bearer(&request).or_else(|| query_token(&request));
    let Some(token) = token else {
        return unauthorized(
            "this node knows its callers: send a caller token as `Authorization: Bearer <jwt>`",
        );
    };
    if let Access::Token(service) = &gate.access
        && same(token.as_bytes(), service.as_bytes())
    {
        request.extensions_mut().insert(Authenticated(None));
        return next.run(request).await;
    }
    match key.verify(&token) {
        Ok(caller) => {
            request.extensions_mut().insert(Authenticated(Some(caller)));
            next.run(request).await
        }
        Err(why) => unauthorized(&why),
    }
}

fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// `?access_token=` on a `GET`.
fn query_token(request: &Request) -> Option<String> {
    if request.method() != axum::http::Method::GET {
        return None;
    }
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("access_token=")?;
        // A JWT is base64url and dots: nothing to decode.
        Some(value.to_owned())
    })
}

fn unauthorized(why: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned()).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn a_valid_token_names_its_caller() {
        let key = CallerKey::secret(SECRET);
        let caller = key.verify(&token(json!({"sub": "alice", "exp": in_an_hour()})));
        assert_eq!(caller, Ok(Caller::new("alice")));
    }

    #[test]
    fn bad_tokens_are_refused_with_why() {
        let key = CallerKey::secret(SECRET).issuer("me").audience("poker");
        let exp = in_an_hour();
        let cases = [
            (
                json!({"sub": "a", "exp": 1, "iss": "me", "aud": "poker"}),
                "expired",
            ),
            (json!({"sub": "a", "iss": "me", "aud": "poker"}), "`exp`"),
            (json!({"exp": exp, "iss": "me", "aud": "poker"}), "`sub`"),
            (
                json!({"sub": "a", "exp": exp, "iss": "you", "aud": "poker"}),
                "issuer",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "me", "aud": "chess"}),
                "audience",
            ),
            (
                json!({"sub": "", "exp": exp, "iss": "me", "aud": "poker"}),
                "1 to 256",
            ),
        ];
        for (claims, expected) in cases {
            let why = key.verify(&token(claims.clone())).unwrap_err();
            assert!(why.contains(expected), "{claims}: {why}");
        }
        let forged = encode(
            &Header::default(),
            &json!({"sub": "a", "exp": exp, "iss": "me", "aud": "poker"}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
        )
        .unwrap();
        assert!(key.verify(&forged).unwrap_err().contains("signature"));
        assert!(
            key.verify("not.a.jwt")
                .unwrap_err()
                .contains("not a valid JWT")
        );
        // "none" is never an algorithm a key accepts.
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(key.verify(none).is_err());
    }

    #[test]
    fn signed_tokens_verify_with_the_same_file() {
        let file = [SECRET, b"\n"].concat();
        let claims = CallerClaims {
            sub: "carol",
            exp: in_an_hour(),
            iss: Some("me"),
            aud: Some("poker"),
        };
        let token = sign_caller_token(&file, &claims).unwrap();
        let key = CallerKey::from_file_bytes(&file)
            .unwrap()
            .issuer("me")
            .audience("poker");
        assert_eq!(key.verify(&token), Ok(Caller::new("carol")));
        assert!(sign_caller_token(b"-----BEGIN PUBLIC KEY-----", &claims).is_err());
    }

    #[test]
    fn key_files_are_pem_or_a_long_secret() {
        assert!(CallerKey::from_file_bytes(b"short\n").is_err());
        assert!(CallerKey::from_file_bytes(b"-----BEGIN PUBLIC KEY-----\nxx\n").is_err());
        let key = CallerKey::from_file_bytes(&[SECRET, b"\n"].concat()).unwrap();
        let caller = key.verify(&token(json!({"sub": "bob", "exp": in_an_hour()})));
        assert_eq!(
            caller,
            Ok(Caller::new("bob")),
            "the final line break is not the secret's"
        );
    }
}
