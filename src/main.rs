//! `saga-service`: thin entry point; see `saga_service::startup`.

use clap::Parser;

/// mimalloc keeps small long-lived allocations (the registry's slots and timers) apart
/// from the memory of stopped actors, so passivation hands memory back to the OS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use saga_service::config::{Cli, Command, ConfigError};
use saga_service::startup::Application;

fn fail(e: ConfigError) -> ! {
    eprintln!("saga-service: {e}");
    std::process::exit(2)
}

/// `--help` and `--version` print as usual; a bad flag or value is one line, exit code 2.
fn exit_on_clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    fail(ConfigError(line.to_string()))
}

#[actix_web::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_clap_error(e),
    };
    match cli.command {
        Some(Command::Sagas(_) | Command::Definitions(_) | Command::CheckParticipant(_)) => {
            saga_service::logging::init_quiet()
        }
        _ => saga_service::logging::init(),
    }
    let code = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Stub(args)) => stub(args).await,
        Some(Command::Sagas(args)) => saga_service::cli::run_sagas(args).await,
        Some(Command::Definitions(args)) => saga_service::cli::run_definitions(args).await,
        Some(Command::CheckParticipant(args)) => {
            saga_service::cli::check_participant::run(args).await
        }
    };
    std::process::exit(code);
}

async fn serve(args: saga_service::config::ServeArgs) -> i32 {
    let settings = args.settings().unwrap_or_else(|e| fail(e));
    let app = match Application::build(settings, true) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("saga-service: cannot start: {e:#}");
            return 1;
        }
    };
    log::info!("listening on port {}", app.port());
    match app.run_until_stopped().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("saga-service: {e}");
            1
        }
    }
}

async fn migrate(args: saga_service::config::MigrateArgs) -> i32 {
    let database =
        saga_service::config::parse_database_url(&args.database_url).unwrap_or_else(|e| fail(e));
    let pool = saga_service::store::build_pool(&database, 1);
    match saga_service::store::migrate(&pool).await {
        Ok(n) => {
            log::info!("{n} migrations applied");
            0
        }
        Err(e) => {
            eprintln!(
                "saga-service: migrations failed: {}",
                saga_service::logging::error_chain(&e)
            );
            1
        }
    }
}

async fn stub(args: saga_service::config::StubArgs) -> i32 {
    let tls = args.check().unwrap_or_else(|e| fail(e));
    match saga_service::stub::run(args, tls).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("saga-stub: {e:#}");
            1
        }
    }
}
