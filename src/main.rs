//! The `featureproxy` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::path::Path;

use featureproxy::config::access::token_hash;
use featureproxy::config::settings::Settings;
use featureproxy::config::ConfigFile;
use featureproxy::reload::ConfigSource;
use featureproxy::store::redis::tls::RedisTls;
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
        #[command(flatten)]
        flags: Flags,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Check a registry file and print its views; exits non-zero naming every problem.
    Check {
        #[arg(long, default_value = "examples/features.toml")]
        config: String,
    },
    /// Tokens for the access file.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a fresh random token once, with the [[access]] lines (its hash) to paste.
    New {
        /// The principal the token is for: logs and metrics name it.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Token {
            action: TokenAction::New { name },
        } => new_token(&name),
        Command::Check { config } => check(&config),
        Command::Serve {
            config,
            flags,
            log_json,
        } => {
            init_logs(log_json);
            // On the main thread, which lives as long as the process: the private redis-server
            // started without --redis is killed by the kernel when the thread that started it
            // exits (store::redis::child).
            serve(&config, flags)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Checks the config file (and the access file it names) and prints its views.
fn check(config: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = ConfigFile::load(config)?;
    c.settings.resolve_files(config_folder(config));
    c.settings.validate()?;
    featureproxy::reload::load(&c.settings, &c.registry)?;
    if let Some(redis_tls) = &c.settings.redis_tls {
        RedisTls::load(redis_tls)?;
    }
    for v in c.registry.views() {
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
    Ok(())
}

/// `serve`'s flags, each overriding its setting of the config file.
#[derive(clap::Args)]
struct Flags {
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
    /// Require HELLO with this token as each connection's first frame (one principal that
    /// reads and writes every view).
    #[arg(long, env = "FEATUREPROXY_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// Principals, their token hashes and grants (TOML); relative to the config file's
    /// folder. Re-read on SIGHUP.
    #[arg(long)]
    access_file: Option<std::path::PathBuf>,
}

fn serve(config: &str, flags: Flags) -> Result<(), Box<dyn std::error::Error>> {
    let ConfigFile {
        mut settings,
        registry,
    } = ConfigFile::load(config)?;
    if let Some(v) = flags.listen {
        Settings::set_addr(&mut settings.listen, "--listen", &v)?;
    }
    if let Some(v) = flags.stats_listen {
        Settings::set_addr(&mut settings.stats_listen, "--stats-listen", &v)?;
    }
    settings.redis = flags.redis.or(settings.redis);
    settings.shards = flags.shards.unwrap_or(settings.shards);
    settings.auth_token = flags.auth_token.or(settings.auth_token);
    settings.access_file = flags.access_file.or(settings.access_file);
    settings.resolve_files(config_folder(config));
    let text = std::fs::read_to_string(config)?;
    let source = ConfigSource::new(config, &text);
    featureproxy::server::run(settings, registry, Some(source))?;
    Ok(())
}

/// The config file's folder: files it names by a relative path are found from there, so that
/// they can move together.
fn config_folder(config: &str) -> &Path {
    Path::new(config).parent().unwrap_or(Path::new(""))
}

/// Prints a fresh token (32 random bytes from the OS, hex) and the lines that grant it.
fn new_token(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let token = format!("fp_{}", hex(&bytes));
    let hash = hex(&token_hash(&token));
    println!(
        "# The token for {name}; it is shown only now. Give it to the client (HELLO's token):"
    );
    println!("{token}");
    println!();
    println!(
        "# Paste into the access file, grant views, then send the proxy SIGHUP. To rotate, add"
    );
    println!(
        "# the new hash beside the old one, SIGHUP, move the clients, remove the old, SIGHUP."
    );
    println!("[[access]]");
    println!("name = {name:?}");
    println!("token_sha256 = [\"{hash}\"]");
    println!("read = []    # views (or globs like \"item_*\", or \"*\") it may GET");
    println!("write = []   # views it may PUT");
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
