//! The Grafana dashboard and the Prometheus alert rules use only what `/metrics` serves.
//!
//! The prometheus crate exports a labelled metric only once it has a sample (an
//! `IntCounterVec` without label values prints not even its `# HELP`), so the list of
//! served names cannot be read from an idle app. The test therefore drives an app through
//! what produces each series the files select: a saga that completes (and is then deleted
//! by a 2 s retention), one that gets a retryable error, times out, and pauses, one
//! aborted, and a poison reply. Then every selector of every dashboard query, variable and
//! rule must name a served series (histograms by `_bucket`, `_sum` or `_count`, never the
//! bare name); every label it matches on must be one of that series' labels (`job` and
//! `instance` are Prometheus' own); and every `label="value"` must have a sample, except the
//! few values listed in [`NOT_DRIVEN`]. Regex matchers' values are not checked.

mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use saga_service::domain::{OnError, Retention};
use serde_json::{json, Value};

use crate::helpers::*;
use promql::{selectors, Selector};

const DASHBOARD: &str = "docker/grafana/dashboards/saga-service.json";
const RULES: &str = "docker/prometheus/alerts.yaml";

/// `(metric, label, value)` selected by the files that this test does not produce, and why.
const NOT_DRIVEN: &[(&str, &str, &str, &str)] = &[
    (
        "saga_partition_changes_total",
        "change",
        "expired",
        "only a starved instance lets a lease expire (tests/chaos)",
    ),
    (
        "saga_replies_total",
        "outcome",
        "forged_hand_over",
        "a hand-over with a bad signature (tests/api/forgery.rs)",
    ),
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

async fn metrics_text(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// Every `expr` of the dashboard, and the metric of each `label_values(metric, label)`
/// variable (with that label as a matcher, so that its presence is checked too).
fn dashboard_selectors(dashboard: &Value) -> Vec<(String, Selector)> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    let mut out: Vec<(String, Selector)> = exprs
        .iter()
        .flat_map(|e| selectors(e).into_iter().map(move |s| (e.clone(), s)))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = var["query"]["query"].as_str().or(var["query"].as_str());
        let Some(args) = query
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.strip_suffix(')'))
        else {
            continue;
        };
        let Some((metric, label)) = args.rsplit_once(',') else {
            continue;
        };
        for mut s in selectors(metric) {
            s.matchers.push(promql::Matcher {
                label: label.trim().to_string(),
                op: "=~".into(),
                value: ".+".into(),
            });
            out.push((query.unwrap_or_default().to_string(), s));
        }
    }
    out
}

/// The `expr` of every rule: on one line (plain or quoted) or as a `|`/`>` block. Panics
/// when the count differs from the rules', so a shape this reader misses cannot pass.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
            {
                block.push(lines[i].trim());
                i += 1;
            }
            out.push(block.join("\n"));
        } else if rest.starts_with('"') {
            out.push(serde_json::from_str(rest).expect("a double-quoted expr"));
        } else if let Some(quoted) = rest.strip_prefix('\'') {
            out.push(quoted.trim_end_matches('\'').replace("''", "'"));
        } else {
            out.push(rest.to_string());
        }
    }
    let rules = lines
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(out.len(), rules, "one expr per rule in {RULES}");
    out
}

/// What `/metrics` serves: each sample name with its `(label, value)` pairs, and each
/// family's type.
#[derive(Default)]
struct Served {
    samples: BTreeMap<String, BTreeSet<(String, String)>>,
    types: BTreeMap<String, String>,
}

impl Served {
    fn parse(text: &str) -> Self {
        let mut served = Served::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut parts = t.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    served.types.insert(name.into(), kind.into());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                if let Some(s) = selectors(line).into_iter().next() {
                    let labels = served.samples.entry(s.name).or_default();
                    labels.extend(s.matchers.into_iter().map(|m| (m.label, m.value)));
                }
            }
        }
        served
    }

    /// Why `s` selects nothing here, if it does not select what is served.
    fn problems(&self, s: &Selector) -> Vec<String> {
        if s.name == "up" {
            return Vec::new(); // Prometheus' own
        }
        let Some(labels) = self.samples.get(&s.name) else {
            let why = match self.types.get(&s.name).map(String::as_str) {
                Some("histogram") => "a histogram: select its _bucket, _sum or _count",
                _ => "not served by /metrics",
            };
            return vec![format!("{}: {why}", s.name)];
        };
        let mut out = Vec::new();
        for m in &s.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            if !labels.iter().any(|(l, _)| *l == m.label) {
                out.push(format!("{}: has no label {}", s.name, m.label));
            } else if m.op == "="
                && !m.value.contains('$')
                && !labels.contains(&(m.label.clone(), m.value.clone()))
                && !NOT_DRIVEN
                    .iter()
                    .any(|(n, l, v, _)| *n == s.name && *l == m.label && *v == m.value)
            {
                out.push(format!(
                    "{}: no sample with {}=\"{}\"",
                    s.name, m.label, m.value
                ));
            }
        }
        out
    }
}

