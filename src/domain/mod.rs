//! Domain types that parse instead of validate: saga ids and definitions.

pub mod definition;
pub mod saga_id;

pub use definition::{load_definitions, SagaDefinition, StepDefinition};
pub use saga_id::SagaId;
