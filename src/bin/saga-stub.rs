//! `saga-stub`: the participant stub as a binary of its own (same as `saga-service stub`).

use clap::Parser;
use saga_service::config::StubArgs;

/// A participant stub on one command queue.
#[derive(Parser)]
#[command(name = "saga-stub", version, about = "A saga participant stub")]
struct Cli {
    #[command(flatten)]
    args: StubArgs,
}

#[actix_web::main]
async fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tracing=warn"),
    )
    .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("saga-stub: {}", line.trim_start_matches("error: "));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    let tls = match cli.args.check() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("saga-stub: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = saga_service::stub::run(cli.args, tls).await {
        eprintln!("saga-stub: {e:#}");
        std::process::exit(1);
    }
}
