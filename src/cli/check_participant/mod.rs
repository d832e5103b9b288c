//! `saga-service check-participant --queue Q`: drives a running participant through the
//! rules of CONTRACT.md section 3 and prints one line per rule.
//!
//! It speaks only AMQP: its own exclusive reply queue, fresh saga ids, commands shaped
//! exactly as the orchestrator's ([`crate::broker::wire::CommandBody`] and its
//! properties). What a participant does besides answering (its effects) cannot be seen
//! from here, so "one effect" is checked as "the same answer".

mod probe;
mod reply;

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::ConnectionProperties;
use uuid::Uuid;

use super::args::CheckParticipantArgs;
use super::{EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::config::redact_url;
use probe::{Command, NoAnswer, Probe};
use reply::Answer;

/// The verdict on one rule.
type Verdict = Result<String, String>;

/// Runs the check; returns the exit code.
pub async fn run(args: CheckParticipantArgs) -> i32 {
    let tls = match check_inputs(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("saga-service: {e}");
            return EXIT_USAGE;
        }
    };
    let url = redact_url(&args.amqp.amqp_url);
    let connecting =
        crate::broker::connect_amqp(&args.amqp.amqp_url, ConnectionProperties::default(), &tls);
    let conn = match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            eprintln!(
                "saga-service: cannot reach the broker at {url}: {}",
                redact_url(&e.to_string())
            );
            return EXIT_UNREACHABLE;
        }
        Err(_) => {
            eprintln!("saga-service: cannot reach the broker at {url}: no answer within 15 s");
            return EXIT_UNREACHABLE;
        }
    };
    let code = check(&conn, &args).await;
    let _ = conn.close(200, ShortString::from("checked")).await;
    code
}

fn check_inputs(args: &CheckParticipantArgs) -> Result<crate::broker::AmqpTls, String> {
    let tls = args.amqp.check().map_err(|e| e.to_string())?;
    if args.queue.trim().is_empty() {
        return Err("--queue must name the participant's command queue".into());
    }
    if args.step.trim().is_empty() || args.saga.trim().is_empty() {
        return Err("--step and --saga must not be empty".into());
    }
    if args.timeout_ms == 0 {
        return Err("--timeout-ms must be at least 1".into());
    }
    Ok(tls)
}

