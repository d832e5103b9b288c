//! Partition leases and instance heartbeats (`sql/0004_partitions.sql`).
//!
//! A lease is a row of `saga_partitions`: its owner, an epoch that grows at each change of
//! hands, and an expiry. Every statement here is one implicit transaction.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::StoreError;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the heartbeat saw of the instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// Live instances, this one included.
    pub live: i64,
    /// A live instance configured with another partition count, if any.
    pub mismatch: Option<(String, i32)>,
}

/// Makes sure the partition rows `0..n` exist.
pub async fn ensure_partitions(pool: &Pool, n: u32) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO saga_partitions (partition)
             SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            &[&(n as i32)],
        )
        .await?;
    Ok(())
}

/// Records that this instance (this incarnation of it) is alive until `lease` from now, and
/// counts the live instances. None when another incarnation of the same instance id is
/// alive: this process is a twin and must take nothing (the live one is not disturbed).
pub async fn heartbeat(
    pool: &Pool,
    instance: &str,
    incarnation: uuid::Uuid,
    partitions: u32,
    lease: Duration,
) -> Result<Option<Peers>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH me AS (
                INSERT INTO saga_instances (id, partitions, expires_at, incarnation)
                VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4)
                ON CONFLICT (id) DO UPDATE
                   SET expires_at = EXCLUDED.expires_at, partitions = EXCLUDED.partitions,
                       incarnation = EXCLUDED.incarnation
                 WHERE saga_instances.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                    OR saga_instances.expires_at < now()
                RETURNING id
             )
             SELECT (SELECT count(*) FROM saga_instances
                      WHERE expires_at > now() AND id <> $1) + 1,
                    (SELECT id FROM saga_instances
                      WHERE expires_at > now() AND id <> $1 AND partitions <> $2 LIMIT 1),
                    (SELECT partitions FROM saga_instances
                      WHERE expires_at > now() AND id <> $1 AND partitions <> $2 LIMIT 1)
               FROM me",
        )
        .await?;
    let row = client
        .query_opt(
            &stmt,
            &[&instance, &(partitions as i32), &ms(lease), &incarnation],
        )
        .await?;
    Ok(row.map(|row| {
        let other: Option<String> = row.get(1);
        let their_n: Option<i32> = row.get(2);
        Peers {
            live: row.get(0),
            mismatch: other.zip(their_n),
        }
    }))
}

/// Extends the leases this instance holds (partition, epoch); returns those still held.
pub async fn renew(
    pool: &Pool,
    instance: &str,
    held: &[(u32, i64)],
    lease: Duration,
) -> Result<Vec<u32>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let (parts, epochs): (Vec<i32>, Vec<i64>) = held.iter().map(|&(p, e)| (p as i32, e)).unzip();
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE saga_partitions p SET expires_at = now() + $2 * interval '1 millisecond'
               FROM unnest($3::int[], $4::bigint[]) AS m(partition, epoch)
              WHERE p.partition = m.partition AND p.epoch = m.epoch AND p.owner = $1
             RETURNING p.partition",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&instance, &ms(lease), &parts, &epochs])
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

/// Takes up to `want` partitions below `n` that nobody holds: free ones, expired ones, and
/// ones an earlier run of this same instance held (taken back at once after a restart).
/// Each taken lease gets a new epoch. Returns (partition, epoch).
pub async fn acquire(
    pool: &Pool,
    instance: &str,
    held: &[u32],
    want: usize,
    n: u32,
    lease: Duration,
) -> Result<Vec<(u32, i64)>, StoreError> {
    if want == 0 {
        return Ok(Vec::new());
    }
    let held: Vec<i32> = held.iter().map(|&p| p as i32).collect();
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE saga_partitions p
                SET owner = $1, epoch = p.epoch + 1,
                    expires_at = now() + $2 * interval '1 millisecond'
              WHERE p.partition IN (
                    SELECT partition FROM saga_partitions
                     WHERE partition < $3
                       AND (owner IS NULL OR expires_at < now() OR owner = $1)
                       AND NOT (partition = ANY($4))
                     ORDER BY owner IS NOT DISTINCT FROM $1 DESC, random()
                     LIMIT $5
                     FOR UPDATE SKIP LOCKED)
             RETURNING p.partition, p.epoch",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&instance, &ms(lease), &(n as i32), &held, &(want as i64)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1)))
        .collect())
}

/// Hands leases back (rebalancing or shutdown) so that another instance takes them at once.
pub async fn release(pool: &Pool, instance: &str, held: &[(u32, i64)]) -> Result<(), StoreError> {
    if held.is_empty() {
        return Ok(());
    }
    let (parts, epochs): (Vec<i32>, Vec<i64>) = held.iter().map(|&(p, e)| (p as i32, e)).unzip();
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE saga_partitions p SET owner = NULL, expires_at = '-infinity'
               FROM unnest($2::int[], $3::bigint[]) AS m(partition, epoch)
              WHERE p.partition = m.partition AND p.epoch = m.epoch AND p.owner = $1",
            &[&instance, &parts, &epochs],
        )
        .await?;
    Ok(())
}

/// Removes this incarnation's heartbeat (on shutdown), so the others rebalance at once; a
/// twin's leaves the live process's row alone.
pub async fn leave(pool: &Pool, instance: &str, incarnation: uuid::Uuid) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM saga_instances WHERE id = $1 AND incarnation = $2",
            &[&instance, &incarnation],
        )
        .await?;
    Ok(())
}

/// The partition PostgreSQL computes for an id (to check it agrees with the Rust one).
pub async fn partition_in_sql(pool: &Pool, id: uuid::Uuid, n: u32) -> Result<u32, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT saga_partition($1, $2)", &[&id, &(n as i32)])
        .await?;
    Ok(row.get::<_, i32>(0) as u32)
}
