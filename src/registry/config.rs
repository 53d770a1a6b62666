//! Which registry backend to use: the `registry` section of the service config, `--registry` on the
//! command line.

use super::{LocalRegistry, Registry, RegistryError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The model registry: a local directory (default `egizml-data/models`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Directory of the local registry (relative to the config file's folder).
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

fn default_path() -> PathBuf {
    PathBuf::from("egizml-data/models")
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            path: default_path(),
        }
    }
}

impl RegistryConfig {
    /// A local directory registry.
    pub fn local(path: &Path) -> RegistryConfig {
        RegistryConfig {
            path: path.to_path_buf(),
        }
    }

    /// Resolves relative paths against `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
    }

    /// Opens the configured backend.
    pub fn open(&self) -> Result<Arc<dyn Registry>, RegistryError> {
        Ok(Arc::new(LocalRegistry::new(&self.path)))
    }
}
