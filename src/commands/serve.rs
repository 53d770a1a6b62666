//! The REST API and `/metrics` around a running pipeline, shared by `egizml demo` and `egizml run`: the
//! anomaly store the API reads (and the sink that writes it), retention, the model registry, training
//! jobs, fleet and device summaries, the bearer token and `/health`'s details.
//!
//! `egizml run` takes it from the service config's `api` section ([`ApiConfig`]); `egizml demo` from its
//! command line. Both serve the process-wide metrics ([`crate::metrics::global`]).

use crate::api::{self, ApiServer, ApiState, SharedStore};
use crate::config::ConfigError;
use crate::fleet::{Fleet, FleetFeed};
use crate::pipeline::{Output, OutputSink};
use crate::registry::RegistryConfig;
use crate::rules::RulesHandle;
use crate::sinks::jsonl::LineWriter;
use crate::sinks::retention::{Purger, RetentionConfig};
use crate::sinks::sqlite::{open_store, AlertStore};
use crate::training::jobs::TrainJobs;
use crate::training::schedule::Retrainer;
use crate::training::HistorySpec;
use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Training jobs that may wait behind the running one.
pub const TRAIN_QUEUE: usize = 4;

/// The `api` section of the service config: the REST API and `/metrics` of `egizml run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the REST API and `/metrics` (`0.0.0.0:8080` in a container).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token that mutating calls need; it must be
    /// set (and not empty) when the service starts.
    #[serde(default, deserialize_with = "env_var_name")]
    pub token_env: Option<String>,
    /// The bearer token itself (prefer `token_env`: config files get copied around).
    #[serde(default, deserialize_with = "non_empty")]
    pub token: Option<String>,
    /// The anomaly store the service writes alerts and predictions into and the API serves: an SQLite
    /// file (relative to the config file) or a `postgresql://` URL. Unset: the API serves
    /// `sinks.sqlite` when that is configured (and the anomaly routes answer 503 otherwise).
    #[serde(default, deserialize_with = "non_empty")]
    pub store: Option<String>,
    /// How long the served store keeps alerts (default 90 days, purged hourly).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Model registry served by `/api/v1/models` (unset: those routes answer 503).
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// History that `POST /api/v1/train/{thing_id}` jobs learn from. Needs `registry`. Unset: the
    /// train routes answer 503.
    #[serde(default)]
    pub train_history: Option<TrainHistoryConfig>,
    /// Keep the fleet and device summaries of `/api/v1/devices` and `/api/v1/fleet` (they need a score
    /// per reading, which the pipeline then computes even when `scores` is off).
    #[serde(default = "yes")]
    pub fleet: bool,
}

/// Training history: exactly one of `file` and `simulator`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainHistoryConfig {
    /// Flat or EgizCore JSON lines, relative to the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Labelled simulator telemetry (`things`, `points`, `seed`, `faults_per_1000`).
    #[serde(default)]
    pub simulator: Option<crate::training::SimulatorHistory>,
}

impl TrainHistoryConfig {
    /// The history to read, once exactly one source is set.
    pub fn spec(&self) -> Result<HistorySpec, String> {
        match (&self.file, &self.simulator) {
            (Some(f), None) => Ok(HistorySpec::File(f.clone())),
            (None, Some(s)) => Ok(HistorySpec::Simulator(s.clone())),
            _ => Err("api.train_history: set exactly one of file, simulator".into()),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn yes() -> bool {
    true
}

/// A string checked while it is read: the YAML deserializer then reports a failed check at the value's
/// own line and column (a check after deserializing would be placed at the enclosing map).
struct Checked(fn(&str) -> Result<(), String>);

impl serde::de::Visitor<'_> for Checked {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        (self.0)(v).map_err(E::custom)?;
        Ok(v.to_string())
    }
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    fn check(v: &str) -> Result<(), String> {
        if v.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(())
    }
    d.deserialize_str(Checked(check)).map(Some)
}

/// An environment variable name that is set to a non-empty value now (checked while the file is parsed,
/// so the error names its line).
fn env_var_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    fn check(name: &str) -> Result<(), String> {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`{name}` is not an environment variable name (letters, digits and _)"
            ));
        }
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(()),
            _ => Err(format!(
                "environment variable `{name}` is not set (or empty)"
            )),
        }
    }
    d.deserialize_str(Checked(check)).map(Some)
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            token_env: None,
            token: None,
            store: None,
            retention: RetentionConfig::default(),
            registry: None,
            train_history: None,
            fleet: true,
        }
    }
}

