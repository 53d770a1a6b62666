//! Real servers for tests and benchmarks: a Kafka-protocol broker (tansu) and an MQTT broker
//! (Mosquitto), each started on a free 127.0.0.1 port and killed on drop.
//!
//! The broker binary is found at `$EGIZML_TANSU`, `$HOME/.cache/egizml/bin/tansu` (where
//! `tests/run.sh` installs it), or on `PATH`; when only the prebuilt archive in `../shared/tools` exists
//! it is unpacked to the cache first.

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released; the race with other processes is accepted).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn cache_bin() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/egizml/bin"))
}

/// Path of the tansu binary, unpacking the shared prebuilt one when needed.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EGIZML_TANSU") {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = cache_bin() {
        let bin = dir.join("tansu");
        if bin.is_file() {
            return Ok(bin);
        }
        let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/tools/tansu-0.6.0-x86_64-linux-gnu.xz");
        if archive.is_file() {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!("tansu.{}.tmp", std::process::id()));
            let out = std::fs::File::create(&tmp)?;
            let status = Command::new("xz")
                .arg("-dc")
                .arg(&archive)
                .stdout(out)
                .status()
                .context("xz -dc (install xz-utils)")?;
            anyhow::ensure!(status.success(), "xz -dc {} failed", archive.display());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            }
            std::fs::rename(&tmp, &bin)?;
            return Ok(bin);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("tansu");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    anyhow::bail!(
        "the tansu broker is not installed: run `bash tests/run.sh` once (it installs it)"
    )
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tansu broker child process; killed on drop.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    log: PathBuf,
}

impl Tansu {
    /// Starts a broker with in-memory storage.
    pub fn start() -> anyhow::Result<Tansu> {
        Self::start_with("memory://tansu/".to_string())
    }

    /// Starts a broker storing its log in the SQLite file `path` (survives [`Tansu::restart`]).
    pub fn start_persistent(path: &Path) -> anyhow::Result<Tansu> {
        Self::start_with(format!("sqlite://{}", path.display()))
    }

    fn start_with(storage: String) -> anyhow::Result<Tansu> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("egizml-tansu-{port}.log"));
        let mut t = Tansu {
            child: None,
            port,
            storage,
            log,
        };
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            // tansu opens a `sqlite://` path relative to its working directory, even an absolute one.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30))
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kills the broker.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates a topic (an existing one is left as it is).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = rt.block_on(admin.create_topics([&topic], &opts))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
            }
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of the Mosquitto broker (Debian's `mosquitto` package: `/usr/sbin/mosquitto`), if installed.
pub fn mosquitto_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("mosquitto"))
        .find(|b| b.is_file())
}

/// A Mosquitto broker child process on a free 127.0.0.1 port, from a generated config (anonymous
/// access, no limit on queued QoS 1 messages, sessions persisted in its folder when it stops);
/// killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    /// Starts a broker.
    pub fn start() -> anyhow::Result<Mosquitto> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("egizml-mosquitto-{port}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 3600\nmax_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\n",
                dir.display()
            ),
        )?;
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = mosquitto_binary()
            .context("mosquitto is not installed: run `bash tests/run.sh` once (it installs it)")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30))
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGTERM: it saves its sessions and queued messages) and starts it again on
    /// the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        self.spawn()
    }

    /// Kills the broker.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a [`SlowSink`] saw, shared with the test that reads it after (or during) the run.
#[derive(Debug, Default)]
pub struct SinkProgress {
    /// Score lines written (one per reading).
    pub written: std::sync::atomic::AtomicU64,
    /// The most the source count was ahead of `written` at any write.
    pub max_ahead: std::sync::atomic::AtomicU64,
}

/// An output sink for backpressure tests: takes `delay` per write and records, at each write, how
/// far a source's count of readings (`read`: handed to a channel, or read by the source) is ahead
/// of the score lines written so far.
pub struct SlowSink {
    delay: Duration,
    read: Box<dyn Fn() -> u64 + Send>,
    progress: std::sync::Arc<SinkProgress>,
}

impl SlowSink {
    pub fn new(delay: Duration, read: impl Fn() -> u64 + Send + 'static) -> SlowSink {
        SlowSink {
            delay,
            read: Box::new(read),
            progress: std::sync::Arc::default(),
        }
    }

    /// The counts this sink updates.
    pub fn progress(&self) -> std::sync::Arc<SinkProgress> {
        std::sync::Arc::clone(&self.progress)
    }
}

impl crate::pipeline::OutputSink for SlowSink {
    fn write(&mut self, outputs: &[(u64, crate::pipeline::Output)]) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        let ahead = (self.read)().saturating_sub(self.progress.written.load(Ordering::SeqCst));
        self.progress.max_ahead.fetch_max(ahead, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let scores = outputs
            .iter()
            .filter(|(_, o)| matches!(o, crate::pipeline::Output::Score(_)))
            .count();
        self.progress
            .written
            .fetch_add(scores as u64, Ordering::SeqCst);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// An output sink that keeps everything written (with each output's input position), for tests that
/// compare what runs wrote.
pub struct CollectSink(pub std::sync::Arc<std::sync::Mutex<Vec<(u64, crate::pipeline::Output)>>>);

impl crate::pipeline::OutputSink for CollectSink {
    fn write(&mut self, outputs: &[(u64, crate::pipeline::Output)]) -> anyhow::Result<()> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.extend_from_slice(outputs);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// An alert of `thing` of type `alert_type` at `ts` with made-up details (a warning from the
/// ensemble, no features), for tests of what carries alerts; tests set the fields they look at.
pub fn alert(thing: &str, alert_type: &str, ts: i64) -> crate::event::Alert {
    use crate::event::{Alert, Name, Origin, Severity};
    Alert {
        alert_id: crate::event::alert_id(thing, alert_type, ts),
        thing_id: Name::new(thing),
        equipment_type: Name::new("oven"),
        ts,
        severity: Severity::Warning,
        source: "ensemble".into(),
        alert_type: alert_type.into(),
        score: 0.9,
        model_version: String::new(),
        top_features: Vec::new(),
        families: Default::default(),
        explanation: String::new(),
        input_offsets: Origin::None,
        label: None,
        detectors: Vec::new(),
    }
}
