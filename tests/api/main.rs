//! One integration-test binary against the real PostgreSQL and RabbitMQ.

mod amqp;
mod certs;
mod helpers;

mod hostile;

mod amqps;
mod check_participant;
mod cluster;
mod compensation;
mod completion;
mod consumers;
mod definitions;
mod forgery;
mod forwarding;
mod guarded;
mod http_api;
mod language;
mod late;
mod listing;
mod observability;
mod openapi;
mod operator;
mod operator_cli;
mod passivation;
mod python;
mod quarantine;
mod replies;
mod restart;
mod retention;
mod saga_view;
mod tls;
mod trace;
mod trust;
mod ui;
mod ui_history;
mod ui_paused;