/// Whether a store spec names PostgreSQL rather than an SQLite file.
pub fn is_postgres(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

impl ApiConfig {
    /// Cross-field checks (messages start with the field, `api.` included) and relative paths resolved
    /// against `base`, the config file's folder. `sqlite_sink` is `sinks.sqlite.path` (resolved).
    pub fn check(&mut self, base: &Path, sqlite_sink: Option<&Path>) -> Result<(), String> {
        if self.token.is_some() && self.token_env.is_some() {
            return Err("api: set token or token_env, not both".into());
        }
        if self.train_history.is_some() && self.registry.is_none() {
            return Err(
                "api.train_history: training jobs register their models: configure api.registry too"
                    .into(),
            );
        }
        if !(self.retention.interval_s.is_finite() && self.retention.interval_s > 0.0) {
            return Err(format!(
                "api.retention.interval_s: must be > 0 seconds, got {}",
                self.retention.interval_s
            ));
        }
        if let Some(store) = self.store.as_mut() {
            if !is_postgres(store) {
                let p = PathBuf::from(&*store);
                if p.is_relative() {
                    *store = base.join(p).display().to_string();
                }
                if sqlite_sink.is_some_and(|s| Path::new(store) == s) {
                    return Err("api.store: is the sinks.sqlite file already; leave api.store unset to serve that sink".into());
                }
            }
        }
        if let Some(r) = self.registry.as_mut() {
            r.resolve(base);
        }
        if let Some(h) = self.train_history.as_mut() {
            h.spec()?;
            if let Some(p) = h.file.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        Ok(())
    }

    /// The bearer token (from `token` or the `token_env` variable).
    pub fn bearer_token(&self) -> Option<String> {
        match (&self.token, &self.token_env) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(var)) => std::env::var(var).ok().filter(|t| !t.trim().is_empty()),
            (None, None) => None,
        }
    }
}

/// Checks the `api` section of the service config at `file` (see [`ApiConfig::check`]).
pub fn check_config(
    api: &mut ApiConfig,
    file: &Path,
    sqlite_sink: Option<&Path>,
) -> Result<(), ConfigError> {
    let base = file.parent().unwrap_or(Path::new("."));
    api.check(base, sqlite_sink)
        .map_err(|message| ConfigError::Semantic {
            file: file.display().to_string(),
            message,
        })
}

/// What to serve, from the service config or the demo's command line.
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Bearer token of mutating calls; `None` leaves them open.
    pub token: Option<String>,
    /// Store the API serves (an SQLite path or a PostgreSQL URL); `None`: no anomaly routes.
    pub store: Option<String>,
    /// Whether this process's [`ServiceSink`] writes the store (false when another sink already does).
    pub write_store: bool,
    pub retention: RetentionConfig,
    pub registry: Option<RegistryConfig>,
    pub train_history: Option<HistorySpec>,
    pub fleet: bool,
    /// Scheduled retraining (needs `registry` and `train_history`).
    pub retrain: Option<crate::training::schedule::RetrainConfig>,
    /// `details.mode` of `/health` (`demo`, `run`).
    pub mode: &'static str,
}

impl ServeOptions {
    /// The options of `egizml run`'s `api` section; `sqlite_sink` is `sinks.sqlite.path`, served when
    /// `api.store` is unset.
    pub fn from_config(api: &ApiConfig, sqlite_sink: Option<&Path>) -> ServeOptions {
        let (store, write_store) = match (&api.store, sqlite_sink) {
            (Some(s), _) => (Some(s.clone()), true),
            (None, Some(p)) => (Some(p.display().to_string()), false),
            (None, None) => (None, false),
        };
        ServeOptions {
            listen: api.listen,
            token: api.bearer_token(),
            store,
            write_store,
            retention: api.retention.clone(),
            registry: api.registry.clone(),
            // Checked when the config was loaded.
            train_history: api.train_history.as_ref().and_then(|h| h.spec().ok()),
            fleet: api.fleet,
            retrain: None,
            mode: "run",
        }
    }
}

