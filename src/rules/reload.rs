//! Shared, hot-reloadable rules.

use super::RuleSet;
use crate::config::ConfigError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

struct Shared {
    rules: RwLock<Arc<RuleSet>>,
    generation: AtomicU64,
    path: Option<PathBuf>,
    /// The last reload failure, cleared by the next successful load.
    last_error: Mutex<Option<String>>,
}

/// Shared, hot-reloadable rules: a watcher thread re-reads the file when it changes; an invalid file is
/// logged and ignored (the previous rules stay).
///
/// Cloning is cheap and every clone sees the same rules. The watcher holds only a weak reference and
/// stops once the last handle is dropped.
#[derive(Clone)]
pub struct RulesHandle {
    shared: Arc<Shared>,
}

impl RulesHandle {
    /// Loads `path` (fail fast on error) and starts watching it every `interval_s` seconds. `None` gives
    /// an empty rule set and no watcher.
    pub fn watch(path: Option<&Path>, interval_s: f64) -> Result<RulesHandle, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::new(RuleSet::empty(), None));
        };
        let before = file_stamp(path);
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.display().to_string(),
            source,
        })?;
        let rules = RuleSet::parse(&text, &path.display().to_string())?;
        let handle = Self::new(rules, Some(path.to_path_buf()));
        let interval = if interval_s.is_finite() && interval_s > 0.0 {
            Duration::from_secs_f64(interval_s.max(0.001))
        } else {
            Duration::from_secs(1)
        };
        let watcher = Watcher {
            shared: Arc::downgrade(&handle.shared),
            path: path.to_path_buf(),
            interval,
            stamp: before,
            settling: before,
            last_text: xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        };
        std::thread::Builder::new()
            .name("egizml-rules-watch".into())
            .spawn(move || watcher.run())
            .map_err(|source| ConfigError::Io {
                file: path.display().to_string(),
                source,
            })?;
        tracing::info!(
            file = %path.display(),
            rules = handle.current().0.len(),
            interval_s = interval.as_secs_f64(),
            "rules loaded; watching for changes"
        );
        Ok(handle)
    }

    /// A handle over fixed rules (no file, no watcher).
    pub fn fixed(rules: RuleSet) -> RulesHandle {
        Self::new(rules, None)
    }

    fn new(mut rules: RuleSet, path: Option<PathBuf>) -> RulesHandle {
        rules.generation = 1;
        RulesHandle {
            shared: Arc::new(Shared {
                rules: RwLock::new(Arc::new(rules)),
                generation: AtomicU64::new(1),
                path,
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Current rules and their generation (bumped on every successful reload).
    pub fn current(&self) -> (Arc<RuleSet>, u64) {
        let rules = self
            .shared
            .rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let generation = rules.generation;
        (rules, generation)
    }

    /// The current generation without touching the lock: compare it with a cached one to know whether
    /// [`RulesHandle::current`] has something new.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Installs new rules (e.g. from `PUT /rules`) and returns their generation. The file watcher, if
    /// any, replaces them again the next time the file changes.
    pub fn replace(&self, mut rules: RuleSet) -> u64 {
        let mut slot = self.shared.rules.write().unwrap_or_else(|e| e.into_inner());
        let generation = slot.generation + 1;
        rules.generation = generation;
        *slot = Arc::new(rules);
        // Clear the error before publishing the generation: a reader that sees the new generation must
        // not see the previous failure still reported.
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.shared.generation.store(generation, Ordering::Release);
        generation
    }

    /// The watched file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// The message of the last failed reload, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, message: String) {
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(message);
    }
}

/// Modification time and length of a file.
type Stamp = Option<(SystemTime, u64)>;

fn file_stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct Watcher {
    shared: Weak<Shared>,
    path: PathBuf,
    interval: Duration,
    /// Stamp of the file when it was last read.
    stamp: Stamp,
    /// Stamp seen by the previous poll: a file is read only once two polls in a row see the same stamp,
    /// so a file being written is not read half-way (an empty file is also held back while fresh).
    settling: Stamp,
    /// Hash of the text last read (loaded or rejected), so one bad version is reported once.
    last_text: u64,
}

/// Some file systems keep modification times in whole seconds, so two writes within one second can leave
/// the stamp unchanged; while the file is this young its content is compared as well.
const FRESH: Duration = Duration::from_secs(2);

impl Watcher {
    fn run(mut self) {
        loop {
            std::thread::sleep(self.interval);
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            self.poll(&RulesHandle { shared });
        }
    }

    fn poll(&mut self, handle: &RulesHandle) {
        let stamp = file_stamp(&self.path);
        let Some((modified, _)) = stamp else {
            if self.stamp.is_some() {
                tracing::warn!(file = %self.path.display(), "rules file unreadable; keeping the current rules");
                self.stamp = None;
            }
            return;
        };
        let fresh = SystemTime::now()
            .duration_since(modified)
            .map_or(true, |age| age < FRESH);
        if stamp == self.stamp && !fresh {
            return;
        }
        if stamp != self.settling {
            self.settling = stamp;
            return;
        }
        self.stamp = stamp;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read rules file; keeping the current rules");
                return;
            }
        };
        if text.trim().is_empty() && fresh {
            // Most likely a writer between truncating and writing the file. A deliberately emptied
            // file ("no rules") is loaded once it is FRESH-old; until then, look again next poll.
            self.stamp = None;
            return;
        }
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        if hash == self.last_text {
            return;
        }
        self.last_text = hash;
        match RuleSet::parse(&text, &self.path.display().to_string()) {
            Ok(rules) => {
                let n = rules.len();
                let generation = handle.replace(rules);
                tracing::info!(file = %self.path.display(), rules = n, generation, "rules reloaded");
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "invalid rules file; keeping the previous rules");
                handle.set_error(message);
            }
        }
    }
}
