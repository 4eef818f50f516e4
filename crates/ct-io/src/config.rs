//! The one TOML config every stage shares. Each stage reads only its own sections into typed
//! structs; a wrong key, type or value is reported as `FILE: section.key: reason`.
//!
//! Relative paths written in the file resolve against the folder of the config file; relative
//! paths given with `--set` resolve against the current directory, as any command-line path does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The sections a config file may have, in pipeline order.
pub const SECTIONS: [&str; 7] = [
    "paths",
    "synth",
    "preprocess",
    "data",
    "model",
    "train",
    "eval",
];

/// A config problem: the file, the key (when there is one) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{reason}", file.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub reason: String,
}

/// A key and why its value is refused, from a section's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: &'static str, reason: impl Into<String>) -> Invalid {
        Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// A config section a stage reads: missing keys take their defaults, unknown keys are refused
/// (`#[serde(deny_unknown_fields, default)]`), and `validate` checks the values.
pub trait Section: DeserializeOwned + Default {
    const NAME: &'static str;
    fn validate(&self) -> Result<(), Invalid>;
}

/// A loaded config file with its command-line overrides applied.
#[derive(Debug, Clone)]
pub struct Config {
    file: PathBuf,
    base_dir: PathBuf,
    root: toml::Table,
    overridden: BTreeSet<String>,
}

impl Config {
    /// Reads `file` and applies `overrides` (each `section.key=value`; the value is TOML, or taken
    /// as a string when it does not parse as TOML, so `--set paths.work_dir=/tmp/w` works).
    pub fn load(file: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: None,
            reason: format!("cannot read config file: {e}"),
        })?;
        let base_dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Config::parse(&text, file, &base_dir, overrides)
    }

    /// Parses config text; `file` names it in errors and `base_dir` anchors its relative paths.
    pub fn parse(
        text: &str,
        file: &Path,
        base_dir: &Path,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let error = |key: Option<String>, reason: String| ConfigError {
            file: file.to_path_buf(),
            key,
            reason,
        };
        let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let reason = e.message().to_string();
            let line = e
                .span()
                .map(|s| format!("line {}: ", text[..s.start].lines().count().max(1)))
                .unwrap_or_default();
            error(None, format!("{line}invalid TOML: {reason}"))
        })?;
        let mut overridden = BTreeSet::new();
        for assignment in overrides {
            let (key, value) = assignment.split_once('=').ok_or_else(|| {
                error(
                    Some(assignment.clone()),
                    "--set expects section.key=value".to_string(),
                )
            })?;
            let key = key.trim();
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(error(
                    Some(key.to_string()),
                    "--set expects section.key=value".to_string(),
                ));
            }
            set_value(&mut root, &parts, parse_value(value))
                .map_err(|reason| error(Some(key.to_string()), reason))?;
            overridden.insert(key.to_string());
        }
        for (name, value) in &root {
            if !SECTIONS.contains(&name.as_str()) {
                return Err(error(
                    Some(name.clone()),
                    format!("unknown section (expected one of {})", SECTIONS.join(", ")),
                ));
            }
            if !value.is_table() {
                return Err(error(
                    Some(name.clone()),
                    "must be a section ([name]), not a value".to_string(),
                ));
            }
        }
        Ok(Config {
            file: file.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            root,
            overridden,
        })
    }

    /// Reads and validates one section (its defaults when the file has none).
    pub fn section<T: Section>(&self) -> Result<T, ConfigError> {
        let table = match self.root.get(T::NAME) {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        };
        let value: T = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                let message = e.inner().message().to_string();
                let path = e.path().to_string();
                let mut key = T::NAME.to_string();
                if path != "." {
                    key = format!("{key}.{path}");
                }
                // serde says "unknown field `x`, expected one of ..."; the path already names `x`.
                let reason = match message.strip_prefix("unknown field `") {
                    Some(rest) => {
                        let expected = rest.split_once(", ").map(|(_, e)| e).unwrap_or("");
                        format!("unknown key ({expected})")
                    }
                    None => message,
                };
                self.error(&key, reason)
            },
        )?;
        value
            .validate()
            .map_err(|inv| self.error(&format!("{}.{}", T::NAME, inv.key), inv.reason))?;
        Ok(value)
    }

    /// Resolves a path read from `key`: against the current directory when it came from `--set`,
    /// against the config file's folder otherwise. Absolute paths are kept.
    pub fn resolve_path(&self, key: &str, path: &Path) -> PathBuf {
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else if self.overridden.contains(key) {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        } else {
            self.base_dir.join(path)
        };
        normalize(&joined)
    }

    /// The `[paths]` section with both folders resolved.
    pub fn paths(&self) -> Result<Paths, ConfigError> {
        let raw: Paths = self.section()?;
        Ok(Paths {
            data_dir: self.resolve_path("paths.data_dir", &raw.data_dir),
            work_dir: self.resolve_path("paths.work_dir", &raw.work_dir),
        })
    }

    /// An error about `key` in this config.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: Some(key.to_string()),
            reason: reason.into(),
        }
    }
}

/// Removes `.` and `name/..` pairs without touching the filesystem, so messages show
/// `data/x` rather than `config/../data/x`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn parse_value(text: &str) -> toml::Value {
    let text = text.trim();
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

fn set_value(root: &mut toml::Table, parts: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = parts.split_last().expect("at least two parts");
    let mut table = root;
    for part in parents {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is a value, not a section"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// `[paths]`: where the input task folder is and where every artifact goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// An MSD task folder (`dataset.json`, `imagesTr/`, `labelsTr/`, `imagesTs/`).
    pub data_dir: PathBuf,
    /// Every stage writes below this folder.
    pub work_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            data_dir: PathBuf::from("../data/Task06_Lung"),
            work_dir: PathBuf::from("../work"),
        }
    }
}

impl Section for Paths {
    const NAME: &'static str = "paths";
    fn validate(&self) -> Result<(), Invalid> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new("data_dir", "must not be empty"));
        }
        if self.work_dir.as_os_str().is_empty() {
            return Err(Invalid::new("work_dir", "must not be empty"));
        }
        Ok(())
    }
}
