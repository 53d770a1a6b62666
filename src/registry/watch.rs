//! The registry models the stream scores with, kept current without a restart.
//!
//! [`ActiveModels`] holds an immutable snapshot (scope -> active model) behind an `Arc`; a watcher thread
//! polls the registry's active versions every `poll` and, when one changed, loads the new version and
//! publishes a new snapshot with a higher generation. Workers compare the generation (one atomic load)
//! with the one they resolved their things against, so a swap reaches every thing at its next reading,
//! and the reading is scored either entirely by the old model or entirely by the new one.

use super::{Registry, RegistryError};
use crate::event::Name;
use crate::models::Model;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// One active registry version, ready to score.
#[derive(Debug)]
pub struct ActiveModel {
    /// `<scope>/v<N>`: what alerts scored by it carry as `model_version`.
    pub id: String,
    /// The model's input features, in its order (names of the stream's per-thing features).
    pub features: Vec<Name>,
    /// Hash of the SQL feature set its features came from (`None`: the built-in features).
    pub sql_hash: Option<String>,
    pub model: Arc<dyn Model>,
}

impl ActiveModel {
    /// Bytes this entry holds: the struct and its `Arc` counters, its id, feature names and SQL hash,
    /// and the model ([`Model::memory_bytes`]) with its `Arc` counters.
    pub fn memory_bytes(&self) -> usize {
        let arc_counts = 2 * std::mem::size_of::<usize>();
        let names: usize = self
            .features
            .iter()
            .filter(|f| f.is_heap_allocated())
            .map(|f| f.capacity())
            .sum();
        std::mem::size_of::<ActiveModel>()
            + arc_counts
            + self.id.capacity()
            + self.features.capacity() * std::mem::size_of::<Name>()
            + names
            + self.sql_hash.as_ref().map_or(0, |h| h.capacity())
            + arc_counts
            + self.model.memory_bytes()
    }
}

/// Active models by scope (a thing id or an equipment class) at one generation.
#[derive(Debug, Default)]
pub struct ModelSnapshot {
    pub generation: u64,
    pub by_scope: FxHashMap<String, Arc<ActiveModel>>,
}

impl ModelSnapshot {
    /// The model that scores a thing: its own scope first, else its equipment class.
    pub fn resolve(&self, thing_id: &str, equipment_type: &str) -> Option<&Arc<ActiveModel>> {
        self.by_scope
            .get(thing_id)
            .or_else(|| self.by_scope.get(equipment_type))
    }
}

struct Shared {
    snapshot: RwLock<Arc<ModelSnapshot>>,
    generation: AtomicU64,
}

/// A shared, hot-swappable view of the registry's active anomaly models.
#[derive(Clone)]
pub struct ActiveModels {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ActiveModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.current();
        let mut ids: Vec<&str> = snap.by_scope.values().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        write!(f, "ActiveModels(gen {}, {:?})", snap.generation, ids)
    }
}

/// Model types the stream scores with (the registry may hold others, e.g. RUL regressors).
const STREAM_MODEL_TYPES: [&str; 2] = ["isolation_forest", "autoencoder"];

impl ActiveModels {
    /// Loads every scope's active anomaly model now (a model that fails to load fails the start), then
    /// keeps watching the registry every `poll` on a background thread for as long as a handle lives.
    pub fn watch(
        registry: Arc<dyn Registry>,
        poll: Duration,
    ) -> Result<ActiveModels, RegistryError> {
        let mut watcher = Watcher {
            registry,
            poll,
            shared: Weak::new(),
            loaded: BTreeMap::new(),
            failed: BTreeMap::new(),
        };
        let (models, _) = watcher.refresh(&FxHashMap::default(), true)?;
        let handle = ActiveModels::from_models(models);
        watcher.shared = Arc::downgrade(&handle.shared);
        std::thread::Builder::new()
            .name("egizml-models-watch".into())
            .spawn(move || watcher.run())
            .map_err(|source| RegistryError::Io {
                path: "models watcher thread".into(),
                source,
            })?;
        Ok(handle)
    }

    /// A fixed set of models (no registry, no watcher), e.g. for tests and benchmarks.
    pub fn fixed(models: impl IntoIterator<Item = (String, ActiveModel)>) -> ActiveModels {
        ActiveModels::from_models(
            models
                .into_iter()
                .map(|(scope, m)| (scope, Arc::new(m)))
                .collect(),
        )
    }

