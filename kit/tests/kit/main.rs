//! The kit against the real PostgreSQL and RabbitMQ: one database and queues per test.

mod helpers;

mod acks;
mod duplicates;
mod fence;
mod once;
mod replies;
mod retryable;
