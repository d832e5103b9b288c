//! The cluster's secret, which signs hand-overs between instances (see `broker::signing`).

use deadpool_postgres::Pool;
use rand::RngCore;

use super::StoreError;

/// Bytes of a new secret.
const SECRET_BYTES: usize = 32;

/// The cluster's secret: created (from the operating system's random source) by the first
/// instance that asks, read back by every one.
pub async fn cluster_secret(pool: &Pool) -> Result<Vec<u8>, StoreError> {
    let client = pool.get().await?;
    let mut fresh = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut fresh);
    let insert = client
        .prepare_cached(
            "INSERT INTO saga_cluster_secret (id, secret) VALUES (true, $1)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    client.execute(&insert, &[&fresh]).await?;
    let select = client
        .prepare_cached("SELECT secret FROM saga_cluster_secret WHERE id")
        .await?;
    let row = client.query_one(&select, &[]).await?;
    Ok(row.try_get(0)?)
}
