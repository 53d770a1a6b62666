//! Background training for the REST API: one worker thread and a bounded queue, so training never
//! competes with the dataflow for more than one core and a burst of requests is refused (429) instead
//! of piling up. Jobs are kept in memory (the newest [`KEEP_FINISHED`] finished ones) for status polls.

use super::{feature_matrix, train, HistorySpec, TrainReport, TrainSpec};
use crate::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Finished jobs kept for status queries.
pub const KEEP_FINISHED: usize = 100;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// A job as `GET /api/v1/train/jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub job_id: String,
    pub scope: String,
    pub state: JobState,
    /// Epoch ms of submission, start and end.
    pub submitted_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// The registered version and its metrics, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<TrainReport>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0} training jobs are already waiting; try again later")]
    QueueFull(usize),
    #[error("the training worker has stopped")]
    Stopped,
}

struct Job {
    id: String,
    spec: TrainSpec,
}

struct Shared {
    jobs: Mutex<BTreeMap<u64, JobStatus>>,
}

/// The training queue and its worker. Cloning shares them; the worker ends when every clone is dropped.
#[derive(Clone)]
pub struct TrainJobs {
    tx: SyncSender<Job>,
    shared: Arc<Shared>,
    next: Arc<std::sync::atomic::AtomicU64>,
    capacity: usize,
    history: Arc<HistorySpec>,
}

impl TrainJobs {
    /// Starts the worker: jobs read `history` and register into `registry`; at most `capacity` wait.
    pub fn start(
        registry: Arc<dyn Registry>,
        history: HistorySpec,
        capacity: usize,
    ) -> std::io::Result<TrainJobs> {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel::<Job>(capacity);
        let shared = Arc::new(Shared {
            jobs: Mutex::new(BTreeMap::new()),
        });
        let history = Arc::new(history);
        let (worker_shared, worker_history) = (Arc::clone(&shared), Arc::clone(&history));
        std::thread::Builder::new()
            .name("egizml-train".into())
            .spawn(move || {
                for job in rx {
                    let key = key_of(&job.id);
                    worker_shared.update(key, |s| {
                        s.state = JobState::Running;
                        s.started_ms = Some(super::now_ms());
                    });
                    let result =
                        feature_matrix(&worker_history, &job.spec.scope, job.spec.scope_kind)
                            .and_then(|data| {
                                train(&job.spec, data, registry.as_ref(), &mut |_| {})
                            });
                    worker_shared.update(key, |s| {
                        s.finished_ms = Some(super::now_ms());
                        match result {
                            Ok(report) => {
                                s.state = JobState::Succeeded;
                                s.report = Some(report);
                            }
                            Err(e) => {
                                tracing::warn!(job = %job.id, error = %e, "training job failed");
                                s.state = JobState::Failed;
                                s.error = Some(e.to_string());
                            }
                        }
                    });
                    worker_shared.forget_old();
                }
            })?;
        Ok(TrainJobs {
            tx,
            shared,
            next: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            capacity,
            history,
        })
    }

    /// The history the jobs train on.
    pub fn history(&self) -> &HistorySpec {
        &self.history
    }

    /// Queues a job; returns its id.
    pub fn submit(&self, spec: TrainSpec) -> Result<JobStatus, SubmitError> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("train-{n}");
        let status = JobStatus {
            job_id: id.clone(),
            scope: spec.scope.clone(),
            state: JobState::Queued,
            submitted_ms: super::now_ms(),
            started_ms: None,
            finished_ms: None,
            report: None,
            error: None,
        };
        // Recorded before sending, so the worker always finds the entry it updates.
        self.shared.lock().insert(n, status.clone());
        match self.tx.try_send(Job { id, spec }) {
            Ok(()) => Ok(status),
            Err(e) => {
                self.shared.lock().remove(&n);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull(self.capacity),
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// A job's status, if it is known.
    pub fn status(&self, id: &str) -> Option<JobStatus> {
        let key = id.strip_prefix("train-")?.parse::<u64>().ok()?;
        self.shared.lock().get(&key).cloned()
    }
}

fn key_of(id: &str) -> u64 {
    id.strip_prefix("train-")
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, JobStatus>> {
        // A job status is plain data: a panic while holding the lock cannot leave it half-updated in a
        // way that matters.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, key: u64, f: impl FnOnce(&mut JobStatus)) {
        if let Some(s) = self.lock().get_mut(&key) {
            f(s);
        }
    }

    /// Drops the oldest finished jobs beyond [`KEEP_FINISHED`].
    fn forget_old(&self) {
        let mut jobs = self.lock();
        let finished: Vec<u64> = jobs
            .iter()
            .filter(|(_, s)| matches!(s.state, JobState::Succeeded | JobState::Failed))
            .map(|(k, _)| *k)
            .collect();
        for k in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            jobs.remove(k);
        }
    }
}