/// The running API and what it serves. [`Service::drained`] once the pipeline has returned, then
/// [`Service::shutdown`].
pub struct Service {
    server: ApiServer,
    purger: Option<Purger>,
    fleet: Option<Fleet>,
    retrainer: Option<Retrainer>,
    drained: Arc<AtomicBool>,
}

impl Service {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Whether the pipeline must emit a score per reading for the summaries.
    pub fn wants_scores(&self) -> bool {
        self.fleet.is_some()
    }

    /// Call once the pipeline has returned (its sink's last flush is done): waits until the summaries
    /// have absorbed the last epoch, then `/health` reports `details.drained: true`.
    pub fn drained(&self) {
        if let Some(f) = &self.fleet {
            f.sync();
        }
        self.drained.store(true, Ordering::SeqCst);
    }

    /// Stops the summaries, the retention thread and the server (in-flight requests finish).
    pub fn shutdown(self) -> anyhow::Result<()> {
        if let Some(f) = &self.fleet {
            f.close();
        }
        if let Some(p) = self.purger {
            p.stop();
        }
        if let Some(r) = self.retrainer {
            r.stop();
        }
        self.server.shutdown()
    }
}

/// Starts the API (binding `opts.listen` now: a busy port is an immediate error) with everything it
/// serves. Returns it and the sink to add to the pipeline's sinks: it writes the store (when
/// `write_store`) and feeds the summaries.
pub fn start(
    opts: ServeOptions,
    rules: RulesHandle,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Service, ServiceSink)> {
    // A PostgreSQL URL may hold a password: not repeated in the error.
    let what = |s: &str| {
        let shown = if is_postgres(s) { "PostgreSQL" } else { s };
        format!("opening the anomaly store ({shown})")
    };
    // Two connections: the pipeline writes through one while the API reads through the other.
    let (writer, reader): (Option<Box<dyn AlertStore>>, Option<SharedStore>) = match &opts.store {
        Some(spec) => {
            let writer = if opts.write_store {
                Some(open_store(spec).with_context(|| what(spec))?)
            } else {
                None
            };
            let reader = open_store(spec).with_context(|| what(spec))?;
            (writer, Some(ApiState::share(reader)))
        }
        None => (None, None),
    };
    let fleet = if opts.fleet {
        Some(Fleet::start().context("starting the fleet summaries")?)
    } else {
        None
    };
    let drained = Arc::new(AtomicBool::new(false));
    let (drained_health, mode) = (Arc::clone(&drained), opts.mode);
    let mut state = match &reader {
        Some(r) => ApiState::new(Arc::clone(r)),
        None => ApiState::without_store(),
    }
    .with_rules(rules)
    .with_token(opts.token.as_deref())
    .with_health_details(move || {
        serde_json::json!({
            "mode": mode,
            "stopping": stop.load(Ordering::Relaxed),
            "drained": drained_health.load(Ordering::SeqCst),
        })
    });
    if let Some(f) = &fleet {
        state = state.with_fleet(f.clone());
    }
    let mut retrainer = None;
    if let Some(rc) = &opts.registry {
        let registry = rc.open().context("opening the model registry")?;
        if let Some(history) = opts.train_history.clone() {
            let jobs = TrainJobs::start(Arc::clone(&registry), history, TRAIN_QUEUE)
                .context("starting the training worker")?;
            if let Some(schedule) = opts.retrain.clone() {
                retrainer = Some(
                    Retrainer::spawn(schedule, jobs.clone(), Arc::clone(&registry))
                        .context("starting the retraining schedule")?,
                );
            }
            state = state.with_training(jobs);
        }
        state = state.with_registry(registry);
    }
    anyhow::ensure!(
        opts.retrain.is_none() || retrainer.is_some(),
        "retrain: needs a registry and a training history"
    );
    let server = api::spawn(opts.listen, state)?;
    let purger = match reader {
        Some(r) => Some(Purger::spawn(r, opts.retention).context("starting the retention purge")?),
        None => None,
    };
    let sink_name = match &opts.store {
        Some(s) if is_postgres(s) => "postgres",
        _ => "sqlite",
    };
    if writer.is_some() {
        crate::metrics::global().register_sink(sink_name);
    }
    let sink = ServiceSink {
        store: writer,
        sink_name,
        stdout: None,
        log_dead_letters: false,
        batch: Vec::new(),
        predictions: Vec::new(),
        fleet: fleet.clone().map(FleetFeed::new),
    };
    Ok((
        Service {
            server,
            purger,
            fleet,
            retrainer,
            drained,
        },
        sink,
    ))
}

