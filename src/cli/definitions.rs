//! `saga-service definitions list|show|put`.

use std::path::Path;

use serde_json::Value;

use super::args::{DefinitionsArgs, DefinitionsCommand};
use super::output::{print_json, text, Cell, Table};
use super::{report, ApiClient, ClientError, EXIT_OK};
use crate::domain::definition::parse_definitions;

/// Runs one `definitions` subcommand; returns the exit code.
pub async fn run(args: DefinitionsArgs) -> i32 {
    let json = args.api.json;
    let client = match ApiClient::new(&args.api) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    let done = match args.command {
        DefinitionsCommand::List => list(&client, json).await,
        DefinitionsCommand::Show { name, version } => show(&client, json, &name, version).await,
        DefinitionsCommand::Put { file } => put(&client, json, &file).await,
    };
    match done {
        Ok(()) => EXIT_OK,
        Err(e) => report(&e),
    }
}

async fn list(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let answer = client.get(&["definitions"], &[]).await?;
    if json {
        print_json(&answer);
        return Ok(());
    }
    let mut table = Table::new(vec!["NAME", "VERSION", "STEPS"]);
    for d in answer["definitions"].as_array().into_iter().flatten() {
        let steps: Vec<String> = d["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| text(&s["name"]))
            .collect();
        table.row(vec![
            Cell::plain(text(&d["name"])),
            Cell::plain(text(&d["version"])),
            Cell::plain(steps.join(", ")),
        ]);
    }
    table.print();
    Ok(())
}

async fn show(
    client: &ApiClient,
    json: bool,
    name: &str,
    version: Option<u32>,
) -> Result<(), ClientError> {
    let query: Vec<(&str, String)> = version
        .map(|v| ("version", v.to_string()))
        .into_iter()
        .collect();
    let d = client.get(&["definitions", name], &query).await?;
    if json {
        print_json(&d);
        return Ok(());
    }
    println!("name      {}", text(&d["name"]));
    println!("version   {}", text(&d["version"]));
    if !d["deadline_ms"].is_null() {
        println!("deadline  {} ms", text(&d["deadline_ms"]));
    }
    println!();
    let mut table = Table::new(vec![
        "STEP",
        "QUEUE",
        "COMPENSATE",
        "TIMEOUT_MS",
        "MAX_ATTEMPTS",
        "GROUP",
        "ON_ERROR",
        "PIVOT",
    ]);
    for s in d["steps"].as_array().into_iter().flatten() {
        let or = |key: &str, default: &str| match &s[key] {
            Value::Null => default.to_string(),
            v => text(v),
        };
        table.row(vec![
            Cell::plain(text(&s["name"])),
            Cell::plain(text(&s["queue"])),
            Cell::plain(or("compensate", "true")),
            Cell::plain(or("timeout_ms", "30000")),
            Cell::plain(or("max_attempts", "3")),
            Cell::plain(text(&s["group"])),
            Cell::plain(or("on_error", "compensate")),
            Cell::plain(or("pivot", "false")),
        ]);
    }
    table.print();
    Ok(())
}

/// The definitions of a file as the JSON bodies of `PUT /definitions/{name}`, with their
/// names: TOML parsed (and checked) by the service's own parser, or JSON taken as it is.
pub fn read_definitions(path: &Path) -> Result<Vec<(String, Value)>, ClientError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("cannot read {shown}: {e}")))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let bodies: Vec<Value> = if is_json {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(all)) => all,
            Ok(one @ Value::Object(_)) => vec![one],
            Ok(_) => {
                return Err(ClientError::Usage(format!(
                    "{shown}: expected a definition (an object) or an array of them"
                )))
            }
            Err(e) => return Err(ClientError::Usage(format!("{shown}: invalid JSON: {e}"))),
        }
    } else {
        parse_definitions(&text, &shown)
            .map_err(|e| ClientError::Usage(e.to_string()))?
            .iter()
            .map(|d| d.canonical_json())
            .collect()
    };
    if bodies.is_empty() {
        return Err(ClientError::Usage(format!("{shown} holds no definition")));
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| match body["name"].as_str() {
            Some(name) if !name.is_empty() => Ok((name.to_string(), body)),
            _ => Err(ClientError::Usage(format!(
                "{shown}: definition {} has no `name`",
                i + 1
            ))),
        })
        .collect()
}

async fn put(client: &ApiClient, json: bool, path: &Path) -> Result<(), ClientError> {
    let definitions = read_definitions(path)?;
    let mut answers = Vec::new();
    for (name, body) in definitions {
        // One at a time, stopping at the first refusal: what was stored is printed.
        let answer = client.put(&["definitions", &name], &body).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if json && !answers.is_empty() {
                    print_json(&Value::Array(answers));
                }
                return Err(match e {
                    ClientError::Refused { status, error } => ClientError::Refused {
                        status,
                        error: format!("definition `{name}`: {error}"),
                    },
                    other => other,
                });
            }
        };
        if !json {
            println!(
                "stored {} version {}",
                text(&answer["name"]),
                text(&answer["version"])
            );
        }
        answers.push(answer);
    }
    if json {
        print_json(&Value::Array(answers));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{}-{name}", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_toml_file_gives_one_body_per_saga_with_the_defaults_filled_in() {
        let path = temp(
            "defs.toml",
            "[[sagas]]\nname = \"a\"\n[[sagas.steps]]\nname = \"s\"\nqueue = \"q\"\n\
             [[sagas]]\nname = \"b\"\n[[sagas.steps]]\nname = \"t\"\nqueue = \"q\"\npivot = true\n",
        );
        let defs = read_definitions(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].0, "a");
        assert_eq!(defs[0].1["steps"][0]["max_attempts"], 3);
        assert_eq!(defs[1].1["steps"][0]["pivot"], true);
    }

    #[test]
    fn a_json_file_holds_one_definition_or_an_array() {
        let one = temp(
            "one.json",
            r#"{"name":"a","steps":[{"name":"s","queue":"q"}]}"#,
        );
        let many = temp(
            "many.json",
            r#"[{"name":"a","steps":[]},{"name":"b","steps":[]}]"#,
        );
        assert_eq!(read_definitions(&one).unwrap().len(), 1);
        assert_eq!(read_definitions(&many).unwrap().len(), 2);
        std::fs::remove_file(&one).ok();
        std::fs::remove_file(&many).ok();
    }

    #[test]
    fn a_missing_or_invalid_file_is_bad_usage_naming_it() {
        let missing = std::path::Path::new("/nonexistent/defs.toml");
        let e = read_definitions(missing).unwrap_err();
        assert_eq!(e.exit_code(), super::super::EXIT_USAGE);
        assert!(e.to_string().contains("/nonexistent/defs.toml"), "{e}");
        let no_queue = temp(
            "bad.toml",
            "[[sagas]]\nname = \"x\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"\"\n",
        );
        let e = read_definitions(&no_queue).unwrap_err();
        std::fs::remove_file(&no_queue).ok();
        assert!(e.to_string().contains("has no queue"), "{e}");
        let nameless = temp("nameless.json", r#"{"steps":[]}"#);
        let e = read_definitions(&nameless).unwrap_err();
        std::fs::remove_file(&nameless).ok();
        assert!(e.to_string().contains("no `name`"), "{e}");
    }
}