    fn from_models(by_scope: FxHashMap<String, Arc<ActiveModel>>) -> ActiveModels {
        ActiveModels {
            shared: Arc::new(Shared {
                snapshot: RwLock::new(Arc::new(ModelSnapshot {
                    generation: 1,
                    by_scope,
                })),
                generation: AtomicU64::new(1),
            }),
        }
    }

    /// The generation of the current snapshot, without taking the lock.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<ModelSnapshot> {
        self.shared
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes a new snapshot (the watcher's job; public so tests can swap by hand).
    pub fn replace(&self, by_scope: FxHashMap<String, Arc<ActiveModel>>) -> u64 {
        let mut slot = self
            .shared
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let generation = slot.generation + 1;
        *slot = Arc::new(ModelSnapshot {
            generation,
            by_scope,
        });
        self.shared.generation.store(generation, Ordering::Release);
        generation
    }
}

struct Watcher {
    registry: Arc<dyn Registry>,
    poll: Duration,
    shared: Weak<Shared>,
    /// Scope -> version currently in the snapshot.
    loaded: BTreeMap<String, u32>,
    /// Scope -> active version that failed to load (not retried until the active version changes).
    failed: BTreeMap<String, u32>,
}

impl Watcher {
    fn run(mut self) {
        loop {
            std::thread::sleep(self.poll);
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let handle = ActiveModels { shared };
            let current = handle.current();
            match self.refresh(&current.by_scope, false) {
                Ok((models, true)) => {
                    let generation = handle.replace(models);
                    tracing::info!(generation, models = ?self.loaded, "active models swapped");
                }
                Ok((_, false)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "model registry unreadable; keeping the current models")
                }
            }
        }
    }

    /// Reads the active versions and loads what changed. Returns the new scope map and whether it
    /// differs from `current`. At start (`strict`) a version that fails to load is an error; later it
    /// is logged once and its scope keeps (or drops to) no model rather than a wrong one.
    fn refresh(
        &mut self,
        current: &FxHashMap<String, Arc<ActiveModel>>,
        strict: bool,
    ) -> Result<(FxHashMap<String, Arc<ActiveModel>>, bool), RegistryError> {
        let active = self.registry.active_versions()?;
        let mut changed = false;
        let mut next: FxHashMap<String, Arc<ActiveModel>> = FxHashMap::default();
        for (scope, version) in &active {
            if self.loaded.get(scope) == Some(version) {
                if let Some(m) = current.get(scope) {
                    next.insert(scope.clone(), Arc::clone(m));
                }
                continue;
            }
            if self.failed.get(scope) == Some(version) {
                continue;
            }
            match self.load(scope, *version) {
                Ok(Some(m)) => {
                    tracing::info!(model = %m.id, features = m.features.len(), "model loaded for scoring");
                    next.insert(scope.clone(), Arc::new(m));
                    self.loaded.insert(scope.clone(), *version);
                    self.failed.remove(scope);
                    changed = true;
                }
                // Not an anomaly model (e.g. a RUL regressor): not the stream's business.
                Ok(None) => {
                    self.failed.insert(scope.clone(), *version);
                    if self.loaded.remove(scope).is_some() {
                        changed = true;
                    }
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    tracing::error!(scope = %scope, version, error = %e, "active model failed to load; the scope is scored without a registry model");
                    self.failed.insert(scope.clone(), *version);
                    if self.loaded.remove(scope).is_some() {
                        changed = true;
                    }
                }
            }
        }
        // Scopes whose active version disappeared (deactivated or removed).
        let before = self.loaded.len();
        self.loaded.retain(|scope, _| active.contains_key(scope));
        changed |= self.loaded.len() != before;
        Ok((next, changed))
    }

    fn load(&self, scope: &str, version: u32) -> Result<Option<ActiveModel>, RegistryError> {
        let info = super::ModelRef {
            scope: scope.to_string(),
            version: Some(version),
        }
        .find(self.registry.as_ref())?;
        if !STREAM_MODEL_TYPES.contains(&info.meta.model_type.as_str()) {
            return Ok(None);
        }
        let (meta, model) = self.registry.load(scope, version)?;
        if model.n_features() != meta.features.len() {
            return Err(RegistryError::Corrupt {
                path: format!("{scope}/v{version}").into(),
                reason: format!(
                    "the model takes {} features but its metadata names {}",
                    model.n_features(),
                    meta.features.len()
                ),
            });
        }
        Ok(Some(ActiveModel {
            id: meta.id.clone(),
            features: meta
                .features
                .iter()
                .map(|f| Name::from(f.as_str()))
                .collect(),
            sql_hash: meta.sql_hash.clone(),
            model,
        }))
    }
}
