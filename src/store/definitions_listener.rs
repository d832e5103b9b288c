//! Keeps an instance's catalog of definitions fresh: `LISTEN` on a connection of its own
//! for the versions other instances store (`PUT /definitions/{name}`), reconnecting with
//! back-off, and re-reading the latest versions whenever it (re)connects, since
//! notifications sent while it was not listening are lost.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::definitions::{Catalog, NOTIFY_CHANNEL};
use super::StoreError;
use crate::app_state::Drain;
use crate::config::DatabaseSettings;

/// The listening connection's `application_name`.
pub const APPLICATION_NAME: &str = "saga-definitions-listener";

/// How often a listener waiting for notifications checks whether the service is draining.
const DRAIN_CHECK: Duration = Duration::from_millis(500);

/// Listens until the service drains; each notified version is loaded and made current.
pub async fn listen(
    database: DatabaseSettings,
    pool: Pool,
    catalog: Arc<Catalog>,
    drain: Arc<Drain>,
) {
    let mut delay = Duration::from_millis(100);
    while !drain.is_draining() {
        match listen_once(&database, &pool, &catalog, &drain).await {
            Ok(()) => return,
            Err(e) => {
                log::warn!(
                    "definitions listener: {}; listening again in {delay:?}",
                    crate::logging::error_chain(&e)
                );
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One connection's worth of listening: `Ok` when the service drains, `Err` when the
/// connection fails (the caller reconnects).
async fn listen_once(
    database: &DatabaseSettings,
    pool: &Pool,
    catalog: &Catalog,
    drain: &Drain,
) -> Result<(), StoreError> {
    let mut config = database.config.clone();
    // Named, so that an operator (or a test) can tell it in `pg_stat_activity`.
    config.application_name(APPLICATION_NAME);
    let (client, mut connection) = config
        .connect(database.connector.make_tls_connect())
        .await?;
    // The connection yields the notifications; it is driven by a task of its own so that
    // the client's queries (LISTEN, the refresh) make progress meanwhile.
    let (tx, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(Ok(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Listening from here on: whatever was stored before is read now.
        catalog.refresh(&client).await?;
        log::info!("definitions listener: listening on {NOTIFY_CHANNEL}");
        loop {
            let next = tokio::select! {
                n = notifications.recv() => n,
                _ = tokio::time::sleep(DRAIN_CHECK) => {
                    if drain.is_draining() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let payload = match next {
                Some(Ok(payload)) => payload,
                Some(Err(e)) => return Err(StoreError::from(e)),
                None => {
                    return Err(StoreError::Unavailable(
                        "the listening connection closed".into(),
                    ))
                }
            };
            let Some((version, name)) = parse_payload(&payload) else {
                log::warn!("definitions listener: unreadable notification `{payload}` ignored");
                continue;
            };
            match catalog.fetch(pool, name, version).await? {
                Some(def) => {
                    catalog.install(def);
                    log::info!("definition {name} v{version} stored elsewhere: now current here");
                }
                None => log::warn!("definition {name} v{version} notified but not stored"),
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// `<version>:<name>` as `store_versions` sends it.
fn parse_payload(payload: &str) -> Option<(i32, &str)> {
    let (version, name) = payload.split_once(':')?;
    let version = version.parse().ok()?;
    (!name.is_empty()).then_some((version, name))
}

#[cfg(test)]
mod tests {
    use super::parse_payload;

    #[test]
    fn a_notification_names_the_version_then_the_saga() {
        assert_eq!(parse_payload("3:trip"), Some((3, "trip")));
        assert_eq!(parse_payload("12:a-b_c"), Some((12, "a-b_c")));
        assert_eq!(parse_payload("x:trip"), None);
        assert_eq!(parse_payload("3:"), None);
        assert_eq!(parse_payload("trip"), None);
    }
}
