//! Domain types that parse instead of validate: saga ids, definitions, retention.

pub mod definition;
pub mod retention;
pub mod saga_id;
pub mod trace;

pub use definition::{load_definitions, OnError, SagaDefinition, StepDefinition};
pub use retention::Retention;
pub use saga_id::SagaId;

/// Whether a JSON value holds U+0000 in any string or key: PostgreSQL's jsonb and text
/// cannot store it, so such input is refused at the boundary instead of failing a commit.
pub fn contains_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}
