//! Stored saga definitions, one row per (name, version).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use deadpool_postgres::Pool;
use serde_json::Value;

use super::StoreError;
use crate::domain::SagaDefinition;

const LOCK_KEY: i64 = 0x5a6a_0002;

/// Every stored definition version, with the ones in force now marked as current.
#[derive(Debug, Default)]
pub struct Catalog {
    /// By name: the version in force, used by new sagas.
    pub current: HashMap<String, Arc<SagaDefinition>>,
    /// By (name, version): every version known here, for sagas that started on an older
    /// one; a version stored later (by another instance) is loaded on demand ([`Catalog::fetch`]).
    all: RwLock<HashMap<(String, i32), Arc<SagaDefinition>>>,
}

impl Catalog {
    /// The definition a saga runs on, if known here.
    pub fn get(&self, name: &str, version: i32) -> Option<Arc<SagaDefinition>> {
        self.all
            .read()
            .ok()?
            .get(&(name.to_string(), version))
            .cloned()
    }

    /// Every version known here.
    pub fn all(&self) -> Vec<Arc<SagaDefinition>> {
        self.all
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&self, def: Arc<SagaDefinition>) {
        if let Ok(mut m) = self.all.write() {
            m.insert((def.name.clone(), def.version), def);
        }
    }

    /// The definition a saga runs on, loaded from `saga_definitions` when this instance
    /// does not know it yet (another instance stored it after this one started).
    pub async fn fetch(
        &self,
        pool: &Pool,
        name: &str,
        version: i32,
    ) -> Result<Option<Arc<SagaDefinition>>, StoreError> {
        if let Some(def) = self.get(name, version) {
            return Ok(Some(def));
        }
        let client = pool.get().await?;
        let row = client
            .query_opt(
                "SELECT body FROM saga_definitions WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let def = Arc::new(decode(name, version, row.get(0))?);
        log::info!("definition {name} v{version} loaded on demand");
        self.insert(def.clone());
        Ok(Some(def))
    }
}

fn decode(name: &str, version: i32, body: Value) -> Result<SagaDefinition, StoreError> {
    let mut def: SagaDefinition = serde_json::from_value(body)
        .map_err(|e| StoreError::Corrupt(format!("definition {name} v{version}: {e}")))?;
    def.version = version;
    Ok(def)
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
        let def = Arc::new(decode(&name, version, row.get(2))?);
        if current_versions.get(&name) == Some(&version) {
            catalog.current.insert(name.clone(), def.clone());
        }
        catalog.insert(def);
    }
    Ok(catalog)
}

pub use Catalog as DefinitionCatalog;
