//! loadgen: power-law traffic for featureproxy, and the same workload against Redis or any RESP
//! proxy, measured the same way. `loadgen --help` lists the subcommands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;

use loadgen::driver::{self, Proto, RunConfig};
use loadgen::report::Report;
use loadgen::seed::{self, SeedConfig};
use loadgen::spec::{fmt_us, parse_duration, BatchSpec, Burst, Slo, Target};
use loadgen::workload::{write_trace, Trace, Workload};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Power-law (Zipf) load for featureproxy, and the same workload over RESP for comparison",
    long_about = "Power-law (Zipf) load for featureproxy, and the same workload over RESP (Redis, \
twemproxy) for comparison. Open loop by default: latency counts from each request's intended send \
time, so a stall in the server (or in loadgen) shows up in the numbers instead of hiding them."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a view's rows through the proxy: feature j of entity i = f(i, j).
    Seed(SeedArgs),
    /// Send Zipf-distributed GETs and report latency, statuses and a per-second timeline.
    Run(Box<RunArgs>),
    /// Measure loadgen's own maximum rate against in-process echo servers.
    Selftest(SelftestArgs),
    /// Write a trace of entity ids (one per line) drawn like `run` draws them, for --trace.
    Trace(TraceArgs),
    /// Serve protocol v1 as cheaply as possible (canned rows): the cost floor to compare a proxy
    /// against. Drive it with `run --verify-every 0`.
    #[command(long_about = FLOOR_ABOUT)]
    Floor(FloorArgs),
}

const FLOOR_ABOUT: &str = "Serve featureproxy's protocol v1 as cheaply as it can be served: the \
cost floor a proxy is compared against (`run --server-pid` on each gives CPU per request). One \
thread (a bare current-thread tokio loop, one task per connection), one view, no storage: HELLO, \
PING and SCHEMA are answered for the view (by default user_features' schema, 16 x f32, view id \
1), and every GET with a canned reply of the right size: FRESH, age 0, rows of zeros. Each read \
is decoded whole with featureproxy-protocol's decoder and answered with one write. PUT is \
refused, so seed the proxy, not the floor.

The rows are canned, not the values `seed` writes: run against it with --verify-every 0, or \
every 16th reply counts as a wrong_value error.

  loadgen floor --listen 127.0.0.1:7090 &
  loadgen run --target 127.0.0.1:7090 --closed --duration 10s --verify-every 0 --server-pid $!";

#[derive(Args)]
struct KeyArgs {
    /// Number of entities in the key space (ids 0..N).
    #[arg(long, default_value_t = 1_000_000)]
    entities: u64,
    /// Share of the key space never seeded: ids from round(N*(1-F)) up. Give `run` the same value.
    #[arg(long, default_value_t = 0.0)]
    cold_fraction: f64,
    /// Seed of every random choice (reproducible runs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Entity keys are PREFIX followed by the id.
    #[arg(long, default_value = "u:")]
    key_prefix: String,
    /// Auth token for HELLO, if the proxy has one.
    #[arg(long, env = "FEATUREPROXY_TOKEN")]
    token: Option<String>,
}

/// TLS to the proxy (`[server.tls] listen`). Only connections to the proxy use it: resp://
/// targets (Redis, twemproxy) and `loadgen floor` speak plaintext.
#[derive(Args)]
#[command(
    next_help_heading = "TLS to the proxy (resp:// targets and `loadgen floor` are plaintext)"
)]
struct TlsArgs {
    /// Connect to the proxy over TLS, trusting the CA certificate(s) in FILE (PEM) for its
    /// certificate.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for a proxy that requires one (mTLS); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify the proxy's certificate against NAME (and send it as SNI) instead of the target's
    /// host.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The client's TLS options, if TLS was asked for.
    fn options(&self) -> Result<Option<featureproxy_client::TlsOptions>, String> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() || self.tls_server_name.is_some() {
                return Err(
                    "--tls-cert, --tls-key and --tls-server-name need --tls-ca (the CA \
                            that signed the proxy's certificate)"
                        .into(),
                );
            }
            return Ok(None);
        };
        let mut o = featureproxy_client::TlsOptions::new(ca);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            o = o.client_cert(cert, key);
        }
        if let Some(name) = &self.tls_server_name {
            o = o.server_name(name);
        }
        Ok(Some(o))
    }
}

