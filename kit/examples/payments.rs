//! A "payments" participant: charges in execute, refunds in compensate, each exactly once.
//!
//! ```sh
//! cargo run -p saga-participant --example payments -- \
//!     --queue payments --database-url postgres://postgres@127.0.0.1:5432/payments
//! ```
//!
//! The amount is the saga payload's `amount` (100 when absent); an amount above 1000 is
//! declined (a plain error: the saga compensates), and a payload listing the step in
//! `fail_steps` is declined too, as the stub does.

use clap::Parser;
use saga_participant::{
    migrate, pool, Action, Command, Config, Handler, Participant, StepError, Transaction,
};
use serde_json::{json, Value};

/// The example's flags.
#[derive(Parser)]
struct Args {
    /// The command queue (the step's `queue` in the saga definition).
    #[arg(long, default_value = "payments")]
    queue: String,
    /// The payments service's own database (it gets `payments` and `saga_inbox`).
    #[arg(long, env = "PAYMENTS_DATABASE_URL")]
    database_url: String,
    /// RabbitMQ.
    #[arg(
        long,
        env = "SAGA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Commands in flight at once.
    #[arg(long, default_value_t = 16)]
    prefetch: u16,
}

/// The payments table, next to the kit's inbox.
const PAYMENTS: &str = "CREATE TABLE IF NOT EXISTS payments (
    saga_id text PRIMARY KEY,
    amount  bigint NOT NULL,
    status  text NOT NULL
)";

/// Charges and refunds.
struct Payments;

impl Handler for Payments {
    async fn handle(&self, tx: &Transaction<'_>, cmd: &Command) -> Result<Value, StepError> {
        match cmd.action {
            Action::Execute => {
                let amount = cmd.payload["amount"].as_i64().unwrap_or(100);
                let listed = cmd.payload["fail_steps"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s.as_str() == Some(cmd.step.as_str())));
                if amount > 1000 || listed {
                    return Err(StepError::Failed(format!("card declined for {amount}")));
                }
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO payments (saga_id, amount, status) VALUES ($1, $2, 'charged')",
                    )
                    .await?;
                tx.execute(&insert, &[&cmd.saga_id, &amount]).await?;
                log::info!("saga={} step={} charged {amount}", cmd.saga_id, cmd.step);
                Ok(json!({"charged": amount}))
            }
            Action::Compensate => {
                let refund = tx
                    .prepare_cached("UPDATE payments SET status = 'refunded' WHERE saga_id = $1")
                    .await?;
                let refunded = tx.execute(&refund, &[&cmd.saga_id]).await?;
                log::info!("saga={} step={} refunded", cmd.saga_id, cmd.step);
                Ok(json!({"refunded": refunded == 1}))
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let pool = pool(&args.database_url, 8)?;
    migrate(&pool).await?;
    pool.get().await?.batch_execute(PAYMENTS).await?;
    let mut config = Config::new(args.amqp_url, args.queue);
    config.service = "payments".into();
    config.prefetch = args.prefetch;
    let stop = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    Participant::new(config, pool, Payments)
        .run_until(stop)
        .await;
    Ok(())
}
