//! TLS to PostgreSQL (rustls), asked for in the address as libpq asks for it: `sslmode`
//! (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file of
//! the certificate authorities to trust, or `system` for the operating system's), and
//! `sslcert` with `sslkey` (a client certificate, for servers that ask for one).
//!
//! tokio-postgres reads neither `verify-ca`, `verify-full` nor the file parameters, so they
//! are taken out of the address here and the rest is handed to it. The files are read each
//! time a connection opens: a certificate renewed on disk is used from the next connection
//! on, and connections are opened again whenever one is lost.
//!
//! What each mode checks, as in libpq:
//! - `disable`: no TLS.
//! - `prefer` (tokio-postgres's default) and `require`: encrypted (`prefer` falls back to
//!   plain text if the server has no TLS), the certificate not checked; with `sslrootcert`,
//!   `require` checks it as `verify-ca` does.
//! - `verify-ca`: the server's certificate must chain to a trusted authority.
//! - `verify-full`: and it must name the host connected to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use perennial_storage::{Error, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How a connection is encrypted and what of the server is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The authorities trusted for the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    System,
}

/// The TLS settings of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) mode: SslMode,
    roots: Option<Roots>,
    /// A client certificate and its key, both PEM files.
    client: Option<(PathBuf, PathBuf)>,
}

/// Reads an address: its TLS settings, and the rest as tokio-postgres reads it.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, Tls)> {
    let invalid = |why: String| Error::Invalid(format!("the PostgreSQL address: {why}"));
    let (rest, params) = split(url);
    let mut mode = None;
    let (mut roots, mut cert, mut key) = (None, None, None);
    for (name, value) in &params {
        match name.as_str() {
            "sslmode" => {
                mode = Some(match value.as_str() {
                    "disable" => SslMode::Disable,
                    // libpq's `allow` tries plain text first; TLS first is as safe and simpler.
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(invalid(format!(
                            "sslmode={other} is not one of disable, allow, prefer, require, \
                             verify-ca, verify-full"
                        )));
                    }
                });
            }
            "sslrootcert" if value == "system" => roots = Some(Roots::System),
            "sslrootcert" => roots = Some(Roots::File(PathBuf::from(value))),
            "sslcert" => cert = Some(PathBuf::from(value)),
            "sslkey" => key = Some(PathBuf::from(value)),
            _ => unreachable!("split keeps only the TLS parameters"),
        }
    }
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(invalid("sslcert and sslkey go together".into())),
    };
    let mode = mode.unwrap_or(SslMode::Prefer);
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots.is_none() {
        return Err(invalid(
            "sslmode=verify-ca and verify-full need the authorities to trust: \
             sslrootcert=FILE (PEM), or sslrootcert=system"
                .into(),
        ));
    }
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| invalid(format!("cannot read {rest:?}: {e}")))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((
        config,
        Tls {
            mode,
            roots,
            client,
        },
    ))
}

/// The TLS parameters taken out of `url`, and what is left of it.
fn split(url: &str) -> (String, Vec<(String, String)>) {
    const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let ours = |name: &str| OURS.contains(&name);
    let mut params = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), params);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if ours(name) {
                params.push((name.to_owned(), percent_decode(value)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, params);
    }
    // `key=value` pairs, separated by spaces; a value may be 'quoted' (with \' and \\).
    let mut kept = Vec::new();
    let mut chars = url.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let name: String =
            std::iter::from_fn(|| chars.next_if(|&c| c != '=' && !c.is_whitespace())).collect();
        if name.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next_if_eq(&'\'').is_some() {
                raw.push('\'');
                while let Some(c) = chars.next() {
                    raw.push(c);
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                raw.push(escaped);
                                value.push(escaped);
                            }
                        }
                        '\'' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    raw.push(c);
                    value.push(c);
                }
            }
        }
        if ours(&name) {
            params.push((name, value));
        } else {
            kept.push(format!("{name}={raw}"));
        }
    }
    (kept.join(" "), params)
}

