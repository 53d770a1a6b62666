//! Which registry backend to use: a `registry` section in a config file, `--registry` on the command
//! line.
//!
//! ```yaml
//! registry: {path: egizml-data/models}                  # a local directory (the default)
//! registry:                                             # or an MLflow tracking server
//!   mlflow: {tracking_uri: "http://127.0.0.1:5000", model_prefix: "egizml."}
//! ```

use super::{LocalRegistry, MlflowRegistry, Registry, RegistryError};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The model registry: a local directory (default `egizml-data/models`), or an MLflow tracking server.
/// Give `path` or `mlflow`, not both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRegistryConfig", into = "RawRegistryConfig")]
pub struct RegistryConfig {
    /// Directory of the local registry (relative to the config file's folder). Unused with `mlflow`.
    pub path: PathBuf,
    /// An MLflow tracking server instead of the local directory.
    pub mlflow: Option<MlflowConfig>,
}

/// The registry in an MLflow tracking server, through its REST API. The server must proxy artifacts
/// (`mlflow server --serve-artifacts`, the default since MLflow 2.0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowConfig {
    /// The tracking server, `http://HOST:PORT` (plain HTTP: this build has no TLS client).
    #[serde(deserialize_with = "tracking_uri")]
    pub tracking_uri: String,
    /// Registered-model name = this prefix + the scope (thing id or equipment class). Letters, digits,
    /// '.', '_', '-'.
    #[serde(default = "default_prefix", deserialize_with = "model_prefix")]
    pub model_prefix: String,
    /// MLflow experiment the training runs are logged in (created when missing).
    #[serde(default = "default_experiment")]
    pub experiment: String,
    /// Seconds before a request to the server is abandoned.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::positive_f64"
    )]
    pub timeout_s: f64,
}

/// What the YAML holds, before the `path`/`mlflow` choice is checked.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mlflow: Option<MlflowConfig>,
}

impl From<RegistryConfig> for RawRegistryConfig {
    fn from(c: RegistryConfig) -> Self {
        match c.mlflow {
            Some(m) => RawRegistryConfig {
                path: None,
                mlflow: Some(m),
            },
            None => RawRegistryConfig {
                path: Some(c.path),
                mlflow: None,
            },
        }
    }
}

impl TryFrom<RawRegistryConfig> for RegistryConfig {
    type Error = String;

    fn try_from(raw: RawRegistryConfig) -> Result<Self, String> {
        match (raw.path, raw.mlflow) {
            (Some(_), Some(_)) => Err(
                "`path` (a local directory) and `mlflow` (an MLflow server) are exclusive: give one"
                    .into(),
            ),
            (path, mlflow) => Ok(RegistryConfig {
                path: path.unwrap_or_else(default_path),
                mlflow,
            }),
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("egizml-data/models")
}

fn default_prefix() -> String {
    "egizml.".into()
}

fn default_experiment() -> String {
    "egizml".into()
}

fn default_timeout() -> f64 {
    30.0
}

/// Checks a tracking URI: `http://HOST[:PORT][/PATH]`.
pub fn check_tracking_uri(uri: &str) -> Result<String, String> {
    let uri = uri.trim().trim_end_matches('/');
    if uri.starts_with("https://") {
        return Err(format!(
            "`{uri}`: this build talks plain HTTP to MLflow (no TLS client); use http:// (e.g. through a local TLS-terminating proxy)"
        ));
    }
    match uri.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(uri.to_string()),
        _ => Err(format!(
            "`{uri}`: expected an MLflow tracking server URL, http://HOST:PORT"
        )),
    }
}

fn tracking_uri<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_tracking_uri(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn model_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let p = String::deserialize(d)?;
    if p.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format!(
            "`{p}`: use letters, digits, '.', '_' and '-'"
        )))
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            path: default_path(),
            mlflow: None,
        }
    }
}

impl MlflowConfig {
    /// A server with the default prefix, experiment and timeout.
    pub fn new(tracking_uri: &str) -> Result<MlflowConfig, String> {
        Ok(MlflowConfig {
            tracking_uri: check_tracking_uri(tracking_uri)?,
            model_prefix: default_prefix(),
            experiment: default_experiment(),
            timeout_s: default_timeout(),
        })
    }
}

impl RegistryConfig {
    /// A local directory registry.
    pub fn local(path: &Path) -> RegistryConfig {
        RegistryConfig {
            path: path.to_path_buf(),
            mlflow: None,
        }
    }

