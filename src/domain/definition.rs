//! Saga definitions: the TOML file of CONTRACT.md section 2, parsed and validated.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One step of a saga definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique within the saga.
    pub name: String,
    /// The participant's command queue.
    pub queue: String,
    /// Whether a later failure sends this step a `compensate` command.
    #[serde(default = "default_true")]
    pub compensate: bool,
    /// No reply by then: the command is re-sent.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Sends before the step counts as failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_true() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_max_attempts() -> u32 {
    3
}

/// A saga type: a name and its ordered steps, at one stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    /// The saga type, chosen at `POST /start`.
    pub name: String,
    /// The stored version; 0 until the definition is registered in PostgreSQL.
    #[serde(default, skip_serializing)]
    pub version: i32,
    /// The steps, in execution order.
    pub steps: Vec<StepDefinition>,
}

/// Why a definitions file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("cannot read saga definitions file {path}: {source}")]
    Unreadable {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid saga definitions file {path}: {message}")]
    Syntax {
        /// The path given.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The file parses but a definition breaks a rule.
    #[error("invalid saga definitions file {path}: {message}")]
    Invalid {
        /// The path given.
        path: String,
        /// Which rule, naming the saga and step.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    sagas: Vec<SagaDefinition>,
}

impl SagaDefinition {
    /// The built-in `default` saga: `service1..3` on `commands1..3`.
    pub fn builtin_default() -> Self {
        let step = |i: u32| StepDefinition {
            name: format!("service{i}"),
            queue: format!("commands{i}"),
            compensate: true,
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
        };
        SagaDefinition {
            name: "default".into(),
            version: 0,
            steps: (1..=3).map(step).collect(),
        }
    }

    /// Index of the step with this name.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The canonical JSON of the definition's content (not its version): what is stored and compared.
    pub fn canonical_json(&self) -> serde_json::Value {
        // Serialization of a plain struct cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "saga name `{}` must be 1-100 characters of letters, digits, `_` or `-`",
                self.name
            ));
        }
        if self.steps.is_empty() {
            return Err(format!("saga `{}` has no steps", self.name));
        }
        let mut seen = HashSet::new();
        for step in &self.steps {
            if step.name.trim().is_empty() || step.name.len() > 200 {
                return Err(format!("saga `{}` has a step without a name", self.name));
            }
            if !seen.insert(step.name.as_str()) {
                return Err(format!(
                    "saga `{}` has two steps named `{}`",
                    self.name, step.name
                ));
            }
            if step.queue.trim().is_empty() || step.queue.len() > 250 {
                return Err(format!(
                    "step `{}` of saga `{}` has no queue",
                    step.name, self.name
                ));
            }
            if step.timeout_ms == 0 {
                return Err(format!(
                    "step `{}` of saga `{}`: timeout_ms must be positive",
                    step.name, self.name
                ));
            }
            if step.max_attempts == 0 {
                return Err(format!(
                    "step `{}` of saga `{}`: max_attempts must be at least 1",
                    step.name, self.name
                ));
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses and validates definitions from TOML text; `path` only names the source in errors.
pub fn parse_definitions(text: &str, path: &str) -> Result<Vec<SagaDefinition>, DefinitionError> {
    let file: File = toml::from_str(text).map_err(|e| DefinitionError::Syntax {
        path: path.into(),
        message: e.message().to_string(),
    })?;
    let mut names = HashSet::new();
    for def in &file.sagas {
        def.validate().map_err(|message| DefinitionError::Invalid {
            path: path.into(),
            message,
        })?;
        if !names.insert(def.name.clone()) {
            return Err(DefinitionError::Invalid {
                path: path.into(),
                message: format!("saga `{}` is defined twice", def.name),
            });
        }
    }
    Ok(file.sagas)
}

/// The definitions in force: the built-in `default`, replaced or joined by those of the file.
pub fn load_definitions(path: Option<&Path>) -> Result<Vec<SagaDefinition>, DefinitionError> {
    let mut all: BTreeMap<String, SagaDefinition> = BTreeMap::new();
    let builtin = SagaDefinition::builtin_default();
    all.insert(builtin.name.clone(), builtin);
    if let Some(path) = path {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Unreadable {
            path: shown.clone(),
            source,
        })?;
        for def in parse_definitions(&text, &shown)? {
            all.insert(def.name.clone(), def);
        }
    }
    Ok(all.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_optional_step_fields() {
        let defs = parse_definitions(
            "[[sagas]]\nname = \"trip\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"qa\"\n",
            "f.toml",
        )
        .unwrap();
        let step = &defs[0].steps[0];
        assert!(step.compensate);
        assert_eq!(step.timeout_ms, 30_000);
        assert_eq!(step.max_attempts, 3);
    }

    #[test]
    fn a_step_without_a_queue_is_refused_naming_it() {
        let err = parse_definitions(
            "[[sagas]]\nname = \"trip\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"\"\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("step `a` of saga `trip` has no queue"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_steps_and_empty_sagas_are_refused() {
        let dup = "[[sagas]]\nname = \"t\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"q\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"q2\"\n";
        assert!(parse_definitions(dup, "f").is_err());
        assert!(parse_definitions("[[sagas]]\nname = \"t\"\nsteps = []\n", "f").is_err());
        assert!(parse_definitions("[[sagas]]\nname = \"t\"\n", "f").is_err());
    }

    #[test]
    fn unknown_keys_are_refused_rather_than_ignored() {
        let text =
            "[[sagas]]\nname = \"t\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"q\"\ntimeout = 5\n";
        assert!(parse_definitions(text, "f").is_err());
    }

    #[test]
    fn a_file_saga_replaces_the_builtin_of_the_same_name() {
        let dir = std::env::temp_dir().join(format!("defs-{}", uuid::Uuid::new_v4()));
        std::fs::write(
            &dir,
            "[[sagas]]\nname = \"default\"\n[[sagas.steps]]\nname = \"only\"\nqueue = \"q\"\n",
        )
        .unwrap();
        let defs = load_definitions(Some(&dir)).unwrap();
        std::fs::remove_file(&dir).ok();
        assert_eq!(defs.len(), 1);
        assert_eq!(defs[0].steps.len(), 1);
    }
}
