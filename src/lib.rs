//! saga-service: a saga orchestrator.
pub mod domain;
pub mod saga;
