//! `egizml models list|show|activate|rollback`: the model registry from the command line.

use super::train::RegistryArgs;
use crate::registry::{ModelFamily, ModelRef, Registry, VersionInfo};
use serde_json::json;

/// `egizml models ...`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Versions of every scope (or of one), oldest first; `*` marks the active version. Anomaly models
    /// (`isolation_forest`, `autoencoder`) show their F1, RUL models (`rul`) their RMSE.
    List {
        /// Only this scope (thing id or equipment class).
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// One version's metadata and metrics (ID = `<scope>/v<N>`, or `<scope>` for the active one).
    Show {
        id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Make a version the active one of its scope (ID = `<scope>/v<N>`).
    Activate {
        id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Re-activate the version that was active before the current one.
    Rollback {
        scope: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

fn row(v: &VersionInfo) -> String {
    let m = &v.meta;
    // The headline metric of the family: F1 for anomaly models, RMSE (cycles) for RUL models.
    let key = match ModelFamily::of(&m.model_type) {
        ModelFamily::Anomaly => "f1",
        ModelFamily::Rul => "rmse",
    };
    let value = m
        .metrics
        .get(key)
        .map_or("-".to_string(), |f| format!("{f:.3}"));
    format!(
        "{} {:<28} {:<16} {:<22} samples {:>8}  {key} {value}",
        if v.active { "*" } else { " " },
        m.id,
        m.model_type,
        m.trained_at,
        m.samples,
    )
}

/// Runs a models command; returns the lines to print (the last one is JSON).
pub fn run(cmd: &ModelsCommand) -> anyhow::Result<Vec<String>> {
    match cmd {
        ModelsCommand::List { scope, registry } => {
            let reg = registry.open()?;
            let versions = reg.list(scope.as_deref())?;
            let mut lines: Vec<String> = versions.iter().map(row).collect();
            if lines.is_empty() {
                lines.push("no models registered".into());
            }
            lines.push(serde_json::to_string(&versions)?);
            Ok(lines)
        }
        ModelsCommand::Show { id, registry } => {
            let reg = registry.open()?;
            let info = resolve(reg.as_ref(), id)?;
            let mut lines = vec![row(&info)];
            lines.push(serde_json::to_string_pretty(&info)?);
            Ok(lines)
        }
        ModelsCommand::Activate { id, registry } => {
            let reg = registry.open()?;
            let r = ModelRef::parse(id)?;
            let version = r
                .version
                .ok_or_else(|| anyhow::anyhow!("`{id}`: give a version, `<scope>/v<N>`"))?;
            reg.activate(&r.scope, version)?;
            Ok(vec![
                format!("{}/v{version} is now active", r.scope),
                json!({"scope": r.scope, "active": version}).to_string(),
            ])
        }
        ModelsCommand::Rollback { scope, registry } => {
            let reg = registry.open()?;
            let version = reg.rollback(scope)?;
            Ok(vec![
                format!("{scope} rolled back to v{version}"),
                json!({"scope": scope, "active": version}).to_string(),
            ])
        }
    }
}

/// The version `id` names (`<scope>/v<N>`, or `<scope>` for the active one).
pub fn resolve(reg: &dyn Registry, id: &str) -> anyhow::Result<VersionInfo> {
    let r = ModelRef::parse(id)?;
    Ok(r.find(reg)?)
}
