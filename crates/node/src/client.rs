//! A blocking HTTP client for a running node's gateway, for the operator's subcommands.
//! [`Client::get`] and [`Client::post`] return the node's JSON answer, or an [`Error`] that
//! says what went wrong and, where it can, how to fix it ([`Error::hint`]).

use std::fmt;
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// The largest answer read: a `cache` entity's state is megabytes.
const MAX_ANSWER_BYTES: u64 = 1 << 30;

/// Which routes a client uses: it decides which token the node wants, and the hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Calls to entities (`/v1/{kind}/{id}`), with the client token.
    Client,
    /// The admin API (`/v1/admin/…`), with the admin token.
    Admin,
}

impl Role {
    /// The environment variable that holds this role's token, for the CLI and the node.
    fn variable(self) -> &'static str {
        match self {
            Self::Client => "PERENNIAL_CLIENT_TOKEN",
            Self::Admin => "PERENNIAL_ADMIN_TOKEN",
        }
    }

    /// The node's flag that sets this role's token.
    fn node_flag(self) -> &'static str {
        match self {
            Self::Client => "--client-token",
            Self::Admin => "--admin-token",
        }
    }
}

/// A connection to one node, with the token for one [`Role`].
#[derive(Debug)]
pub(crate) struct Client {
    agent: ureq::Agent,
    /// The node's base URL, without a trailing `/`.
    node: String,
    token: Option<String>,
    role: Role,
}