#[derive(Args)]
struct SeedArgs {
    /// The proxy: HOST:PORT.
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "user_features")]
    view: String,
    #[command(flatten)]
    keys: KeyArgs,
    /// Rows per PUT.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// PUTs in flight at once.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Connections to the proxy.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Entities read back at the end to check the values (0: skip).
    #[arg(long, default_value_t = 2000)]
    verify: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct RunArgs {
    /// HOST:PORT (featureproxy) or resp://HOST:PORT (Redis, twemproxy: GET / MGET of
    /// fp:{view}:v{version}:{key}).
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "user_features")]
    view: String,
    /// The view's version, for the Redis key names of a resp:// target.
    #[arg(long, default_value_t = 1)]
    view_version: u32,
    #[command(flatten)]
    keys: KeyArgs,
    /// Open loop: requests per second over all connections.
    #[arg(long, conflicts_with = "closed")]
    rate: Option<f64>,
    /// Closed loop: keep --inflight requests outstanding per connection (max throughput; its
    /// latencies are not what clients at a given rate would see).
    #[arg(long)]
    closed: bool,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests outstanding per connection at most.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Worker threads (each one sender and one receiver thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Zipf exponent of entity popularity.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// Entities per request: N, or A..B for a uniform size in A..=B.
    #[arg(long, default_value = "1", value_parser = BatchSpec::parse)]
    batch: BatchSpec,
    /// FACTORx:LEN/PERIOD: the rate times FACTOR during the last LEN of every PERIOD
    /// (e.g. 10x:5s/30s).
    #[arg(long, value_parser = Burst::parse)]
    burst: Option<Burst>,
    /// Replay entity ids (one per line) instead of drawing them.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// A request unanswered this long counts as a timeout (and its connection is reopened).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Server-side deadline sent with each GET (0: the server's default).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    deadline: Duration,
    /// Ask the proxy to skip its hot cache.
    #[arg(long)]
    bypass_cache: bool,
    /// Compare the rows of every Nth reply with the seeded values (0: never; give 0 against
    /// `loadgen floor`, whose rows are canned).
    #[arg(long, default_value_t = 16)]
    verify_every: u64,
    /// Fail (exit 3) unless these hold, e.g. p99=1ms,p999=5ms,max=50ms,errors=0.
    #[arg(long)]
    slo: Option<String>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the percentile curve and the timeline as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Append the headline numbers as one tab-separated line (header written when the file is new).
    #[arg(long)]
    tsv: Option<PathBuf>,
    /// A name for this run in the report.
    #[arg(long)]
    label: Option<String>,
    /// Don't print the per-second timeline.
    #[arg(long)]
    no_timeline: bool,
    /// A server process to charge: its CPU time (user + system, all threads, from
    /// /proc/PID/stat) over the measured window is reported per request and per entity
    /// answered. Repeat it for each process behind the target (e.g. the proxy and Redis).
    #[arg(long = "server-pid", value_name = "PID")]
    server_pid: Vec<u32>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct SelftestArgs {
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "1", value_parser = BatchSpec::parse)]
    batch: BatchSpec,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct FloorArgs {
    /// HOST:PORT to listen on (port 0 picks a free one; the address is printed).
    #[arg(long)]
    listen: String,
    /// Bytes per row: ROW_BYTES/4 f32 features f0, f1, ... (plus bool features for a remainder).
    #[arg(long, default_value_t = 64)]
    row_bytes: u32,
    /// The view name SCHEMA answers for.
    #[arg(long, default_value = "user_features")]
    view: String,
}

