//! TLS to PostgreSQL, against a server of the test's own with `ssl=on` and a certificate
//! signed by an authority the test makes: each `sslmode` checks what it should, a wrong
//! authority or host name is refused with a clear error, and the authority file is read
//! again when a lost connection is opened again.

use perennial_storage::{Batch, Error, StateWrite, Store};
use perennial_storage_postgres::test_server::TestServer;
use perennial_storage_postgres::{Options, PostgresStore};
use perennial_types::{EntityId, EntityKey, SHARDS, ShardId, shard_of};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// An authority: its certificate (PEM), and what signs with it.
struct Authority {
    pem: String,
    params: CertificateParams,
    key: KeyPair,
}

fn authority(name: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.clone().self_signed(&key).unwrap().pem();
    Authority { pem, params, key }
}

/// A server certificate for `names` signed by `ca`: (certificate, key), PEM.
fn server_cert(ca: &Authority, names: &[&str]) -> (String, String) {
    let issuer = ca.params.clone().self_signed(&ca.key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A server whose certificate names `127.0.0.1` and `db.test` (not `localhost`), signed by
/// the returned authority.
fn tls_server() -> Option<(TestServer, Authority)> {
    let ca = authority("perennial test CA");
    let (cert, key) = server_cert(&ca, &["127.0.0.1", "db.test"]);
    let server = TestServer::start(
        &[
            ("server.crt", cert.as_bytes()),
            ("server.key", key.as_bytes()),
        ],
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
        ],
    )?;
    Some((server, ca))
}

async fn connect(url: &str) -> Result<PostgresStore, Error> {
    let mut options = Options::default();
    options.schema = "tls_test".to_owned();
    PostgresStore::connect_with(url, options).await
}

/// Whether every connection of the store's application name is encrypted, and how many.
async fn encrypted(server: &TestServer) -> (bool, i64) {
    let (client, connection) = tokio_postgres::connect(
        &server.url("sslmode=disable application_name=checker"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT coalesce(bool_and(s.ssl), false), count(*) FROM pg_stat_ssl s
               JOIN pg_stat_activity a USING (pid)
              WHERE a.application_name LIKE 'perennial/%'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A stored counter's value (PostgreSQL keeps `jsonb`, not the text written).
fn value(state: &str) -> i64 {
    let text = state.replace(' ', "");
    let digits = text
        .strip_prefix(r#"{"value":"#)
        .and_then(|t| t.strip_suffix('}'));
    digits
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("{state}"))
}

async fn round_trip(store: &PostgresStore) {
    let shards: Vec<ShardId> = (0..SHARDS).map(ShardId).collect();
    let epoch = store.claim("n1", &shards).await.unwrap();
    let key = EntityKey::new("counter", EntityId::new("c1").unwrap());
    let batch = Batch {
        states: vec![StateWrite {
            key: key.clone(),
            shard: shard_of("counter", "c1"),
            epoch,
            state: r#"{"value":7}"#.into(),
            version: 1,
            schema: 1,
        }],
        ..Batch::default()
    };
    let store2 = store.clone();
    tokio::task::spawn_blocking(move || store2.commit(batch))
        .await
        .unwrap()
        .unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(value(&loaded.state), 7);
}

/// A store on `server` with `sslmode=verify-full`, trusting `ca` written into `dir`, after
/// a write and a read: the authority's file, and the store.
async fn verified_store(
    server: &TestServer,
    ca: &Authority,
    dir: &std::path::Path,
) -> (std::path::PathBuf, PostgresStore) {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let url = format!("sslmode=verify-full sslrootcert={}", ca_file.display());
    let store = connect(&server.url(&url)).await.unwrap();
    round_trip(&store).await;
    (ca_file, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_to_the_named_host_and_encrypts() {
    let Some((server, ca)) = tls_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, store) = verified_store(&server, &ca, dir.path()).await;
    let (all, connections) = encrypted(&server).await;
    assert!(
        all && connections >= 3,
        "{connections} connections, all encrypted: {all}"
    );
    store.close().await.unwrap();

    // The same in a URL, the authority's path percent-encoded.
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port(),
        ca_file.display().to_string().replace('/', "%2F")
    );
    connect(&url).await.unwrap().close().await.unwrap();

    // `require` encrypts without checking anything.
    connect(&server.url("sslmode=require"))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_authority_or_host_name_is_refused_clearly() {
    let Some((server, ca)) = tls_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&right, &ca.pem).unwrap();
    std::fs::write(&wrong, authority("another CA").pem).unwrap();

    for mode in ["verify-ca", "verify-full"] {
        let error =
            connect(&server.url(&format!("sslmode={mode} sslrootcert={}", wrong.display())))
                .await
                .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Io(_)), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert!(text.contains(&format!("sslmode={mode}")), "{text}");
    }
    // The certificate does not name `localhost`: verify-full refuses it, verify-ca (which
    // checks the authority only) takes it.
    let by_name = |mode: &str| {
        server
            .url(&format!("sslmode={mode} sslrootcert={}", right.display()))
            .replace("host=127.0.0.1", "host=localhost")
    };
    let error = connect(&by_name("verify-full"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not valid for name \"localhost\""),
        "{error}"
    );
    assert!(error.contains("name the host"), "{error}");
    connect(&by_name("verify-ca"))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    // Files that are missing or not PEM, and modes that need an authority, are refused
    // before connecting.
    let missing = connect(&server.url("sslmode=verify-full sslrootcert=/nonexistent/ca.pem"))
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, Error::Invalid(m) if m.contains("/nonexistent/ca.pem")),
        "{missing}"
    );
    let none = connect(&server.url("sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(
        matches!(&none, Error::Invalid(m) if m.contains("sslrootcert")),
        "{none}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_file_is_read_again_when_a_connection_is_opened_again() {
    let Some((server, ca)) = tls_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, store) = verified_store(&server, &ca, dir.path()).await;
    // The file now trusts another authority only, and the server ends every connection.
    std::fs::write(&ca_file, authority("another CA").pem).unwrap();
    let terminate = |server: &TestServer| {
        let url = server.url("sslmode=disable application_name=checker");
        async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name LIKE 'perennial/%'",
                    &[],
                )
                .await
                .unwrap();
        }
    };
    terminate(&server).await;
    let key = EntityKey::new("counter", EntityId::new("c1").unwrap());
    // The first read may still find the ended connection open; a later one connects again.
    let mut refused = None;
    for _ in 0..20 {
        match store.load(&key).await {
            Err(e) if e.to_string().contains("UnknownIssuer") => {
                refused = Some(e);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert!(
        refused.is_some(),
        "the new authority file was not read again"
    );
    // The right authority back: the next connection succeeds.
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut loaded = None;
    for _ in 0..20 {
        if let Ok(Some(record)) = store.load(&key).await {
            loaded = Some(record);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(value(&loaded.expect("a read after the fix").state), 7);
    store.close().await.unwrap();
}
