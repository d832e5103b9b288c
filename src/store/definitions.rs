//! Stored saga definitions, one row per (name, version), and the catalog of them an
//! instance keeps in memory: every version it has seen, and the latest of each name.
//!
//! A definition is stored by [`store_versions`], the one path of the file at start-up and
//! of `PUT /definitions/{name}`: under an advisory lock, a new version (latest + 1) only
//! when the content differs from the latest, announced with `pg_notify` in the same
//! transaction. Each instance's listener (`definitions_listener`) applies those
//! notifications to its catalog; `POST /start` does not rely on them (its insert refuses a
//! version that is no longer the latest, see `snapshots::INSERT_START`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::StoreError;
use crate::domain::SagaDefinition;

const LOCK_KEY: i64 = 0x5a6a_0002;

/// The channel `pg_notify` announces new versions on; the payload is `<version>:<name>`.
pub const NOTIFY_CHANNEL: &str = "saga_definitions";

/// Every stored definition version known here, and the latest version of each name.
#[derive(Debug, Default)]
pub struct Catalog {
    /// By name: the latest version, used by new sagas.
    latest: RwLock<HashMap<String, Arc<SagaDefinition>>>,
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

    /// The latest version of `name` known here: what a new saga of that type runs on.
    pub fn current(&self, name: &str) -> Option<Arc<SagaDefinition>> {
        self.latest.read().ok()?.get(name).cloned()
    }

    /// The latest version of every name known here.
    pub fn current_all(&self) -> Vec<Arc<SagaDefinition>> {
        self.latest
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every version known here.
    pub fn all(&self) -> Vec<Arc<SagaDefinition>> {
        self.all
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a stored version; it becomes the current one of its name unless a later one is
    /// known already (notifications and fetches may arrive in any order).
    pub fn install(&self, def: Arc<SagaDefinition>) {
        if let Ok(mut m) = self.all.write() {
            m.insert((def.name.clone(), def.version), def.clone());
        }
        if let Ok(mut m) = self.latest.write() {
            let newer = m.get(&def.name).is_none_or(|d| d.version < def.version);
            if newer {
                m.insert(def.name.clone(), def);
            }
        }
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
        let Some(def) = load(&**client, name, Some(version)).await? else {
            return Ok(None);
        };
        let def = Arc::new(def);
        log::info!("definition {name} v{version} loaded on demand");
        self.insert(def.clone());
        Ok(Some(def))
    }

    /// The latest stored version of `name`, read from PostgreSQL (not from memory) and
    /// made current here; `None` when no version of it is stored.
    pub async fn fetch_latest(
        &self,
        pool: &Pool,
        name: &str,
    ) -> Result<Option<Arc<SagaDefinition>>, StoreError> {
        let client = pool.get().await?;
        let Some(def) = load(&**client, name, None).await? else {
            return Ok(None);
        };
        let def = self.get(name, def.version).unwrap_or_else(|| Arc::new(def));
        self.install(def.clone());
        Ok(self.current(name))
    }

    /// Re-reads the latest version of every name (after notifications may have been missed).
    pub async fn refresh<C: GenericClient>(&self, client: &C) -> Result<(), StoreError> {
        for def in latest_all(client).await? {
            let def = self
                .get(&def.name, def.version)
                .unwrap_or_else(|| Arc::new(def));
            self.install(def);
        }
        Ok(())
    }
}

fn decode(name: &str, version: i32, body: Value) -> Result<SagaDefinition, StoreError> {
    let mut def: SagaDefinition = serde_json::from_value(body)
        .map_err(|e| StoreError::Corrupt(format!("definition {name} v{version}: {e}")))?;
    def.version = version;
    Ok(def)
}

/// One stored version of `name`: `version`, or the latest when `None`.
pub async fn load<C: GenericClient>(
    client: &C,
    name: &str,
    version: Option<i32>,
) -> Result<Option<SagaDefinition>, StoreError> {
    let row = client
        .query_opt(
            "SELECT version, body FROM saga_definitions
              WHERE name = $1 AND ($2::int IS NULL OR version = $2)
              ORDER BY version DESC LIMIT 1",
            &[&name, &version],
        )
        .await?;
    row.map(|row| decode(name, row.get(0), row.get(1)))
        .transpose()
}

/// The latest stored version of every name, by name.
pub async fn latest_all<C: GenericClient>(client: &C) -> Result<Vec<SagaDefinition>, StoreError> {
    let mut defs = client
        .query(
            "SELECT DISTINCT ON (name) name, version, body FROM saga_definitions
              ORDER BY name, version DESC",
            &[],
        )
        .await?
        .into_iter()
        .map(|row| decode(row.get(0), row.get(1), row.get(2)))
        .collect::<Result<Vec<_>, _>>()?;
    // By name in byte order, whatever the database's collation.
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(defs)
}

/// Stores each definition (in `tx`, under the definitions' advisory lock): a new version,
/// announced on [`NOTIFY_CHANNEL`] at commit, when its content differs from the latest
/// stored one; otherwise the latest's number. Returns each definition's version.
async fn store_versions(
    tx: &deadpool_postgres::Transaction<'_>,
    defs: &[SagaDefinition],
) -> Result<Vec<i32>, StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let mut versions = Vec::with_capacity(defs.len());
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
        let inserted = tx
            .execute(
                "INSERT INTO saga_definitions (name, version, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&def.name, &version, &body],
            )
            .await?;
        if inserted == 1 {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&NOTIFY_CHANNEL, &format!("{version}:{}", def.name)],
            )
            .await?;
        }
        versions.push(version);
    }
    Ok(versions)
}

/// Stores one definition (`PUT /definitions/{name}`); returns it at its stored version.
pub async fn put_definition(
    pool: &Pool,
    def: &SagaDefinition,
) -> Result<SagaDefinition, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let versions = store_versions(&tx, std::slice::from_ref(def)).await?;
    tx.commit().await?;
    let mut stored = def.clone();
    stored.version = versions.first().copied().unwrap_or_default();
    Ok(stored)
}

/// Stores each definition of the file (and the built-in ones it does not replace) as
/// [`put_definition`] does, and loads every stored version. The latest version of each
/// name is current: for the file's names, the version just stored; for the others (put
/// over HTTP only), their latest.
pub async fn register_definitions(
    pool: &Pool,
    defs: &[SagaDefinition],
) -> Result<Catalog, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    store_versions(&tx, defs).await?;
    let rows = tx
        .query("SELECT name, version, body FROM saga_definitions", &[])
        .await?;
    tx.commit().await?;
    let catalog = Catalog::default();
    for row in rows {
        let name: String = row.get(0);
        let version: i32 = row.get(1);
        catalog.install(Arc::new(decode(&name, version, row.get(2))?));
    }
    Ok(catalog)
}

pub use Catalog as DefinitionCatalog;