/// Writes alerts and predictions to the served store, feeds the summaries and (demo) prints alerts.
/// A store failure is logged and counted (`egizml_sink_errors_total{sink}`), not fatal: the other
/// sinks keep going.
pub struct ServiceSink {
    store: Option<Box<dyn AlertStore>>,
    /// `sqlite` or `postgres`, the `sink` label of the alert metrics.
    sink_name: &'static str,
    /// Readable alert lines (the demo's console).
    stdout: Option<LineWriter>,
    /// Log dead letters (the demo has no dead-letter sink).
    log_dead_letters: bool,
    batch: Vec<crate::event::Alert>,
    predictions: Vec<crate::rul::predict::Prediction>,
    fleet: Option<FleetFeed>,
}

impl ServiceSink {
    /// The demo's console: dead letters are logged, and unless `quiet` each alert is printed as a
    /// readable line on stdout.
    pub fn console(mut self, quiet: bool) -> anyhow::Result<ServiceSink> {
        if !quiet {
            self.stdout = Some(LineWriter::create(Path::new("-"))?);
        }
        self.log_dead_letters = true;
        Ok(self)
    }
}

impl OutputSink for ServiceSink {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        for (_, o) in outputs {
            if let Some(f) = self.fleet.as_mut() {
                f.observe(o);
            }
            match o {
                Output::Alert(a) => {
                    if let Some(out) = self.stdout.as_mut() {
                        out.write_line(&format!(
                            "ALERT {} {:<14} {:<8} {:<24} score={:.2} {}",
                            crate::decode::timestamp::format_rfc3339(a.ts),
                            a.thing_id,
                            a.severity,
                            a.alert_type,
                            a.score,
                            a.explanation
                        ))?;
                    }
                    if self.store.is_some() {
                        self.batch.push(a.clone());
                    }
                }
                Output::Dead(d) if self.log_dead_letters => {
                    tracing::warn!(reason = %d.reason, detail = %d.detail, "dead letter")
                }
                Output::Prediction(p) if self.store.is_some() => {
                    self.predictions.push((**p).clone())
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(f) = self.fleet.as_mut() {
            f.flush();
        }
        if let Some(store) = self.store.as_mut() {
            let m = crate::metrics::global();
            if !self.batch.is_empty() {
                match store.insert(&self.batch) {
                    Ok(_) => m
                        .alerts_emitted
                        .with_label_values(&[self.sink_name])
                        .inc_by(self.batch.len() as u64),
                    Err(e) => {
                        m.sink_error(self.sink_name);
                        tracing::error!(error = %e, "storing alerts failed");
                    }
                }
                self.batch.clear();
            }
            if !self.predictions.is_empty() {
                if let Err(e) = store.insert_predictions(&self.predictions) {
                    m.sink_error(self.sink_name);
                    tracing::error!(error = %e, "storing predictions failed");
                }
                self.predictions.clear();
            }
        }
        if let Some(out) = self.stdout.as_mut() {
            out.flush()?;
        }
        Ok(())
    }
}

/// Passes everything but score lines to `inner`: the summaries need scores that the configured sinks
/// did not ask for (`scores: false`).
pub struct WithoutScores(pub Box<dyn OutputSink>);

impl OutputSink for WithoutScores {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        if !outputs.iter().any(|(_, o)| matches!(o, Output::Score(_))) {
            return self.0.write(outputs);
        }
        let kept: Vec<(u64, Output)> = outputs
            .iter()
            .filter(|(_, o)| !matches!(o, Output::Score(_)))
            .cloned()
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        self.0.write(&kept)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.0.flush()
    }

    fn flush_start(&mut self) -> anyhow::Result<u64> {
        self.0.flush_start()
    }

