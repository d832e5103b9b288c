//! saga-service: a saga orchestrator.
pub mod actors;
pub mod app_state;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod housekeeping;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod relay;
pub mod saga;
pub mod startup;
pub mod store;
pub mod stub;
