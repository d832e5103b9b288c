//! Migrations from `sql/`, embedded in the binary, applied in order, each once.

use deadpool_postgres::Pool;

use super::StoreError;

/// `(version, name, sql)` of every migration, in order. Numbers may skip one that another
/// branch has taken; each is applied once, whatever the order it arrives in.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_init.sql", include_str!("../../sql/0001_init.sql")),
    (
        2,
        "0002_quarantine.sql",
        include_str!("../../sql/0002_quarantine.sql"),
    ),
    (
        3,
        "0003_stuck_index.sql",
        include_str!("../../sql/0003_stuck_index.sql"),
    ),
    (
        4,
        "0004_partitions.sql",
        include_str!("../../sql/0004_partitions.sql"),
    ),
    (
        5,
        "0005_traceparent.sql",
        include_str!("../../sql/0005_traceparent.sql"),
    ),
    (
        6,
        "0006_list_indexes.sql",
        include_str!("../../sql/0006_list_indexes.sql"),
    ),
    (
        8,
        "0008_cluster_secret.sql",
        include_str!("../../sql/0008_cluster_secret.sql"),
    ),
    (
        9,
        "0009_outbox_incarnation.sql",
        include_str!("../../sql/0009_outbox_incarnation.sql"),
    ),
    (
        10,
        "0010_paused.sql",
        include_str!("../../sql/0010_paused.sql"),
    ),
    (
        11,
        "0011_hot_updates.sql",
        include_str!("../../sql/0011_hot_updates.sql"),
    ),
    (
        12,
        "0012_history_without_fk.sql",
        include_str!("../../sql/0012_history_without_fk.sql"),
    ),
];

/// Key of the advisory lock that serialises concurrent migrators.
const LOCK_KEY: i64 = 0x5a6a_0001;

/// Applies pending migrations; returns how many were applied. Safe to run concurrently.
pub async fn migrate(pool: &Pool) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(&mut client).await;
    // Unlocking can only fail if the connection is gone, which releases the lock anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let done = client
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        log::info!("applied migration {name}");
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn every_file_in_sql_is_listed_in_increasing_order_with_its_number() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(_, n, _)| n.to_string()).collect();
        assert_eq!(files, listed);
        assert_eq!(MIGRATIONS[0].0, 1);
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].1, pair[1].1);
        }
        for (version, name, _) in MIGRATIONS {
            assert!(name.starts_with(&format!("{:04}_", version)));
        }
    }
}