async fn check(conn: &lapin::Connection, args: &CheckParticipantArgs) -> i32 {
    // The queue must exist (a command to a missing queue would vanish unseen); declared
    // passively on a channel of its own, which the broker closes when it does not.
    match conn.create_channel().await {
        Ok(ch) => {
            let declared = ch
                .queue_declare(
                    ShortString::from(args.queue.as_str()),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(q) if q.consumer_count() == 0 => eprintln!(
                    "saga-service: note: queue `{}` has no consumer now; answers may not come",
                    args.queue
                ),
                Ok(_) => {}
                Err(_) => {
                    eprintln!(
                        "saga-service: there is no queue `{}` on the broker (is the participant running?)",
                        args.queue
                    );
                    return EXIT_REFUSED;
                }
            }
        }
        Err(e) => {
            eprintln!("saga-service: broker: {e}");
            return EXIT_UNREACHABLE;
        }
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut probe = match Probe::open(conn, &args.queue, &args.saga, &args.step, timeout).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("saga-service: broker: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let mut broker_lost = false;
    let mut all_pass = true;
    let mut line = |rule: &str, verdict: &Verdict| match verdict {
        Ok(note) if note.is_empty() => println!("{rule:<11} pass"),
        Ok(note) => println!("{rule:<11} pass ({note})"),
        Err(why) => {
            all_pass = false;
            println!("{rule:<11} FAIL: {why}");
        }
    };
    let (fresh, first) = fresh(&mut probe, &args.step, &mut broker_lost).await;
    line("fresh", &fresh);
    line(
        "repeat",
        &repeat(&mut probe, first.as_ref(), &mut broker_lost).await,
    );
    line(
        "resend",
        &resend(&mut probe, first.as_ref(), &mut broker_lost).await,
    );
    line(
        "compensate",
        &compensate_first(&mut probe, &args.step, &mut broker_lost).await,
    );
    line("replies", &replies(&probe));
    if broker_lost {
        EXIT_UNREACHABLE
    } else if all_pass {
        EXIT_OK
    } else {
        EXIT_REFUSED
    }
}

/// Why there was no answer, noting a lost broker.
fn missing(e: NoAnswer, broker_lost: &mut bool) -> String {
    if matches!(e, NoAnswer::Broker(_)) {
        *broker_lost = true;
    }
    e.to_string()
}

/// Whether an answer names the command and saga it answers.
fn names(answer: &Answer, cmd: &Command) -> Result<(), String> {
    if answer.saga_id != cmd.saga_id.to_string() {
        return Err(format!(
            "the reply names saga `{}`, the command saga `{}`",
            answer.saga_id, cmd.saga_id
        ));
    }
    Ok(())
}

/// The sends a retryable error may ask for before the first answer counts as given.
const RETRYABLE_SENDS: u32 = 5;

/// (a) A fresh execute is answered done or error, naming its command and saga. Retryable
/// errors are sent again (attempt + 1), as the orchestrator would, until an outcome comes.
async fn fresh(
    probe: &mut Probe,
    step: &str,
    broker_lost: &mut bool,
) -> (Verdict, Option<(Command, Answer)>) {
    let mut cmd = Command::new(Uuid::new_v4(), step, "execute");
    loop {
        let answer = match probe.ask(&cmd).await {
            Ok(a) => a,
            Err(e) => return (Err(missing(e, broker_lost)), None),
        };
        if let Err(why) = names(&answer, &cmd) {
            return (Err(why), None);
        }
        if !answer.retryable || cmd.attempt >= RETRYABLE_SENDS {
            let note = format!("answered {}", answer.outcome());
            return (Ok(note), Some((cmd, answer)));
        }
        cmd.attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first answer, unless it cannot be compared with (none, or only retryable errors).
fn comparable(first: Option<&(Command, Answer)>) -> Result<&(Command, Answer), String> {
    match first {
        None => Err("not checked: the fresh command got no valid answer".into()),
        Some((_, a)) if a.retryable => Err(format!(
            "not checked: {RETRYABLE_SENDS} sends got only retryable errors, never an outcome"
        )),
        Some(first) => Ok(first),
    }
}

/// (b) The same command again (same `command_id`, same attempt) gets the same answer.
async fn repeat(
    probe: &mut Probe,
    first: Option<&(Command, Answer)>,
    broker_lost: &mut bool,
) -> Verdict {
    let (cmd, answer) = comparable(first)?;
    let again = probe.ask(cmd).await.map_err(|e| missing(e, broker_lost))?;
    names(&again, cmd)?;
    reply::same_outcome(answer, &again)?;
    Ok("same answer; effects cannot be seen from here".into())
}

/// (c) A re-send with a higher `attempt` and the same `command_id` gets the same answer.
async fn resend(
    probe: &mut Probe,
    first: Option<&(Command, Answer)>,
    broker_lost: &mut bool,
) -> Verdict {
    let (cmd, answer) = comparable(first)?;
    let mut cmd = cmd.clone();
    cmd.attempt += 1;
    let again = probe.ask(&cmd).await.map_err(|e| missing(e, broker_lost))?;
    names(&again, &cmd)?;
    reply::same_outcome(answer, &again).map_err(|why| format!("attempt {}: {why}", cmd.attempt))?;
    Ok(format!(
        "attempt {} answered as attempt {}",
        cmd.attempt,
        cmd.attempt - 1
    ))
}

/// (d) A compensate for a command never executed is answered done; that command's
/// execute, sent afterwards, is answered error (not retryable: it must never run).
async fn compensate_first(probe: &mut Probe, step: &str, broker_lost: &mut bool) -> Verdict {
    let saga_id = Uuid::new_v4();
    let compensate = Command::new(saga_id, step, "compensate");
    let answer = probe
        .ask(&compensate)
        .await
        .map_err(|e| format!("compensate: {}", missing(e, broker_lost)))?;
    names(&answer, &compensate)?;
    if answer.status != "done" || answer.retryable {
        return Err(format!(
            "a compensate for a command never executed was answered {}, not done",
            answer.outcome()
        ));
    }
    let execute = Command::new(saga_id, step, "execute");
    let answer = probe
        .ask(&execute)
        .await
        .map_err(|e| format!("execute after compensate: {}", missing(e, broker_lost)))?;
    names(&answer, &execute)?;
    match (answer.status.as_str(), answer.retryable) {
        ("error", false) => Ok("compensate done, then execute error".into()),
        ("error", true) => Err(
            "the execute after its compensate was answered a retryable error: a re-send would run it"
                .into(),
        ),
        _ => Err("the execute after its compensate was answered done: it ran after being compensated".into()),
    }
}

/// Every reply was valid, on the `reply_to` queue, persistent, and about a command sent.
fn replies(probe: &Probe) -> Verdict {
    if probe.received.is_empty() {
        return Err("no reply arrived at all".into());
    }
    for arrived in &probe.received {
        reply::read(arrived)?;
        reply::delivered_as_asked(arrived, probe.reply_to())?;
    }
    if let Some(stray) = probe.strays.first() {
        return Err(format!(
            "a reply named command `{stray}`, which was never sent"
        ));
    }
    Ok(format!(
        "{} valid replies on reply_to",
        probe.received.len()
    ))
}
