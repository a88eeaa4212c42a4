//! HTTPS: the gateway served over TLS, HTTP/1.1 or HTTP/2 as the client's ALPN chooses
//! ([`serve_tls`] with a [`ServerTls`]), and what a node trusts when it calls another node of
//! its cluster ([`PeerTls`]). rustls, with ring.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use perennial_core::Runtime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Options;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Why a certificate, a key or an authority could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read as what it should hold.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The certificate and the key do not make a usable configuration.
    #[error("{0}")]
    Invalid(String),
}

/// rustls with ring: it builds with a C compiler alone (aws-lc-rs, which adds post-quantum
/// key exchange and is why rustls marks ring's provider deprecated, also needs CMake).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Whether the client of a request's connection presented a certificate the gateway's
/// client authority verified (mutual TLS); in every request's extensions under
/// [`serve_tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCertified(pub(crate) bool);

/// A certificate chain and its private key, from PEM files.
fn identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certificates(cert, "a certificate chain (PEM)")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "a private key (PEM)",
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((chain, key))
}

/// The gateway's certificate chain and key: what [`serve_tls`] presents.
#[derive(Debug, Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl ServerTls {
    /// Reads a certificate chain (PEM, the node's certificate first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1). The gateway then offers HTTP/2 and HTTP/1.1.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::build(cert, key, None)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), and asks each client for a certificate
    /// signed by an authority of `client_ca` (PEM): mutual TLS. A client that presents one is
    /// verified (a wrong one fails the handshake); one that presents none gets in, since the
    /// public routes serve clients without certificates, and the routes between nodes refuse
    /// it when the cluster requires certificates ([`Clustering::require_peer_certificates`](crate::Clustering::require_peer_certificates)).
    pub fn verifying_clients(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        Self::build(cert, key, Some(roots_of(client_ca)?))
    }

    fn build(
        cert: &Path,
        key: &Path,
        clients: Option<rustls::RootCertStore>,
    ) -> Result<Self, TlsError> {
        let (chain, key) = identity(cert, key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Invalid(format!("the client authority: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Invalid(format!("the certificate and the key do not match: {e}"))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

/// The authorities of a PEM file.
fn roots_of(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, "certificate authorities (PEM)")? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// What a node trusts when it calls the other nodes of its cluster over HTTPS, and the
/// certificate it presents to them, if any.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    roots: Arc<rustls::RootCertStore>,
}

impl PeerTls {
    /// Trusts the authorities of a PEM file (the cluster's own authority, which signed every
    /// node's certificate); each peer's certificate must name the address it advertises.
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsError> {
        Self::trusting(roots_of(path)?)
    }

    /// Presents the node's own certificate chain and key (PEM) to the peers too, for a
    /// cluster whose nodes require one another's certificates (mutual TLS).
    pub fn with_identity(self, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (chain, key) = identity(cert, key)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                TlsError::Invalid(format!("the certificate and the key do not match: {e}"))
            })?;
        Ok(Self {
            config: Arc::new(config),
            roots: self.roots,
        })
    }

    /// Trusts the operating system's authorities.
    pub fn system() -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if roots.is_empty() {
            return Err(TlsError::Invalid(
                "the system has no trusted certificate authorities; name the cluster's".into(),
            ));
        }
        Self::trusting(roots)
    }

    pub(crate) fn trusting(roots: rustls::RootCertStore) -> Result<Self, TlsError> {
        let roots = Arc::new(roots);
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_root_certificates(Arc::clone(&roots))
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            roots,
        })
    }
}

/// Serves the gateway over HTTPS on `listener` until `shutdown` completes, then stops as
/// [`serve`](crate::serve) does. Each connection speaks HTTP/2 or HTTP/1.1, as the client's
/// ALPN asks; a client that fails its handshake is dropped, and the others go on.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    rt: Runtime,
    options: Options,
    tls: ServerTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.0);
    let handshake = move |tcp: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let peer = tcp.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // rustls accepts a client certificate only once verified.
                    let certified = PeerCertified(stream.get_ref().1.peer_certificates().is_some());
                    Some((stream, Some(certified)))
                }
                Ok(Err(error)) => {
                    tracing::debug!(?peer, %error, "a TLS handshake failed");
                    None
                }
                Err(_) => None,
            }
        }
    };
    crate::server::run(listener, crate::app(rt, &options), shutdown, handshake).await
}
