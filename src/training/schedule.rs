//! Scheduled retraining: the service config's `retrain` section retrains a list of scopes every
//! `every` (a week by default) through the same one-core job queue as `POST /api/v1/train/{id}`.
//!
//! A scope is due when its newest registered version is older than `every` (read from the registry's
//! `trained_at`, not from when this process started), so a service restarted daily still retrains
//! weekly, and a scope with no version at all is trained right away. A scope whose job is still queued
//! or running is not submitted again; after a failed or refused submission it is retried after
//! `retry_after` (the smaller of `every` and an hour), not at once.

use super::jobs::{JobState, TrainJobs};
use super::{ActivatePolicy, ModelKind, ModelParams, TrainSpec};
use crate::registry::{Registry, RegistryError, ScopeKind};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `retrain` section of the service config. Models are registered in `api.registry` and learn from
/// `api.train_history` (both must be set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// How often each scope is retrained, e.g. `7d`, `12h`, `30m`, `90s` (default `7d`).
    #[serde(
        default = "default_every",
        deserialize_with = "duration",
        serialize_with = "show_duration"
    )]
    pub every: Duration,
    /// Thing ids or equipment classes to retrain (at least one).
    pub scopes: Vec<String>,
    /// Whether `scopes` are things (`thing`) or equipment classes (`equipment_class`, the default).
    #[serde(default = "default_scope_kind")]
    pub scope_kind: ScopeKind,
    /// Model family (default `isolation_forest`).
    #[serde(default)]
    pub model: ModelKind,
    /// Hyper-parameters over the family's defaults (checked at start).
    #[serde(default)]
    pub params: serde_json::Value,
    /// Share of the history (the earliest rows) used for training; the rest validates.
    #[serde(default = "default_train_fraction")]
    pub train_fraction: f64,
    /// When the new version becomes active (default `if_not_worse`: a retrained model that validates
    /// worse than the active one is registered but not activated).
    #[serde(default = "default_activate")]
    pub activate: ActivatePolicy,
    /// Metric compared by `if_not_worse` (default `f1`).
    #[serde(default = "default_metric")]
    pub compare_metric: String,
}

fn default_every() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_scope_kind() -> ScopeKind {
    ScopeKind::EquipmentClass
}
fn default_train_fraction() -> f64 {
    0.8
}
fn default_activate() -> ActivatePolicy {
    ActivatePolicy::IfNotWorse
}
fn default_metric() -> String {
    "f1".into()
}

/// A humantime duration (`7d`, `1h 30m`), checked while it is read so an error names the value's line.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 7d, 12h, 30m or 90s")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            let d = humantime::parse_duration(v.trim()).map_err(|e| {
                E::custom(format!("`{v}` is not a duration ({e}); e.g. 7d, 12h, 90s"))
            })?;
            if d < Duration::from_secs(1) {
                return Err(E::custom(format!("`{v}`: must be at least 1s")));
            }
            Ok(d)
        }
    }
    d.deserialize_str(V)
}

fn show_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl RetrainConfig {
    /// Cross-field checks; messages start with the field (`retrain.` included).
    pub fn check(&self) -> Result<(), String> {
        if self.scopes.is_empty() || self.scopes.iter().any(|s| s.trim().is_empty()) {
            return Err("retrain.scopes: list at least one thing id or equipment class".into());
        }
        if !(self.train_fraction > 0.0 && self.train_fraction < 1.0) {
            return Err(format!(
                "retrain.train_fraction: must be in (0, 1), got {}",
                self.train_fraction
            ));
        }
        ModelParams::from_json(self.model, &self.params)
            .map_err(|e| format!("retrain.params: {e}"))?;
        Ok(())
    }

    /// The job of one scope.
    pub fn spec(&self, scope: &str) -> Result<TrainSpec, String> {
        let mut spec = TrainSpec::new(scope, self.scope_kind);
        spec.params = ModelParams::from_json(self.model, &self.params)?;
        spec.train_fraction = self.train_fraction;
        spec.activate = self.activate;
        spec.compare_metric = self.compare_metric.clone();
        Ok(spec)
    }

    /// How long to wait after a failed or refused attempt.
    pub fn retry_after(&self) -> Duration {
        self.every.min(Duration::from_secs(3600))
    }
}

