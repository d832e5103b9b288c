//! `saga-service sagas list|show|abort|retry|resume|skip`.

use serde_json::{json, Map, Value};

use super::args::{Note, SagasArgs, SagasCommand};
use super::output::{print_json, text, time, Cell, Table};
use super::{report, ApiClient, ClientError, EXIT_OK};
use crate::domain::SagaId;

/// Runs one `sagas` subcommand; returns the exit code.
pub async fn run(args: SagasArgs) -> i32 {
    let json = args.api.json;
    let client = match ApiClient::new(&args.api) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    let done = match args.command {
        SagasCommand::List {
            status,
            saga,
            stuck,
            limit,
            after,
        } => list(&client, json, status, saga, stuck, limit, after).await,
        SagasCommand::Show { id } => show(&client, json, &id).await,
        SagasCommand::Abort { id, note } => act(&client, json, &id, "abort", &note, None).await,
        SagasCommand::Retry { id, note } => act(&client, json, &id, "retry", &note, None).await,
        SagasCommand::Resume { id, note } => act(&client, json, &id, "resume", &note, None).await,
        SagasCommand::Skip { id, step, note } => {
            act(&client, json, &id, "skip", &note, Some(step)).await
        }
    };
    match done {
        Ok(()) => EXIT_OK,
        Err(e) => report(&e),
    }
}

/// A UUID or base62 code, checked before anything is sent (bad usage otherwise).
fn saga_id(raw: &str) -> Result<SagaId, ClientError> {
    SagaId::parse_any(raw).map_err(|e| ClientError::Usage(e.to_string()))
}

async fn list(
    client: &ApiClient,
    json: bool,
    status: Option<String>,
    saga: Option<String>,
    stuck: bool,
    limit: u32,
    after: Option<String>,
) -> Result<(), ClientError> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(status.map(|s| ("status", s)));
    query.extend(saga.map(|s| ("saga", s)));
    query.extend(after.map(|a| ("after", a)));
    if stuck {
        query.push(("stuck", "true".into()));
    }
    let page = client.get(&["sagas"], &query).await?;
    if json {
        print_json(&page);
        return Ok(());
    }
    let sagas = page["sagas"].as_array().cloned().unwrap_or_default();
    if sagas.is_empty() {
        println!("no sagas");
        return Ok(());
    }
    let mut table = Table::new(vec![
        "SAGA ID", "CODE", "TYPE", "STATUS", "STEP", "VERSION", "UPDATED",
    ]);
    for s in &sagas {
        table.row(vec![
            Cell::plain(text(&s["saga_id"])),
            Cell::plain(text(&s["code"])),
            Cell::plain(text(&s["saga"])),
            Cell::status(text(&s["status"])),
            Cell::plain(text(&s["step"])),
            Cell::plain(text(&s["version"])),
            Cell::plain(time(&s["updated_at"])),
        ]);
    }
    table.print();
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
    Ok(())
}

async fn show(client: &ApiClient, json: bool, raw: &str) -> Result<(), ClientError> {
    let id = saga_id(raw)?;
    let view = client.get(&["sagas", &id.to_string()], &[]).await?;
    if json {
        print_json(&view);
        return Ok(());
    }
    let status = text(&view["status"]);
    let status = if super::output::colour() {
        super::output::paint(&status)
    } else {
        status
    };
    println!(
        "saga     {} ({})",
        text(&view["saga_id"]),
        text(&view["code"])
    );
    println!(
        "type     {} (definition version {})",
        text(&view["saga"]),
        text(&view["definition_version"])
    );
    println!("status   {status}");
    println!("step     {}", text(&view["step"]));
    println!("version  {}", text(&view["version"]));
    println!("created  {}", time(&view["created_at"]));
    println!("updated  {}", time(&view["updated_at"]));
    if let Some(steps) = view["steps"].as_array() {
        println!();
        let mut table = Table::new(vec!["STEP", "QUEUE", "STATUS", "ATTEMPTS", "ERROR"]);
        for s in steps {
            table.row(vec![
                Cell::plain(text(&s["name"])),
                Cell::plain(text(&s["queue"])),
                Cell::status(text(&s["status"])),
                Cell::plain(format!(
                    "{}/{}",
                    text(&s["attempts"]),
                    text(&s["max_attempts"])
                )),
                Cell::plain(text(&s["error"])),
            ]);
        }
        table.print();
    }
    if let Some(history) = view["history"].as_array() {
        println!();
        let mut table = Table::new(vec!["VERSION", "EVENT", "STEP", "AT", "DETAIL"]);
        for h in history {
            table.row(vec![
                Cell::plain(text(&h["version"])),
                Cell::plain(text(&h["event"])),
                Cell::plain(text(&h["step"])),
                Cell::plain(time(&h["at"])),
                Cell::plain(text(&h["detail"])),
            ]);
        }
        table.print();
        if view["history_more"].as_bool() == Some(true) {
            println!(
                "(the latest {} of {} transitions; --json and the API page back)",
                history.len(),
                text(&view["history_total"])
            );
        }
    }
    Ok(())
}

async fn act(
    client: &ApiClient,
    json: bool,
    raw: &str,
    action: &str,
    note: &Note,
    step: Option<String>,
) -> Result<(), ClientError> {
    let id = saga_id(raw)?;
    let mut body = Map::new();
    if let Some(by) = &note.by {
        body.insert("by".into(), json!(by));
    }
    if let Some(reason) = &note.reason {
        body.insert("reason".into(), json!(reason));
    }
    if let Some(step) = step {
        body.insert("step".into(), json!(step));
    }
    let answer = client
        .post(&["sagas", &id.to_string(), action], &Value::Object(body))
        .await?;
    if json {
        print_json(&answer);
    } else {
        println!(
            "{action} accepted: saga {} ({})",
            text(&answer["saga_id"]),
            text(&answer["code"])
        );
    }
    Ok(())
}
