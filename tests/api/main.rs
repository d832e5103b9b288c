//! One integration-test binary against the real PostgreSQL and RabbitMQ.

mod helpers;

mod completion;
