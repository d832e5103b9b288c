//! Stored saga definitions, one row per (name, version).

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;

use super::StoreError;
use crate::domain::SagaDefinition;

const LOCK_KEY: i64 = 0x5a6a_0002;

/// Every stored definition version, with the ones in force now marked as current.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// By name: the version in force, used by new sagas.
    pub current: HashMap<String, Arc<SagaDefinition>>,
    /// By (name, version): every version, for sagas that started on an older one.
    pub all: HashMap<(String, i32), Arc<SagaDefinition>>,
}

impl Catalog {
    /// The definition a saga runs on.
    pub fn get(&self, name: &str, version: i32) -> Option<Arc<SagaDefinition>> {
        self.all.get(&(name.to_string(), version)).cloned()
    }
}

/// Stores each definition in force under a new version when its content changed, and loads every version.
pub async fn register_definitions(
    pool: &Pool,
    defs: &[SagaDefinition],
) -> Result<Catalog, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let mut current_versions = HashMap::new();
    for def in defs {
        let body = def.canonical_json();
        let latest = tx
            .query_opt(
                "SELECT version, body FROM saga_definitions WHERE name = $1 ORDER BY version DESC LIMIT 1",
                &[&def.name],
            )
            .await?;
        let version = match latest {
            Some(row) if row.get::<_, Value>(1) == body => row.get::<_, i32>(0),
            Some(row) => row.get::<_, i32>(0) + 1,
            None => 1,
        };
        tx.execute(
            "INSERT INTO saga_definitions (name, version, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&def.name, &version, &body],
        )
        .await?;
        current_versions.insert(def.name.clone(), version);
    }
    let rows = tx
        .query("SELECT name, version, body FROM saga_definitions", &[])
        .await?;
    tx.commit().await?;
    let mut catalog = Catalog::default();
    for row in rows {
        let name: String = row.get(0);
        let version: i32 = row.get(1);
        let mut def: SagaDefinition = serde_json::from_value(row.get(2))
            .map_err(|e| StoreError::Corrupt(format!("definition {name} v{version}: {e}")))?;
        def.version = version;
        let def = Arc::new(def);
        if current_versions.get(&name) == Some(&version) {
            catalog.current.insert(name.clone(), def.clone());
        }
        catalog.all.insert((name, version), def);
    }
    Ok(catalog)
}

pub use Catalog as DefinitionCatalog;