/// Participants by the saga's `mode`: `bumpy` gets a retryable error, then a time-out on
/// s1, then an error on s2 (which pauses); `hold` never hears back on s1; all else is done.
fn script() -> Script {
    Arc::new(|c: &Received| {
        let mode = c.body["payload"]["mode"].as_str().unwrap_or_default();
        let attempt = c.body["attempt"].as_u64().unwrap_or(0);
        match (mode, c.action(), c.step(), attempt) {
            (_, "compensate", _, _) => Answer::Done(json!({})),
            ("hold", _, "s1", _) | ("bumpy", _, "s1", 2) => Answer::Silent,
            ("bumpy", _, "s1", 1) => Answer::Retryable("busy".into()),
            ("bumpy", _, "s2", _) => Answer::Error("refused".into()),
            _ => Answer::Done(json!({ "step": c.step() })),
        }
    })
}

#[actix_web::test]
async fn every_metric_the_dashboard_and_the_alert_rules_select_is_served() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut used = dashboard_selectors(&dashboard);
    for e in rule_exprs(&read(RULES)) {
        used.extend(selectors(&e).into_iter().map(|s| (e.clone(), s)));
    }
    assert!(used.len() > 20, "too few selectors read: {used:?}");

    let names = Names::new();
    let mut def = steps(&names, 2, 1_000, 3);
    def.steps[0].retry_backoff_ms = 100;
    def.steps[1].on_error = OnError::Pause;
    write_definitions(&names, &[def]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| {
        s.retention = Retention::after(Duration::from_secs(2))
    })
    .await;
    let participants = Participants::start(&app.names, 2, script()).await;
    app.start_saga(json!({"mode": "happy"})).await;
    app.start_saga(json!({"mode": "bumpy"})).await;
    let held = app.start_saga(json!({"mode": "hold"})).await;
    let r = app
        .http
        .post(app.url(&format!("/sagas/{held}/abort")))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 202);
    let reply_queue = app.names.reply_queue.clone();
    assert!(publish_raw(&participants.channel, &reply_queue, b"not json", None).await);

    let problems = || async {
        let text = metrics_text(&app).await;
        let served = Served::parse(&text);
        let mut out = BTreeSet::new();
        for (expr, s) in &used {
            for p in served.problems(s) {
                out.insert(format!("{p}\n    in: {expr}"));
            }
        }
        out
    };
    // Retention deletes the completed saga about 2-3 s after it finished; the rest is quicker.
    let clean = wait_until(Duration::from_secs(30), || async {
        problems().await.is_empty()
    })
    .await;
    if !clean {
        let list: Vec<String> = problems().await.into_iter().collect();
        panic!(
            "selected by {DASHBOARD} or {RULES} but not served:\n{}",
            list.join("\n")
        );
    }
    participants.close().await;
}

/// Rules and dashboards take `increase()` of counters: a series born at its first increment
/// hides that increment (the first dead-lettered reply would fire nothing). Every label
/// value the service counts is served at 0 before anything happened, and the per-type
/// series for each configured saga type.
#[actix_web::test]
async fn counters_are_served_at_zero_before_their_first_increment() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 1_000, 3)]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    let text = metrics_text(&app).await;
    let saga = app.saga().to_string();
    let expected = [
        r#"saga_replies_total{outcome="dead_lettered"} 0"#.to_string(),
        r#"saga_replies_total{outcome="forged_hand_over"} 0"#.to_string(),
        r#"saga_partition_changes_total{change="expired"} 0"#.to_string(),
        r#"saga_retries_total{reason="timeout"} 0"#.to_string(),
        r#"saga_retention_deleted_total{table="sagas"} 0"#.to_string(),
        format!(r#"saga_finished_total{{saga="{saga}",status="failed"}} 0"#),
        format!(r#"saga_finished_total{{saga="{saga}",status="paused"}} 0"#),
        format!(r#"saga_started_total{{saga="{saga}"}} 0"#),
        format!(r#"saga_aborted_total{{saga="{saga}"}} 0"#),
    ];
    for line in expected {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    app.stop().await;
}