/// When a scope is next due (epoch ms): `every` after the later of its newest version's training time
/// and this process's last attempt, or now when it has neither.
pub fn next_due_ms(
    newest_trained_ms: Option<i64>,
    last_attempt: Option<(i64, bool)>,
    every: Duration,
    retry_after: Duration,
) -> i64 {
    let after = |t: i64, d: Duration| t.saturating_add(d.as_millis() as i64);
    let from_version = newest_trained_ms.map(|t| after(t, every));
    let from_attempt = last_attempt.map(|(t, ok)| after(t, if ok { every } else { retry_after }));
    match (from_version, from_attempt) {
        (Some(v), Some(a)) => v.max(a),
        (Some(v), None) => v,
        (None, Some(a)) => a,
        (None, None) => i64::MIN,
    }
}

/// The newest version's training time of `scope` (epoch ms), `None` when it has no version.
fn newest_trained_ms(registry: &dyn Registry, scope: &str) -> Result<Option<i64>, RegistryError> {
    let versions = match registry.list(Some(scope)) {
        Ok(v) => v,
        Err(RegistryError::UnknownScope(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(versions
        .iter()
        .filter_map(|v| crate::decode::timestamp::parse_rfc3339(&v.meta.trained_at))
        .max())
}

/// The running schedule; [`Retrainer::stop`] ends it (a job already submitted still runs).
pub struct Retrainer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Retrainer {
    /// Starts the schedule thread. The config must have passed [`RetrainConfig::check`].
    pub fn spawn(
        cfg: RetrainConfig,
        jobs: TrainJobs,
        registry: Arc<dyn Registry>,
    ) -> std::io::Result<Retrainer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("egizml-retrain".into())
            .spawn(move || schedule_loop(&cfg, &jobs, registry.as_ref(), &stop_thread))?;
        Ok(Retrainer {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Retrainer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Per scope: the job in flight and the last attempt (epoch ms, whether it succeeded).
#[derive(Default)]
struct ScopeState {
    job: Option<String>,
    last_attempt: Option<(i64, bool)>,
}

fn schedule_loop(
    cfg: &RetrainConfig,
    jobs: &TrainJobs,
    registry: &dyn Registry,
    stop: &AtomicBool,
) {
    let _span = tracing::info_span!("retrain").entered();
    let metrics = crate::metrics::global();
    let mut scopes: BTreeMap<String, ScopeState> = cfg
        .scopes
        .iter()
        .map(|s| (s.clone(), ScopeState::default()))
        .collect();
    // How often the registry is looked at: often enough for a short test period, at most once a minute.
    let check_every = (cfg.every / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
    while !stop.load(Ordering::SeqCst) {
        let now = super::now_ms();
        for (scope, st) in scopes.iter_mut() {
            // A job in flight: wait for it; once it ends, that is the attempt to schedule from.
            if let Some(id) = &st.job {
                match jobs.status(id).map(|s| s.state) {
                    Some(JobState::Queued | JobState::Running) => continue,
                    Some(JobState::Succeeded) => st.last_attempt = Some((now, true)),
                    Some(JobState::Failed) | None => st.last_attempt = Some((now, false)),
                }
                st.job = None;
            }
            let newest = match newest_trained_ms(registry, scope) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(scope = %scope, error = %e, "retrain: cannot read the registry");
                    continue;
                }
            };
            let due = next_due_ms(newest, st.last_attempt, cfg.every, cfg.retry_after());
            metrics
                .retrain_next_due
                .with_label_values(&[scope.as_str()])
                .set(due.max(0) as f64 / 1e3);
            if due > now {
                continue;
            }
            let outcome = match cfg
                .spec(scope)
                .map_err(|e| e.to_string())
                .and_then(|spec| jobs.submit(spec).map_err(|e| e.to_string()))
            {
                Ok(status) => {
                    tracing::info!(scope = %scope, job = %status.job_id, "retrain: job submitted");
                    st.job = Some(status.job_id);
                    "submitted"
                }
                Err(e) => {
                    tracing::warn!(scope = %scope, error = %e, "retrain: job not submitted");
                    st.last_attempt = Some((now, false));
                    "refused"
                }
            };
            metrics
                .retrain_jobs
                .with_label_values(&[scope.as_str(), outcome])
                .inc();
        }
        let until = std::time::Instant::now() + check_every;
        while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    const H: i64 = 3_600_000;

    #[test]
    fn due_from_the_newest_version_not_from_process_start() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let hour = Duration::from_secs(3600);
        // Nothing registered, nothing tried: due at once.
        assert_eq!(next_due_ms(None, None, week, hour), i64::MIN);
        // A version trained at t: due a week later, whatever this process did.
        assert_eq!(
            next_due_ms(Some(10 * H), None, week, hour),
            10 * H + 168 * H
        );
        // A failed attempt after that version: retried an hour after the attempt if that is later.
        assert_eq!(
            next_due_ms(Some(10 * H), Some((200 * H, false)), week, hour),
            201 * H
        );
        assert_eq!(
            next_due_ms(Some(10 * H), Some((11 * H, false)), week, hour),
            178 * H
        );
        // A succeeded attempt whose version was not registered (or not readable): a full period.
        assert_eq!(next_due_ms(None, Some((5 * H, true)), week, hour), 173 * H);
    }

    #[test]
    fn config_defaults_and_errors_name_the_field() {
        let c: RetrainConfig = parse_yaml("scopes: [oven]\n", "svc.yaml").unwrap();
        assert_eq!(c.every, Duration::from_secs(604_800));
        assert_eq!(c.scope_kind, ScopeKind::EquipmentClass);
        assert_eq!(c.activate, ActivatePolicy::IfNotWorse);
        assert_eq!(c.retry_after(), Duration::from_secs(3600));
        c.check().unwrap();
        let c: RetrainConfig = parse_yaml("every: 90s\nscopes: [oven]\n", "svc.yaml").unwrap();
        assert_eq!(c.every, Duration::from_secs(90));
        assert_eq!(c.retry_after(), Duration::from_secs(90));

        let e = parse_yaml::<RetrainConfig>("scopes: [oven]\nevery: weekly\n", "svc.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("svc.yaml:2:") && e.contains("every") && e.contains("weekly"),
            "{e}"
        );
        let e = parse_yaml::<RetrainConfig>("scopes: [oven]\nevery: 10ms\n", "svc.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1s"), "{e}");
        let c: RetrainConfig = parse_yaml("scopes: []\n", "svc.yaml").unwrap();
        assert!(c.check().unwrap_err().starts_with("retrain.scopes"));
        let c: RetrainConfig =
            parse_yaml("scopes: [oven]\nparams: {n_estimators: 0}\n", "svc.yaml").unwrap();
        assert!(c.check().unwrap_err().starts_with("retrain.params"));
    }

    #[test]
    fn retrains_when_due_and_not_before() {
        use crate::registry::LocalRegistry;
        use crate::training::{HistorySpec, SimulatorHistory};
        let dir = tempfile::tempdir().unwrap();
        let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::new(dir.path().join("models")));
        let history = HistorySpec::Simulator(SimulatorHistory {
            things: 3,
            points: 3_000,
            seed: 1,
            faults_per_1000: 3.0,
        });
        let jobs = TrainJobs::start(Arc::clone(&registry), history, 2).unwrap();
        let cfg: RetrainConfig = parse_yaml(
            "every: 2s\nscopes: [oven]\nactivate: always\nparams: {n_estimators: 10}\n",
            "svc.yaml",
        )
        .unwrap();
        cfg.check().unwrap();
        let r = Retrainer::spawn(cfg, jobs, Arc::clone(&registry)).unwrap();
        // The first version right away, the second about 2 s after the first was trained.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let versions = loop {
            let v = registry.list(Some("oven")).unwrap_or_default();
            if v.len() >= 2 || std::time::Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        r.stop();
        assert!(
            versions.len() >= 2,
            "{} versions after 60 s",
            versions.len()
        );
        let mut at: Vec<i64> = versions
            .iter()
            .map(|v| crate::decode::timestamp::parse_rfc3339(&v.meta.trained_at).unwrap())
            .collect();
        at.sort();
        assert!(
            at[1] - at[0] >= 2_000,
            "retrained {} ms apart",
            at[1] - at[0]
        );
        // The newest is active (policy always) and was trained for the class.
        let newest = versions.iter().max_by_key(|v| v.meta.version).unwrap();
        assert!(newest.active);
        assert_eq!(newest.meta.scope_kind, ScopeKind::EquipmentClass);
    }
}
