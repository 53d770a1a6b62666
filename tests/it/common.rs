//! Helpers shared by the integration tests.

use egizml::commands::replay::{replay, ReplayArgs, ReplaySummary};
use egizml::event::{Name, Origin, Point};
use egizml::pipeline::RunReport;
use egizml::sources::simulator::{write_jsonl, FaultEpisode, SimulatorConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const T0: i64 = 1_767_225_600_000;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_egizml")
}

/// An HTTP client that returns 4xx/5xx answers as responses (the tests check statuses) and gives
/// up on a request after `timeout`.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// A decoded oven reading, as the engine takes it.
pub fn point(thing: &str, ts: i64, values: &[(&str, f64)], seq: u64) -> Point {
    Point {
        thing_id: Name::from(thing),
        equipment_type: Name::from("oven"),
        ts,
        values: values.iter().map(|(k, v)| (Name::from(*k), *v)).collect(),
        label: None,
        seq,
        origin: Origin::None,
        learn_only: false,
    }
}

/// One flat-format line.
pub fn flat(thing: &str, ts: i64, values: &[(&str, f64)]) -> String {
    let values: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    serde_json::json!({"thing_id": thing, "equipment_type": "oven", "ts": ts, "values": values})
        .to_string()
}

/// A healthy oven reading, with deterministic small noise from `i`.
pub fn oven(i: i64) -> Vec<(&'static str, f64)> {
    let n = |k: i64| (((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5) * 0.4;
    vec![
        ("voltage_a", 230.0 + n(1)),
        ("voltage_b", 229.8 + n(2)),
        ("voltage_c", 230.2 + n(3)),
        ("current_a", 15.0 + n(4) * 0.2),
        ("current_b", 15.0 + n(5) * 0.2),
        ("current_c", 15.0 + n(6) * 0.2),
        ("power_factor", 0.92 + n(7) * 0.01),
        ("temp_zone_1", 185.0 + n(8)),
        ("temp_zone_2", 190.0 + n(9)),
        ("temp_zone_3", 188.0 + n(10)),
    ]
}

pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write input");
}

/// Writes simulator telemetry; returns the file and the injected episodes.
pub fn simulate(
    dir: &Path,
    things: usize,
    points: usize,
    seed: u64,
) -> (PathBuf, Vec<FaultEpisode>) {
    let path = dir.join(format!("sim-{things}-{points}-{seed}.jsonl"));
    let f = std::fs::File::create(&path).expect("create");
    let cfg = SimulatorConfig {
        things,
        seed,
        ..SimulatorConfig::default()
    };
    let episodes = write_jsonl(cfg, points, std::io::BufWriter::new(f)).expect("simulate");
    (path, episodes)
}

pub fn replay_args(input: &Path, out: &Path, workers: usize) -> ReplayArgs {
    ReplayArgs {
        input: input.to_path_buf(),
        alerts: out.join(format!("alerts-{workers}.jsonl")),
        scores: Some(out.join(format!("scores-{workers}.jsonl"))),
        predictions: None,
        dead_letters: Some(out.join(format!("dead-{workers}.jsonl"))),
        workers: Some(workers),
        config: None,
        warmup: None,
    }
}

pub fn run_replay(args: &ReplayArgs) -> (ReplaySummary, RunReport) {
    replay(args).expect("replay runs")
}

pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("valid JSON line"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Sends `sig` (`kill`'s form: "-TERM", "-STOP", ...) to a child process; panics if it cannot be sent.
pub fn signal(child: &std::process::Child, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {sig} {}", child.id());
}

/// Sends SIGTERM to a service under test and waits up to `limit` for it to exit (its graceful
/// shutdown: stop the sources, drain, flush); panics naming `what` if the signal cannot be sent or the
/// process outlives the limit. The caller checks the exit status and reads the output.
pub fn sigterm_and_wait(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    signal(child, "-TERM");
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `egizml run --config CONFIG`, stdout piped (the summary line), stderr to `log`, logging at
/// EGIZML_TEST_LOG's filter (default `info`); the caller may add arguments and environment, then spawns.
pub fn run_command(config: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config"])
        .arg(config)
        .env(
            "EGIZML_LOG",
            std::env::var("EGIZML_TEST_LOG").unwrap_or("info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// Starts `egizml run --config CONFIG` as [`run_command`] sets it up.
pub fn spawn_service(config: &Path, log: &Path) -> Child {
    run_command(config, log).spawn().expect("egizml run starts")
}

/// `None` while `child` runs; once it has exited, its stdout, after asserting it exited 0 (else
/// panics naming `what`, with the text of its `log`).
pub fn exited(child: &mut Child, log: &Path, what: &str) -> Option<String> {
    let status = child.try_wait().unwrap()?;
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        status.success(),
        "{what} failed: {status}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    Some(out)
}

/// Waits up to `timeout` for a service started by [`spawn_service`] to exit 0; returns its stdout.
/// Past the timeout it kills the service and panics with its log.
pub fn wait_exit(mut child: Child, timeout: Duration, log: &Path) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(out) = exited(&mut child, log, "egizml run") {
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "egizml run did not stop within {timeout:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A run's summary: the last line of its stdout, as JSON.
pub fn summary(out: &str) -> serde_json::Value {
    let last = out.lines().last().expect("a summary line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("summary JSON: {e}\n{out}"))
}