    /// What `--registry` names: an `http://` URL is an MLflow tracking server (default prefix
    /// `egizml.`, experiment `egizml`), anything else a local directory.
    pub fn from_arg(arg: &Path) -> Result<RegistryConfig, RegistryError> {
        match arg.to_str() {
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                let mlflow = MlflowConfig::new(s).map_err(|reason| RegistryError::Corrupt {
                    path: PathBuf::from("--registry"),
                    reason,
                })?;
                Ok(RegistryConfig {
                    path: default_path(),
                    mlflow: Some(mlflow),
                })
            }
            _ => Ok(RegistryConfig::local(arg)),
        }
    }

    /// Resolves relative paths against `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
    }

    /// Where the models are, for messages: the directory or the MLflow server.
    pub fn location(&self) -> String {
        match &self.mlflow {
            Some(m) => format!("MLflow {}", m.tracking_uri),
            None => self.path.display().to_string(),
        }
    }

    /// Opens the configured backend (no I/O yet: an unreachable MLflow server fails the first call).
    pub fn open(&self) -> Result<Arc<dyn Registry>, RegistryError> {
        Ok(match &self.mlflow {
            Some(m) => Arc::new(MlflowRegistry::new(m.clone())),
            None => Arc::new(LocalRegistry::new(&self.path)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RegistryConfig, String> {
        crate::config::parse_yaml::<RegistryConfig>(yaml, "service.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn path_or_mlflow_but_not_both() {
        assert_eq!(parse("{}").unwrap(), RegistryConfig::default());
        assert_eq!(
            parse("path: models").unwrap(),
            RegistryConfig::local(Path::new("models"))
        );
        let c = parse("mlflow: {tracking_uri: 'http://127.0.0.1:5000/'}").unwrap();
        let m = c.mlflow.as_ref().unwrap();
        assert_eq!(m.tracking_uri, "http://127.0.0.1:5000");
        assert_eq!(
            (m.model_prefix.as_str(), m.experiment.as_str()),
            ("egizml.", "egizml")
        );
        assert_eq!(c.location(), "MLflow http://127.0.0.1:5000");
        let c = parse("mlflow:\n  tracking_uri: http://mlflow:5000\n  model_prefix: plant1.\n  experiment: plant1\n  timeout_s: 5\n").unwrap();
        assert_eq!(c.mlflow.unwrap().model_prefix, "plant1.");

        let e = parse("path: models\nmlflow: {tracking_uri: 'http://h:1'}\n").unwrap_err();
        assert!(
            e.starts_with("service.yaml:")
                && e.contains("`path`")
                && e.contains("`mlflow`")
                && e.contains("exclusive"),
            "{e}"
        );
        let e = parse("mlflow: {tracking_uri: 'ftp://h'}").unwrap_err();
        assert!(
            e.contains("service.yaml:1:")
                && e.contains("mlflow.tracking_uri")
                && e.contains("http://HOST:PORT"),
            "{e}"
        );
        let e = parse("mlflow: {tracking_uri: 'https://h'}").unwrap_err();
        assert!(e.contains("no TLS client"), "{e}");
        let e = parse("mlflow: {tracking_uri: 'http://h', model_prefix: \"a'b\"}").unwrap_err();
        assert!(e.contains("mlflow.model_prefix"), "{e}");
        let e = parse("mlflow: {tracking_uri: 'http://h', timeout: 3}").unwrap_err();
        assert!(e.contains("unknown field `timeout`"), "{e}");
        let e = parse("mlflow: {model_prefix: x}").unwrap_err();
        assert!(e.contains("missing field `tracking_uri`"), "{e}");
        let e = parse("paht: x").unwrap_err();
        assert!(e.contains("unknown field `paht`"), "{e}");
    }

    #[test]
    fn registry_argument_is_a_directory_or_an_mlflow_url() {
        let c = RegistryConfig::from_arg(Path::new("egizml-data/models")).unwrap();
        assert_eq!(c, RegistryConfig::local(Path::new("egizml-data/models")));
        let c = RegistryConfig::from_arg(Path::new("http://127.0.0.1:5000")).unwrap();
        assert_eq!(c.mlflow.unwrap().tracking_uri, "http://127.0.0.1:5000");
        let e = RegistryConfig::from_arg(Path::new("https://mlflow.example")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--registry: `https://mlflow.example`"),
            "{e}"
        );
    }
}
