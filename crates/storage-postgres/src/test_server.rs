//! For tests (feature `test-util`): a PostgreSQL server of the test's own, for what the
//! machine's shared server cannot show (TLS with a test-made authority, a primary and its
//! standby). `initdb` into a temporary directory, started on a free loopback port, as the
//! `postgres` user when the test runs as root (PostgreSQL refuses to run as root); stopped
//! and deleted when dropped.
//!
//! Without PostgreSQL's binaries, [`TestServer::start`] (and [`TestServer::standby_of`])
//! return `None` after saying so on stderr, unless `PERENNIAL_REQUIRE_POSTGRES=1` (CI sets it), which makes it panic instead.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server of one test's own.
#[derive(Debug)]
pub struct TestServer {
    /// Holds the data directory (`data/`) and the socket directory.
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl TestServer {
    /// Makes a new cluster (trust authentication on loopback), writes `files` into its data
    /// directory (readable by the server only, as it requires of a key), and starts it with
    /// the settings `settings` (`-c name=value`). `None`, said loudly, where PostgreSQL is
    /// not installed and not required.
    pub fn start(files: &[(&str, &[u8])], settings: &[(&str, &str)]) -> Option<TestServer> {
        let bin = installed()?;
        let dir = scratch();
        let data = dir.path().join("data");
        let status = as_server(&bin.join("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed: {status}");
        for (name, contents) in files {
            let path = data.join(name);
            std::fs::write(&path, contents).expect("a file in the data directory");
            set_mode(&path, 0o600);
            give_to_server(&path);
        }
        Some(launch(&bin, dir, settings))
    }

    /// A streaming standby of `primary`: a base backup of it (`pg_basebackup -R`), started
    /// with `settings`. With `synchronous_standby_names = '*'` on the primary, it is the
    /// primary's synchronous standby once [`TestServer::wait_for_sync_standby`] returns.
    pub fn standby_of(primary: &TestServer, settings: &[(&str, &str)]) -> Option<TestServer> {
        Self::base_backup(primary, true, settings)
    }

    /// A new server of its own restored from a base backup of `primary` (`pg_basebackup`,
    /// with the WAL it needs): it holds every commit made before the backup ended, and
    /// takes writes.
    pub fn restored_from(primary: &TestServer, settings: &[(&str, &str)]) -> Option<TestServer> {
        Self::base_backup(primary, false, settings)
    }

    fn base_backup(
        primary: &TestServer,
        standby: bool,
        settings: &[(&str, &str)],
    ) -> Option<TestServer> {
        let bin = installed()?;
        let dir = scratch();
        let port = primary.port.to_string();
        let mut command = as_server(&bin.join("pg_basebackup"));
        command
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(["-X", "stream", "-c", "fast", "--no-sync", "-D"])
            .arg(dir.path().join("data"));
        if standby {
            command.arg("-R");
        }
        let status = command
            .stdout(Stdio::null())
            .status()
            .expect("pg_basebackup runs");
        assert!(status.success(), "pg_basebackup failed: {status}");
        Some(launch(&bin, dir, settings))
    }

    /// Waits (at most 30 s) until a standby streams from this server synchronously.
    pub async fn wait_for_sync_standby(&self) {
        let started = Instant::now();
        loop {
            let synced = async {
                let (client, connection) =
                    tokio_postgres::connect(&self.url(""), tokio_postgres::NoTls)
                        .await
                        .ok()?;
                tokio::spawn(connection);
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
                        &[],
                    )
                    .await
                    .ok()?;
                Some(row.get::<_, i64>(0) > 0)
            };
            if synced.await == Some(true) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no synchronous standby after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server with SIGKILL (the postmaster, by its PID; its backends end when
    /// they find it gone), as a machine that dies would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it is).
    pub fn promote(&self) {
        let bin = installed().expect("the binaries that started it");
        let status = as_server(&bin.join("pg_ctl"))
            .args(["promote", "-w", "-t", "30", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl promote failed: {status}");
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// An address of the server's `postgres` database, with `extra` parameters appended
    /// (`sslmode=verify-full sslrootcert=…`).
    pub fn url(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
            self.port
        )
    }

    /// Waits until the server accepts connections (`pg_isready`: a standby too, once it can
    /// be read).
    fn wait_until_accepting(&self, bin: &Path) {
        let started = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the test's PostgreSQL did not accept connections on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A fast shutdown (SIGINT) of the server this test started, by its PID.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binaries' directory, or `None` (said loudly) where they are missing and not required.
fn installed() -> Option<PathBuf> {
    let found = binaries();
    if found.is_none() {
        let why = "PostgreSQL's server binaries (initdb, postgres, pg_ctl, pg_basebackup) are \
                   not installed";
        assert!(
            std::env::var("PERENNIAL_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "{why}, and PERENNIAL_REQUIRE_POSTGRES=1 requires them"
        );
        eprintln!("SKIPPED: {why}; this test needs a server of its own");
    }
    found
}

/// A temporary directory the server's user may enter.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("perennial-pg-")
        .tempdir()
        .expect("a temporary directory");
    give_to_server(dir.path());
    dir
}

/// Starts the server of `dir/data` on a free loopback port, and waits until it listens.
fn launch(bin: &Path, dir: tempfile::TempDir, settings: &[(&str, &str)]) -> TestServer {
    let port = free_port();
    let mut command = as_server(&bin.join("postgres"));
    command
        .arg("-D")
        .arg(dir.path().join("data"))
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.path().display()));
    for (name, value) in settings {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
    let server = TestServer {
        dir,
        port,
        child: Some(child),
    };
    server.wait_until_accepting(bin);
    server
}

/// The directory of PostgreSQL's server programs: on the `PATH`, or Debian's.
fn binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            let mut found: Vec<PathBuf> = dirs
                .filter_map(|d| Some(d.ok()?.path().join("bin")))
                .collect();
            found.sort();
            found.reverse();
            found
        })
        .unwrap_or_default();
    on_path.into_iter().chain(debian).find(|dir| {
        ["initdb", "postgres", "pg_ctl", "pg_basebackup"]
            .iter()
            .all(|program| dir.join(program).is_file())
    })
}

fn is_root() -> bool {
    // The effective user id, without a dependency for one call.
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// A command run as the `postgres` user when this process is root. The program itself is
/// the child (no `runuser` between), so its PID is the server's.
fn as_server(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if is_root() {
        let (uid, gid) = postgres_user();
        command.uid(uid).gid(gid);
    }
    command
}

/// The `postgres` user's ids, from `/etc/passwd`.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .expect("a postgres user, to run PostgreSQL as (it refuses to run as root)")
}

/// Gives `path` to the `postgres` user when this process is root.
fn give_to_server(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .expect("chown runs");
        assert!(
            status.success(),
            "cannot give {} to postgres",
            path.display()
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
