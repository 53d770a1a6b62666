//! The directory-backed [`Registry`].

use super::*;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Models under one root directory (created on first write).
#[derive(Clone, Debug)]
pub struct LocalRegistry {
    root: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ActiveFile {
    version: u32,
    /// Versions active before, oldest first: what rollback returns to.
    #[serde(default)]
    previous: Vec<u32>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RegistryError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(crate) fn check_scope(scope: &str) -> Result<(), RegistryError> {
    let ok = !scope.is_empty()
        && !scope.starts_with('.')
        && scope
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidScope(scope.to_string()))
    }
}

impl LocalRegistry {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalRegistry { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn version_dir(&self, scope: &str, version: u32) -> PathBuf {
        self.root.join(scope).join(format!("v{version}"))
    }

    /// Version numbers present for `scope`, ascending.
    fn versions(&self, scope: &str) -> Result<Vec<u32>, RegistryError> {
        let dir = self.root.join(scope);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            if let Some(v) = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                if entry.path().join("meta.json").is_file() {
                    out.push(v);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn scopes(&self) -> Result<Vec<String>, RegistryError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            if let Some(name) = entry.file_name().to_str() {
                if entry.path().is_dir() && check_scope(name).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_active(&self, scope: &str) -> Result<Option<ActiveFile>, RegistryError> {
        let path = self.root.join(scope).join("active.json");
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    fn write_active(&self, scope: &str, active: &ActiveFile) -> Result<(), RegistryError> {
        let path = self.root.join(scope).join("active.json");
        let bytes = serde_json::to_vec_pretty(active).expect("active file serialises");
        write_atomic(&path, &bytes)
    }

    fn meta(&self, scope: &str, version: u32) -> Result<ModelMeta, RegistryError> {
        let path = self.version_dir(scope, version).join("meta.json");
        if !path.exists() {
            return Err(RegistryError::UnknownVersion {
                scope: scope.to_string(),
                version,
            });
        }
        read_json(&path)
    }

    /// Reads and checks a model file.
    pub fn read_model(path: &Path) -> Result<StoredModel, RegistryError> {
        let bytes = fs::read(path).map_err(io(path))?;
        ModelFile::parse(&bytes, path)
    }
}

impl Registry for LocalRegistry {
    fn register(&self, new: NewModel) -> Result<ModelMeta, RegistryError> {
        check_scope(&new.scope)?;
        check_family(self, &new.scope, new.model.family())?;
        let version = self.versions(&new.scope)?.last().copied().unwrap_or(0) + 1;
        let dir = self.version_dir(&new.scope, version);
        let meta = new_meta(&new, version);
        let model_bytes = ModelFile::bytes(new.model);
        // The model before its metadata: a version is listed only once meta.json exists.
        write_atomic(&dir.join("model.json"), &model_bytes)?;
        write_atomic(
            &dir.join("meta.json"),
            &serde_json::to_vec_pretty(&meta).expect("metadata serialises"),
        )?;
        Ok(meta)
    }

    fn list(&self, scope: Option<&str>) -> Result<Vec<VersionInfo>, RegistryError> {
        let scopes = match scope {
            Some(s) => {
                check_scope(s)?;
                vec![s.to_string()]
            }
            None => self.scopes()?,
        };
        let mut out = Vec::new();
        for s in scopes {
            let active = self.read_active(&s)?.map(|a| a.version);
            for v in self.versions(&s)? {
                out.push(VersionInfo {
                    meta: self.meta(&s, v)?,
                    active: active == Some(v),
                });
            }
        }
        Ok(out)
    }

    fn load_stored(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<(ModelMeta, StoredModel), RegistryError> {
        let started = std::time::Instant::now();
        check_scope(scope)?;
        let meta = self.meta(scope, version)?;
        let model = Self::read_model(&self.version_dir(scope, version).join("model.json"))?;
        crate::metrics::global()
            .model_load_time
            .observe(started.elapsed().as_secs_f64());
        Ok((meta, model))
    }

    fn activate(&self, scope: &str, version: u32) -> Result<(), RegistryError> {
        check_scope(scope)?;
        self.meta(scope, version)?;
        let mut active = self.read_active(scope)?.unwrap_or_default();
        if active.version == version {
            return Ok(());
        }
        if active.version != 0 {
            active.previous.push(active.version);
        }
        active.version = version;
        self.write_active(scope, &active)
    }

    fn rollback(&self, scope: &str) -> Result<u32, RegistryError> {
        check_scope(scope)?;
        let mut active = match self.read_active(scope)? {
            Some(a) => a,
            // Versions but never an active one: nothing to go back to.
            None if !self.versions(scope)?.is_empty() => ActiveFile::default(),
            None => return Err(RegistryError::UnknownScope(scope.to_string())),
        };
        let version = active
            .previous
            .pop()
            .ok_or_else(|| RegistryError::NothingToRollBack {
                scope: scope.to_string(),
            })?;
        active.version = version;
        self.write_active(scope, &active)?;
        Ok(version)
    }

    /// One small file per scope (`active.json`), no metadata read.
    fn active_versions(&self) -> Result<std::collections::BTreeMap<String, u32>, RegistryError> {
        let mut out = std::collections::BTreeMap::new();
        for scope in self.scopes()? {
            if let Some(v) = self
                .read_active(&scope)?
                .map(|a| a.version)
                .filter(|v| *v > 0)
            {
                out.insert(scope, v);
            }
        }
        Ok(out)
    }

    fn active(&self, scope: &str) -> Result<Option<u32>, RegistryError> {
        check_scope(scope)?;
        Ok(self
            .read_active(scope)?
            .map(|a| a.version)
            .filter(|v| *v > 0))
    }
}
