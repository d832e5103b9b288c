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
    /// Consecutive steps with the same group run in parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// What a failure of this step does to the saga.
    #[serde(default, skip_serializing_if = "OnError::is_default")]
    pub on_error: OnError,
    /// Once done, the saga never compensates (forward only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pivot: bool,
    /// First back-off after a retryable error, doubling, at most 60 s.
    #[serde(
        default = "default_retry_backoff_ms",
        skip_serializing_if = "is_default_retry_backoff"
    )]
    pub retry_backoff_ms: u64,
}

/// What a step's failure does (`on_error`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Compensate the earlier steps (the default).
    #[default]
    Compensate,
    /// Wait for an operator (`paused`).
    Pause,
}

impl OnError {
    fn is_default(&self) -> bool {
        *self == OnError::Compensate
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Default `retry_backoff_ms`.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1_000;

fn default_retry_backoff_ms() -> u64 {
    DEFAULT_RETRY_BACKOFF_MS
}

fn is_default_retry_backoff(ms: &u64) -> bool {
    *ms == DEFAULT_RETRY_BACKOFF_MS
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
    /// A saga still running this long after its start is aborted (or paused past its pivot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
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

impl StepDefinition {
    /// A step on `queue` with every optional key at its default.
    pub fn new(name: impl Into<String>, queue: impl Into<String>) -> Self {
        StepDefinition {
            name: name.into(),
            queue: queue.into(),
            compensate: true,
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
            group: None,
            on_error: OnError::Compensate,
            pivot: false,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
        }
    }
}

impl SagaDefinition {
    /// The built-in `default` saga: `service1..3` on `commands1..3`.
    pub fn builtin_default() -> Self {
        let step = |i: u32| StepDefinition::new(format!("service{i}"), format!("commands{i}"));
        SagaDefinition {
            name: "default".into(),
            version: 0,
            deadline_ms: None,
            steps: (1..=3).map(step).collect(),
        }
    }

    /// Index of the step with this name.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The steps that run together with step `k`: its group (consecutive steps with the same
    /// `group`), or `k` alone.
    pub fn stage(&self, k: usize) -> std::ops::Range<usize> {
        let Some(group) = self.steps.get(k).and_then(|s| s.group.as_deref()) else {
            return k..k + 1;
        };
        let same = |i: &usize| self.steps[*i].group.as_deref() == Some(group);
        let start = (0..=k).rev().take_while(same).last().unwrap_or(k);
        let end = (k..self.steps.len()).take_while(same).last().unwrap_or(k) + 1;
        start..end
    }

    /// The canonical JSON of the definition's content (not its version): what is stored and compared.
    pub fn canonical_json(&self) -> serde_json::Value {
        // Serialization of a plain struct cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Checks the rules of CONTRACT.md section 2; the reason names the saga and step.
    pub fn validate(&self) -> Result<(), String> {
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
            if step.retry_backoff_ms == 0 {
                return Err(format!(
                    "step `{}` of saga `{}`: retry_backoff_ms must be positive",
                    step.name, self.name
                ));
            }
            if let Some(group) = &step.group {
                if group.trim().is_empty() || group.len() > 200 {
                    return Err(format!(
                        "step `{}` of saga `{}`: group must be a non-empty name",
                        step.name, self.name
                    ));
                }
                if step.pivot {
                    return Err(format!(
                        "step `{}` of saga `{}`: a pivot step may not be in a group (`{group}`)",
                        step.name, self.name
                    ));
                }
            }
        }
        // A group's steps must be consecutive: once a group ends it may not start again.
        let mut closed: HashSet<&str> = HashSet::new();
        let mut previous: Option<&str> = None;
        for step in &self.steps {
            let group = step.group.as_deref();
            if group != previous {
                if let Some(p) = previous {
                    closed.insert(p);
                }
                if let Some(g) = group.filter(|g| closed.contains(g)) {
                    return Err(format!(
                        "saga `{}`: the steps of group `{g}` are not consecutive (step `{}`)",
                        self.name, step.name
                    ));
                }
            }
            previous = group;
        }
        if self.deadline_ms == Some(0) {
            return Err(format!(
                "saga `{}`: deadline_ms must be positive",
                self.name
            ));
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

    const TRIP: &str = r#"
[[sagas]]
name = "trip"
deadline_ms = 600000
[[sagas.steps]]
name = "flight"
queue = "flights"
[[sagas.steps]]
name = "hotel"
queue = "hotels"
group = "book"
[[sagas.steps]]
name = "car"
queue = "cars"
group = "book"
on_error = "pause"
retry_backoff_ms = 250
[[sagas.steps]]
name = "charge"
queue = "payments"
pivot = true
[[sagas.steps]]
name = "ship"
queue = "parcels"
"#;

    #[test]
    fn the_new_keys_parse_and_groups_are_stages() {
        let defs = parse_definitions(TRIP, "f").unwrap();
        let trip = &defs[0];
        assert_eq!(trip.deadline_ms, Some(600_000));
        assert_eq!(trip.steps[2].on_error, OnError::Pause);
        assert_eq!(trip.steps[2].retry_backoff_ms, 250);
        assert_eq!(trip.steps[0].retry_backoff_ms, DEFAULT_RETRY_BACKOFF_MS);
        assert!(trip.steps[3].pivot);
        assert_eq!(trip.stage(0), 0..1);
        assert_eq!(trip.stage(1), 1..3);
        assert_eq!(trip.stage(2), 1..3);
        assert_eq!(trip.stage(3), 3..4);
    }

    #[test]
    fn defaults_are_left_out_of_the_stored_content() {
        // A definition stored before the new keys existed keeps its content (and version).
        let def = SagaDefinition::builtin_default();
        let json = def.canonical_json().to_string();
        for key in [
            "group",
            "on_error",
            "pivot",
            "retry_backoff_ms",
            "deadline_ms",
        ] {
            assert!(!json.contains(key), "{key} in {json}");
        }
    }

    #[test]
    fn a_pivot_in_a_group_is_refused_naming_it() {
        let text = TRIP.replace("pivot = true", "pivot = true\ngroup = \"pay\"");
        let err = parse_definitions(&text, "f").unwrap_err().to_string();
        assert!(err.contains("a pivot step may not be in a group"), "{err}");
        assert!(err.contains("`charge`"), "{err}");
    }

    #[test]
    fn a_group_split_by_another_step_is_refused() {
        let text = TRIP.replace("name = \"ship\"\n", "name = \"ship\"\ngroup = \"book\"\n");
        let err = parse_definitions(&text, "f").unwrap_err().to_string();
        assert!(err.contains("group `book` are not consecutive"), "{err}");
    }

    #[test]
    fn bad_values_of_the_new_keys_are_refused() {
        for (from, to) in [
            ("on_error = \"pause\"", "on_error = \"ignore\""),
            ("retry_backoff_ms = 250", "retry_backoff_ms = 0"),
            ("deadline_ms = 600000", "deadline_ms = 0"),
            ("group = \"book\"\non_error", "group = \"\"\non_error"),
        ] {
            let text = TRIP.replace(from, to);
            assert_ne!(text, TRIP, "{from}");
            assert!(parse_definitions(&text, "f").is_err(), "{to} accepted");
        }
    }
}