#[derive(Args)]
struct TraceArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    entities: u64,
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ids to write.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Seed(a) => cmd_seed(a),
        Cmd::Run(a) => cmd_run(*a),
        Cmd::Selftest(a) => cmd_selftest(a),
        Cmd::Floor(a) => cmd_floor(a),
        Cmd::Trace(a) => {
            write_trace(&a.out, a.entities, a.zipf_s, a.seed, a.count).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))
}

fn cmd_seed(a: SeedArgs) -> Result<ExitCode, String> {
    let target = Target::parse(&a.target)?;
    if target.is_resp() {
        return Err("seed writes through the proxy: give it the proxy's HOST:PORT".into());
    }
    if !(0.0..=1.0).contains(&a.keys.cold_fraction) {
        return Err("--cold-fraction must be within 0..1".into());
    }
    let cfg = SeedConfig {
        addr: target.addr().to_string(),
        view: a.view,
        entities: a.keys.entities,
        cold_fraction: a.keys.cold_fraction,
        batch: a.batch,
        inflight: a.inflight,
        connections: a.connections,
        seed: a.keys.seed,
        key_prefix: a.keys.key_prefix.into_bytes(),
        token: a.keys.token,
        verify: a.verify,
        tls: a.tls.options()?,
    };
    let summary = runtime()?.block_on(seed::seed(cfg))?;
    if summary.verify_failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// Fetches the view's schema through the client: its id, schema id and dtypes.
fn proxy_proto(
    a: &RunArgs,
    addr: &str,
    tls: Option<featureproxy_client::TlsOptions>,
) -> Result<Proto, String> {
    runtime()?.block_on(async {
        let opts = featureproxy_client::ClientOptions {
            token: a.keys.token.clone(),
            client_name: "loadgen".into(),
            timeout: Duration::from_secs(5),
            pool_size: 1,
            tls,
            ..Default::default()
        };
        let client = featureproxy_client::Client::connect(addr, opts)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let schema = client
            .schema(&a.view)
            .await
            .map_err(|e| format!("view {:?}: {e}", a.view))?;
        Ok(Proto::Fp {
            view_id: schema.view_id(),
            schema_id: schema.schema_id(),
            get_flags: if a.bypass_cache {
                featureproxy_protocol::GET_FLAG_BYPASS_CACHE
            } else {
                0
            },
            deadline_us: u32::try_from(a.deadline.as_micros()).unwrap_or(u32::MAX),
            dtypes: schema.features().iter().map(|f| f.dtype).collect(),
            token: a.keys.token.clone().unwrap_or_default(),
        })
    })
}

fn cmd_run(a: RunArgs) -> Result<ExitCode, String> {
    let target = Target::parse(&a.target)?;
    if a.rate.is_none() && !a.closed {
        return Err("give --rate R (open loop, requests/s) or --closed (max throughput)".into());
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("--rate must be > 0, got {r}"));
        }
    }
    if a.burst.is_some() && a.closed {
        return Err("--burst needs an open-loop --rate".into());
    }
    let slo = a
        .slo
        .as_ref()
        .map(|s| Slo::parse(s).map(|p| (s.clone(), p)))
        .transpose()?;
    let prefix = a.keys.key_prefix.clone().into_bytes();
    let trace = a
        .trace
        .as_ref()
        .map(|p| Trace::load(p, &prefix).map(Arc::new))
        .transpose()?;
    let workload = Workload::new(
        a.keys.entities,
        a.zipf_s,
        a.keys.seed,
        a.batch,
        a.keys.cold_fraction,
        trace,
    )?;
    let tls = a.tls.options()?;
    let (proto, tls) = match &target {
        Target::Proxy(addr) => {
            let connector = tls
                .as_ref()
                .map(|t| t.connector(addr))
                .transpose()
                .map_err(|e| e.to_string())?;
            (proxy_proto(&a, addr, tls)?, connector)
        }
        Target::Resp(_) if tls.is_some() => {
            return Err(
                "--tls-* apply to the proxy only: a resp:// target is spoken to in plaintext"
                    .into(),
            )
        }
        Target::Resp(_) => (
            Proto::Resp {
                redis_prefix: format!("fp:{}:v{}:", a.view, a.view_version).into_bytes(),
            },
            None,
        ),
    };
    let cfg = RunConfig {
        target: target.clone(),
        tls,
        view: a.view.clone(),
        proto,
        workload: Arc::new(workload),
        key_prefix: prefix,
        rate: a.rate,
        burst: a.burst,
        connections: a.connections.max(1),
        inflight: a.inflight.max(1),
        threads: a.threads.max(1),
        warmup: a.warmup,
        duration: a.duration.max(Duration::from_millis(1)),
        timeout: a.timeout.max(Duration::from_millis(1)),
        verify_every: if target.is_resp() { 0 } else { a.verify_every },
        progress: std::io::stderr().is_terminal(),
        server_pids: a.server_pid.clone(),
    };
    let measured = driver::run(cfg.clone())?;
    let label = a.label.clone().unwrap_or_else(|| "loadgen run".into());
    let report = Report::new(label, cfg, measured, slo.as_ref());
    let mut text = report.text();
    if a.no_timeline {
        text = text
            .lines()
            .filter(|l| !l.starts_with("timeline") && !l.starts_with("            "))
            .map(|l| format!("{l}\n"))
            .collect();
    }
    print!("{text}");
    if let Some(p) = &a.json {
        std::fs::write(p, report.json()).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, report.svg()).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if let Some(p) = &a.tsv {
        use std::io::Write;
        let new = !p.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("opening {}: {e}", p.display()))?;
        let header = if new {
            format!("{}\n", Report::TSV_HEADER)
        } else {
            String::new()
        };
        writeln!(f, "{header}{}", report.tsv_row())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if report.late_share() > 0.01 {
        eprintln!(
            "WARN loadgen fell behind its schedule: {:.1}% of sends went out more than 1 ms late (max lag {}). The latencies include that delay; this run measured loadgen as much as the target.",
            report.late_share() * 100.0,
            fmt_us(report.m.lag.max() as f64)
        );
    }
    if let Some((spec, failed)) = &report.slo {
        if !failed.is_empty() {
            eprintln!("SLO FAILED ({spec}): {}", failed.join("; "));
            return Ok(ExitCode::from(3));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_floor(a: FloorArgs) -> Result<ExitCode, String> {
    let cfg = loadgen::floor::FloorConfig {
        view: a.view,
        row_bytes: a.row_bytes,
    };
    cfg.validate()?;
    let listener = loadgen::floor::bind(&a.listen)?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The name /proc/PID/comm shows, so `run --server-pid` reports say what they measured.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"loadgen-floor".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    println!(
        "loadgen floor: view {:?} (view id {}, {}-byte rows of zeros, every GET answered FRESH) on {addr}, pid {}; drive it with --verify-every 0",
        cfg.view,
        loadgen::floor::VIEW_ID,
        cfg.row_bytes,
        std::process::id()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loadgen::floor::serve(listener, &cfg)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_selftest(a: SelftestArgs) -> Result<ExitCode, String> {
    let (fp, resp) = loadgen::selftest::start_echo()?;
    let workload = Arc::new(Workload::new(1_000_000, 0.99, 1, a.batch, 0.0, None)?);
    let base = |target: Target, proto: Proto, rate: Option<f64>| RunConfig {
        target,
        tls: None,
        view: "echo".into(),
        proto,
        workload: workload.clone(),
        key_prefix: b"u:".to_vec(),
        rate,
        burst: None,
        connections: a.connections,
        inflight: a.inflight,
        threads: a.threads,
        warmup: Duration::from_secs(1),
        duration: a.duration,
        timeout: Duration::from_secs(2),
        verify_every: 0,
        progress: false,
        server_pids: Vec::new(),
    };
    let fp_proto = Proto::Fp {
        view_id: 1,
        schema_id: 0,
        get_flags: 0,
        deadline_us: 0,
        dtypes: Vec::new(),
        token: String::new(),
    };
    let resp_proto = Proto::Resp {
        redis_prefix: b"fp:user_features:v1:".to_vec(),
    };
    eprintln!(
        "selftest: loadgen against in-process echo servers (they share this machine's {} cores), batch {}, {} conns x {} inflight, {} thread(s)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.batch,
        a.connections,
        a.inflight,
        a.threads
    );
    let mut json = Vec::new();
    let mut max_fp = 0.0;
    for (name, target, proto) in [
        (
            "featureproxy protocol",
            Target::Proxy(fp.to_string()),
            fp_proto.clone(),
        ),
        ("RESP", Target::Resp(resp.to_string()), resp_proto.clone()),
    ] {
        let cfg = base(target, proto, None);
        let m = driver::run(cfg.clone())?;
        let r = Report::new(format!("selftest closed loop, {name}"), cfg, m, None);
        println!(
            "closed loop, {name:<21}: {:>9.0} req/s  (p50 {}, p99 {}, errors {})",
            r.achieved_rps(),
            fmt_us(r.m.hist.value_at_quantile(0.5) as f64),
            fmt_us(r.m.hist.value_at_quantile(0.99) as f64),
            r.m.error_count()
        );
        if max_fp == 0.0 {
            max_fp = r.achieved_rps();
        }
        json.push(format!(
            "{{\"mode\": \"closed\", \"protocol\": \"{name}\", \"achieved_rps\": {:.0}}}",
            r.achieved_rps()
        ));
    }
    // Open loop at rising rates: up to which rate does loadgen keep its schedule?
    let mut max_open = 0.0;
    for rate in [
        10_000.0, 25_000.0, 50_000.0, 100_000.0, 200_000.0, 400_000.0,
    ] {
        if rate > max_fp {
            break;
        }
        let cfg = base(Target::Proxy(fp.to_string()), fp_proto.clone(), Some(rate));
        let m = driver::run(cfg.clone())?;
        let r = Report::new("selftest open loop".into(), cfg, m, None);
        let ok = r.late_share() < 0.01 && r.m.error_count() == 0;
        println!(
            "open loop at {rate:>7.0} req/s: achieved {:.0}/s, p50 {}, p99 {}, p99.9 {}; {:.3}% of sends > 1 ms late (lag p99 {}){}",
            r.achieved_rps(),
            fmt_us(r.m.hist.value_at_quantile(0.5) as f64),
            fmt_us(r.m.hist.value_at_quantile(0.99) as f64),
            fmt_us(r.m.hist.value_at_quantile(0.999) as f64),
            r.late_share() * 100.0,
            fmt_us(r.m.lag.value_at_quantile(0.99) as f64),
            if ok { "" } else { "  <- behind schedule" }
        );
        json.push(format!(
            "{{\"mode\": \"open\", \"rate\": {rate}, \"achieved_rps\": {:.0}, \"p99_us\": {}, \"late_share\": {:.5}}}",
            r.achieved_rps(),
            r.m.hist.value_at_quantile(0.99),
            r.late_share()
        ));
        if ok {
            max_open = rate;
        }
    }
    let open = if max_open > 0.0 {
        format!("open loop on schedule (< 1% of sends > 1 ms late) up to {max_open:.0} req/s, the highest rate tried that held")
    } else {
        "open loop: no rate tried kept 99% of sends within 1 ms of schedule (a busy machine?)"
            .to_string()
    };
    println!(
        "loadgen max rate: {max_fp:.0} req/s closed loop; {open} (batch {}, featureproxy protocol, {} thread(s), {} conns; the echo server shares the cores)",
        a.batch, a.threads, a.connections
    );
    if let Some(p) = &a.json {
        std::fs::write(p, format!("[\n  {}\n]\n", json.join(",\n  ")))
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
