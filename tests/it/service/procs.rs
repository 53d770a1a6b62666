//! Throwaway PostgreSQL and Prometheus servers on 127.0.0.1, started from the Debian packages'
//! binaries and stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Whether a missing server must fail the test (CI) rather than skip it (a developer machine without
/// the packages).
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (returns `None`) or, under CI, fails with `why`.
pub fn unavailable<T>(why: String) -> Option<T> {
    if required() {
        panic!("{why} (CI=true: this test must run; tests/run.sh installs the package)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// PostgreSQL's server binaries: the newest /usr/lib/postgresql/<ver>/bin, else `initdb` on PATH.
fn pg_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.parent()
        .map(Path::to_path_buf)
        .filter(|_| out.status.success())
}

/// A running PostgreSQL cluster in a temp dir, trust auth on 127.0.0.1 only.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// PostgreSQL refuses to run as root; as root we run it as the `postgres` user.
    as_postgres: bool,
    pub port: u16,
}

impl PgCluster {
    fn command(&self, prog: &str) -> Command {
        command(&self.bin, prog, self.as_postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// URL of database `db` as the superuser `egizml`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://egizml@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh database and returns its URL (each test gets its own, so tests run in parallel).
    pub fn fresh_db(&self, name: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let db = format!("{name}_{}", N.fetch_add(1, Ordering::Relaxed));
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .expect("create test database");
        self.url(&db)
    }

    fn start() -> Result<PgCluster, String> {
        let bin = pg_bindir().ok_or("PostgreSQL server binaries (initdb) not found")?;
        let as_postgres = is_root();
        let mut builder = tempfile::Builder::new();
        builder.prefix("egizml-pg-");
        // The `postgres` user must reach the directory: TMPDIR may point under root's home.
        let dir = if as_postgres {
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .map_err(|e| e.to_string())?;
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("cannot chown the cluster dir to the postgres user".into());
            }
        }
        let port = free_port();
        let cluster = PgCluster {
            dir,
            bin,
            as_postgres,
            port,
        };
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                "egizml",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let sock = cluster.dir.path().to_path_buf();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            sock.display()
        );
        let out = cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(cluster.data())
            .args(["-o", &opts, "-l"])
            .arg(cluster.dir.path().join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(cluster.dir.path().join("log")).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed: {}{log}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(cluster)
    }
}

fn command(bin: &Path, prog: &str, as_postgres: bool) -> Command {
    let path = bin.join(prog);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The shared test cluster: started by the first test that needs it, stopped when the last test holding
/// it finishes. `None` (skip) when PostgreSQL is not installed, outside CI.
pub fn pg() -> Option<Arc<PgCluster>> {
    static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return Some(c);
    }
    match PgCluster::start() {
        Ok(c) => {
            let c = Arc::new(c);
            *slot = Arc::downgrade(&c);
            Some(c)
        }
        Err(e) => unavailable(format!("PostgreSQL unavailable: {e}")),
    }
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
