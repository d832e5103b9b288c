//! One integration-test binary against the real PostgreSQL and RabbitMQ.

mod helpers;

mod compensation;
mod completion;
mod operator;
mod quarantine;
mod restart;