/// Decodes `%XX` escapes (a path in a URL's query, such as `%2Fetc%2Fca.pem`).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Tls {
    /// The rustls configuration of one new connection, its files read now.
    pub(crate) fn client_config(&self) -> Result<ClientConfig> {
        // ring builds with a C compiler alone; aws-lc-rs, which adds post-quantum key
        // exchange (hence ring's deprecation), also needs CMake.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Backend(format!("cannot set up TLS: {e}")))?;
        let chain = match &self.roots {
            None => None,
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(load_roots(roots)?),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| Error::Backend(format!("cannot set up TLS: {e}")))?,
            ),
        };
        let verifier = Arc::new(Verifier {
            chain,
            check_name: self.mode == SslMode::VerifyFull,
            provider,
        });
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let certs = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file_error(key, "a private key (PEM)", &e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| Error::Invalid(format!("the client certificate: {e}")))
            }
        }
    }

    /// A hint for a connection that failed: what this mode checks.
    pub(crate) fn hint(&self) -> &'static str {
        match self.mode {
            SslMode::VerifyFull => {
                " (sslmode=verify-full: the server's certificate must be signed by an authority \
                 in sslrootcert and name the host connected to)"
            }
            SslMode::VerifyCa => {
                " (sslmode=verify-ca: the server's certificate must be signed by an authority \
                 in sslrootcert)"
            }
            SslMode::Require => " (sslmode=require: the server must accept TLS)",
            SslMode::Disable | SslMode::Prefer => "",
        }
    }
}

fn load_roots(roots: &Roots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in read_certs(path)? {
                store
                    .add(cert)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(Error::Invalid(
                    "sslrootcert=system: the system has no trusted certificate authorities".into(),
                ));
            }
        }
    }
    Ok(store)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, "certificates (PEM)", &e))?;
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no certificate (PEM)",
            path.display()
        )));
    }
    Ok(certs)
}

fn file_error(path: &Path, what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot read {what} from {}: {e}", path.display()))
}

/// What a mode checks of the server's certificate: its chain against the trusted
/// authorities (none without `sslrootcert`: `prefer` and `require` encrypt without checking,
/// as libpq does), and its host name (`verify-full` only). The handshake's signatures are
/// always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is left of `url`, and the mode and authority taken out of it.
    fn split_two(url: &str) -> (String, [(String, String); 2]) {
        let (rest, ours) = split(url);
        let ours: [(String, String); 2] = ours.try_into().expect("two parameters");
        (rest, ours)
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let url = "postgres://u@db.example:5432/app?sslmode=verify-full&connect_timeout=3&\
                   sslrootcert=%2Fetc%2Fca.pem";
        assert_eq!(
            split_two(url),
            (
                "postgres://u@db.example:5432/app?connect_timeout=3".to_owned(),
                [
                    pair("sslmode", "verify-full"),
                    pair("sslrootcert", "/etc/ca.pem")
                ]
            )
        );
        let pairs =
            "host=a,b user=app sslmode = verify-ca sslrootcert='/my ca.pem' password='x\\'y'";
        assert_eq!(
            split_two(pairs),
            (
                "host=a,b user=app password='x\\'y'".to_owned(),
                [
                    pair("sslmode", "verify-ca"),
                    pair("sslrootcert", "/my ca.pem")
                ]
            )
        );
        assert_eq!(split("host=a user=b").0, "host=a user=b");
        assert_eq!(split("postgres://a/b").0, "postgres://a/b");
    }

    #[test]
    fn modes_are_checked() {
        let (config, tls) = parse("host=a user=b").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let (config, tls) = parse("host=a user=b sslmode=verify-full sslrootcert=system").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        for bad in [
            "host=a sslmode=verify-full",
            "host=a sslmode=strict",
            "host=a sslcert=c.pem",
            "host=a nonsense=1",
        ] {
            assert!(matches!(parse(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}