impl Client {
    /// A client for the node at `node` (`http://host:port` or `https://host:port`;
    /// `host:port` is taken as HTTP). Over HTTPS, the node's certificate must be signed by an
    /// authority of `ca` (a PEM file), or by a public one without it.
    pub(crate) fn new(
        node: &str,
        token: Option<String>,
        role: Role,
        ca: Option<&Path>,
    ) -> Result<Client, Error> {
        let node = node.trim().trim_end_matches('/');
        let node = match node.split_once("://") {
            None => format!("http://{node}"),
            Some(("http" | "https", _)) => node.to_owned(),
            Some((scheme, _)) => {
                return Err(Error::BadNode {
                    node: node.to_owned(),
                    reason: format!("{scheme}:// is not HTTP"),
                });
            }
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca {
            let unreadable = |reason: String| Error::BadCa {
                path: ca.display().to_string(),
                reason,
            };
            let pem = std::fs::read(ca).map_err(|e| unreadable(e.to_string()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(e.to_string()))?;
            if certs.is_empty() {
                return Err(unreadable("it holds no PEM certificate".to_owned()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            // Error answers carry the gateway's code and message: read them.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Client {
            agent,
            node,
            token,
            role,
        })
    }

    /// GETs `path` (which starts with `/`) and returns the JSON answer.
    pub(crate) fn get(&self, path: &str) -> Result<Value, Error> {
        let text = self.send(path, Verb::Get, &[])?;
        self.parse(&text, 200)
    }

    /// POSTs `body` to `path` and returns the JSON answer.
    pub(crate) fn post(&self, path: &str, body: &str) -> Result<Value, Error> {
        let text = self.send(path, Verb::Post(body), &[])?;
        self.parse(&text, 200)
    }

    /// DELETEs `path` and returns the JSON answer.
    pub(crate) fn delete(&self, path: &str) -> Result<Value, Error> {
        let text = self.send(path, Verb::Delete, &[])?;
        self.parse(&text, 200)
    }

    /// POSTs `body` to `path` with extra headers and returns the answer as the node sent it
    /// (checked to be JSON).
    pub(crate) fn post_text(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, Error> {
        let text = self.send(path, Verb::Post(body), headers)?;
        self.parse(&text, 200)?;
        Ok(text)
    }

    /// Sends a request; returns the body of a `2xx` answer, or the error.
    fn send(&self, path: &str, verb: Verb<'_>, headers: &[(&str, &str)]) -> Result<String, Error> {
        let url = format!("{}{path}", self.node);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let answer = match verb {
            Verb::Get | Verb::Delete => {
                let mut request = match verb {
                    Verb::Delete => self.agent.delete(&url),
                    _ => self.agent.get(&url),
                };
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.call()
            }
            Verb::Post(body) => {
                let mut request = self.agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.content_type("application/json").send(body)
            }
        };
        let mut answer = answer.map_err(|e| self.failed(e))?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| self.failed(e))?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let detail = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            let error = v.get("error")?;
            Some((
                error.get("code")?.as_str()?.to_owned(),
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ))
        });
        Err(match (status, detail) {
            (401, Some(_)) => Error::Unauthorized {
                role: self.role,
                token_given: self.token.is_some(),
            },
            (403, Some((code, _))) if code == "disabled" => Error::Disabled { role: self.role },
            (_, Some((code, message))) => Error::Api {
                node: self.node.clone(),
                status,
                code,
                message,
            },
            (_, None) => self.not_perennial(status, &text),
        })
    }

    fn parse(&self, text: &str, status: u16) -> Result<Value, Error> {
        serde_json::from_str(text).map_err(|_| self.not_perennial(status, text))
    }

    fn not_perennial(&self, status: u16, text: &str) -> Error {
        let answer: String = text.chars().take(120).collect();
        Error::NotPerennial {
            node: self.node.clone(),
            status,
            answer: answer.trim().to_owned(),
        }
    }

    fn failed(&self, error: ureq::Error) -> Error {
        let node = self.node.clone();
        match error {
            ureq::Error::Io(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::AddrNotAvailable
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                ) =>
            {
                Error::Unreachable {
                    node,
                    reason: e.to_string(),
                }
            }
            ureq::Error::HostNotFound => Error::Unreachable {
                node,
                reason: "host not found".to_owned(),
            },
            e @ (ureq::Error::ConnectionFailed | ureq::Error::Timeout(_)) => Error::Unreachable {
                node,
                reason: e.to_string(),
            },
            ureq::Error::BadUri(reason) => Error::BadNode { node, reason },
            ureq::Error::Rustls(e) => Error::Tls {
                node,
                detail: e.to_string(),
            },
            // A failed handshake comes as an I/O error carrying rustls's.
            ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                Error::Tls {
                    node,
                    detail: e.to_string(),
                }
            }
            // The paths are encoded: a URI the http crate refuses comes from --node.
            ureq::Error::Http(e) => Error::BadNode {
                node,
                reason: e.to_string(),
            },
            e => Error::Transport {
                node,
                detail: e.to_string(),
            },
        }
    }
}

/// `text` percent-encoded for a path segment or a query value: every byte but the
/// unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`, so ids with `/`, `?` or spaces arrive
/// whole.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why a request to a node failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Nothing answered at the node's address.
    Unreachable { node: String, reason: String },
    /// `--node` is not a URL this client can use.
    BadNode { node: String, reason: String },
    /// `401`: no token, or the wrong one.
    Unauthorized { role: Role, token_given: bool },
    /// `403 disabled`: the node was started without a token for these routes.
    Disabled { role: Role },
    /// Any other error answer from the gateway, with its stable code.
    Api {
        node: String,
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that is not the gateway's JSON.
    NotPerennial {
        node: String,
        status: u16,
        answer: String,
    },
    /// The exchange broke after the connection was made.
    Transport { node: String, detail: String },
    /// The TLS handshake failed: most often, the node's certificate is not trusted.
    Tls { node: String, detail: String },
    /// `--ca` could not be read as PEM certificates.
    BadCa { path: String, reason: String },
}

impl Error {
    /// What to do about it, if there is something to say.
    pub(crate) fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Unreachable { node, .. } => format!(
                "is a node running at {node}? start one with `perennial serve`, or point to \
                 another with --node (or PERENNIAL_NODE)"
            ),
            Self::BadNode { .. } => {
                "--node (or PERENNIAL_NODE) takes a URL such as http://127.0.0.1:8080".to_owned()
            }
            Self::Unauthorized {
                role,
                token_given: false,
            } => format!("set --token or {}", role.variable()),
            Self::Unauthorized {
                role,
                token_given: true,
            } => format!(
                "set --token or {} to the token the node was started with ({})",
                role.variable(),
                role.node_flag()
            ),
            Self::Disabled { role } => format!(
                "the node has no {} token; restart it with {} (or {})",
                match role {
                    Role::Client => "client",
                    Role::Admin => "admin",
                },
                role.node_flag(),
                role.variable()
            ),
            Self::Api { node, code, .. } if code == "not_found" => {
                format!("{node} does not know this route: is it a Perennial node of this version?")
            }
            Self::Api { .. } => return None,
            Self::NotPerennial { node, .. } => {
                format!("is {node} a Perennial node? check --node (or PERENNIAL_NODE)")
            }
            Self::Transport { .. } => "the node may have stopped; check it, then retry (a call \
                                       retried with the same --idempotency-key is applied once)"
                .to_owned(),
            Self::Tls { .. } => "if the node's certificate is signed by your own authority, \
                                 give its certificate with --ca FILE (or PERENNIAL_CA); the \
                                 certificate must also name the host in --node"
                .to_owned(),
            Self::BadCa { .. } => "--ca (or PERENNIAL_CA) takes a PEM file of the authority \
                                   that signed the node's certificate"
                .to_owned(),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { node, reason } => write!(f, "cannot reach {node}: {reason}"),
            Self::BadNode { node, reason } => {
                write!(f, "cannot use the node URL {node:?}: {reason}")
            }
            Self::Unauthorized {
                token_given: false, ..
            } => f.write_str("the node wants a token for this (401 unauthorized)"),
            Self::Unauthorized {
                token_given: true, ..
            } => f.write_str("the node refused the token (401 unauthorized)"),
            Self::Disabled { role: Role::Admin } => {
                f.write_str("the node's admin API is disabled (403 disabled)")
            }
            Self::Disabled { role: Role::Client } => {
                f.write_str("the node takes no calls (403 disabled)")
            }
            Self::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "{code}: {message} ({status})"),
            Self::NotPerennial {
                node,
                status,
                answer,
            } => write!(
                f,
                "{node} answered {status} with something other than Perennial's JSON: {answer:?}"
            ),
            Self::Transport { node, detail } => {
                write!(f, "the exchange with {node} failed: {detail}")
            }
            Self::Tls { node, detail } => write!(f, "cannot talk TLS with {node}: {detail}"),
            Self::BadCa { path, reason } => write!(f, "cannot read --ca {path}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// An HTTP method, with the body it sends.
#[derive(Clone, Copy)]
enum Verb<'a> {
    Get,
    Post(&'a str),
    Delete,
}
