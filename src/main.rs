//! The `featureproxy` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use featureproxy::config::settings::Settings;
use featureproxy::config::ConfigFile;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "featureproxy",
    version,
    about = "Serves ML feature vectors from Redis, fast, with defaults and freshness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the views of a registry file. Flags override the file's [server] table.
    Serve {
        /// The feature registry (views, features, defaults) and optional [server] settings.
        #[arg(long, default_value = "examples/features.toml")]
        config: String,
        /// Where inference servers connect (wire protocol v1).
        #[arg(long)]
        listen: Option<String>,
        /// Where operators scrape /metrics and probe /health.
        #[arg(long)]
        stats_listen: Option<String>,
        /// Redis URL, e.g. redis://127.0.0.1:6379, or a Redis Cluster by its seed nodes:
        /// redis-cluster://HOST:PORT?node=HOST:PORT&node=HOST:PORT. Without one, a private
        /// redis-server is started.
        #[arg(long)]
        redis: Option<String>,
        /// Shards (threads); defaults to the number of cores.
        #[arg(long)]
        shards: Option<usize>,
        /// Require HELLO with this token as each connection's first frame.
        #[arg(long, env = "FEATUREPROXY_AUTH_TOKEN")]
        auth_token: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Check a registry file and print its views; exits non-zero naming every problem.
    Check {
        #[arg(long, default_value = "examples/features.toml")]
        config: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match ConfigFile::load(&config) {
            Ok(ConfigFile { registry: r, .. }) => {
                for v in r.views() {
                    println!(
                            "view {} (id {}, {} layout): {} features, {} bytes per row, schema_id {:#010x}",
                            v.name,
                            v.id,
                            v.layout.name(),
                            v.features.len(),
                            v.row_bytes,
                            v.schema_id
                        );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            config,
            listen,
            stats_listen,
            redis,
            shards,
            auth_token,
            log_json,
        } => {
            init_logs(log_json);
            // On the main thread, which lives as long as the process: the private redis-server
            // started without --redis is killed by the kernel when the thread that started it
            // exits (store::redis::child).
            match serve(&config, listen, stats_listen, redis, shards, auth_token) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn serve(
    config: &str,
    listen: Option<String>,
    stats_listen: Option<String>,
    redis: Option<String>,
    shards: Option<usize>,
    auth_token: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let ConfigFile {
        mut settings,
        registry,
    } = ConfigFile::load(config)?;
    if let Some(v) = listen {
        Settings::set_addr(&mut settings.listen, "--listen", &v)?;
    }
    if let Some(v) = stats_listen {
        Settings::set_addr(&mut settings.stats_listen, "--stats-listen", &v)?;
    }
    if redis.is_some() {
        settings.redis = redis;
    }
    if let Some(n) = shards {
        settings.shards = n;
    }
    if auth_token.is_some() {
        settings.auth_token = auth_token;
    }
    featureproxy::server::run(settings, registry)?;
    Ok(())
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
