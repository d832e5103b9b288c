//! One integration-test binary against the real PostgreSQL and RabbitMQ.

mod helpers;

mod hostile;

mod cluster;
mod compensation;
mod completion;
mod http_api;
mod late;
mod listing;
mod openapi;
mod operator;
mod passivation;
mod quarantine;
mod replies;
mod restart;
mod retention;
mod saga_view;
mod trace;
mod ui;
mod ui_history;