    fn flushed(&mut self) -> anyhow::Result<u64> {
        self.0.flushed()
    }
}

/// `egizml run`: starts the API of the service config's `api` section (if any) and adds its sink to
/// `sinks`. When the summaries need scores the configured sinks did not ask for, those sinks are
/// shielded from them.
pub fn attach(
    cfg: &super::run::ServiceConfig,
    rules: &RulesHandle,
    stop: &Arc<AtomicBool>,
    sinks: &mut super::run::FanOut,
) -> anyhow::Result<Option<Service>> {
    let Some(api) = &cfg.api else {
        return Ok(None);
    };
    let sqlite = cfg.sinks.sqlite.as_ref().map(|s| s.path.as_path());
    let mut opts = ServeOptions::from_config(api, sqlite);
    opts.retrain = cfg.retrain.clone();
    let (service, sink) = start(opts, rules.clone(), Arc::clone(stop))?;
    if service.wants_scores() && !cfg.scores {
        let configured = std::mem::take(&mut sinks.sinks);
        sinks
            .sinks
            .push(Box::new(WithoutScores(Box::new(super::run::FanOut::new(
                configured,
            )))));
    }
    sinks.sinks.push(Box::new(sink));
    tracing::info!(listen = %service.local_addr(), "service API started");
    Ok(Some(service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn api(text: &str) -> Result<ApiConfig, ConfigError> {
        parse_yaml(text, "svc.yaml")
    }

    #[test]
    fn defaults_and_relative_paths() {
        let mut a = api("{}").unwrap();
        assert_eq!(a, ApiConfig::default());
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(a.retention.days, 90);
        assert!(a.fleet);
        let mut b = api(
            "store: data/a.db\nregistry:\n  path: models\ntrain_history:\n  file: h.jsonl\ntoken: t\n",
        )
        .unwrap();
        b.check(Path::new("/etc/egizml"), None).unwrap();
        assert_eq!(b.store.as_deref(), Some("/etc/egizml/data/a.db"));
        assert_eq!(
            b.registry.as_ref().unwrap().path,
            PathBuf::from("/etc/egizml/models")
        );
        assert_eq!(
            b.train_history.as_ref().unwrap().spec(),
            Ok(HistorySpec::File(PathBuf::from("/etc/egizml/h.jsonl")))
        );
        let mut sim = api("registry: {}\ntrain_history:\n  simulator: {things: 3}\n").unwrap();
        sim.check(Path::new("."), None).unwrap();
        assert!(matches!(
            sim.train_history.unwrap().spec(),
            Ok(HistorySpec::Simulator(s)) if s.things == 3
        ));
        assert_eq!(b.bearer_token().as_deref(), Some("t"));
        let mut pg = api("store: postgresql://u:p@db:5432/x\n").unwrap();
        pg.check(Path::new("/etc"), None).unwrap();
        assert_eq!(pg.store.as_deref(), Some("postgresql://u:p@db:5432/x"));
        a.check(Path::new("."), None).unwrap();
        assert_eq!(a.bearer_token(), None);
    }

    #[test]
    fn mistakes_name_line_and_field() {
        for (text, line, field) in [
            ("listen: 8080\n", 1, "listen"),
            ("fleet: true\nstore: ''\n", 2, "store"),
            ("token_env: 'NOT A NAME'\n", 1, "token_env"),
            ("retention:\n  dayz: 3\n", 2, "dayz"),
            ("train_history:\n  kafka: x\n", 2, "train_history"),
        ] {
            match api(text) {
                Err(ConfigError::Invalid {
                    line: l, message, ..
                }) => {
                    assert_eq!(l, line, "{text}: {message}");
                    assert!(message.contains(field), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let mut both = api("token: a\ntoken_env: PATH\n").unwrap();
        assert!(both
            .check(Path::new("."), None)
            .unwrap_err()
            .contains("token_env"));
        let mut same = api("store: a.db\n").unwrap();
        let err = same
            .check(Path::new("/x"), Some(Path::new("/x/a.db")))
            .unwrap_err();
        assert!(err.starts_with("api.store"), "{err}");
        let mut neither = api("registry: {}\ntrain_history: {}\n").unwrap();
        assert!(neither
            .check(Path::new("."), None)
            .unwrap_err()
            .contains("exactly one"));
        let mut fast = api("retention:\n  interval_s: 0\n").unwrap();
        assert!(fast
            .check(Path::new("."), None)
            .unwrap_err()
            .contains("api.retention.interval_s"));
    }
}
