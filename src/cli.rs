//! The command line: `weir run`, `weir validate`, `weir test`, `weir generate`, `weir health`,
//! `weir tap`.
//!
//! anyhow stops here: library errors are typed; this layer adds context and maps the outcome to
//! an exit code (0 success, 1 runtime error, 2 invalid configuration or usage, 3 a `--oneshot`
//! that read lines of which none could be used).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::generate::{self, DemoOptions};
use crate::server;
use crate::source::Format;
use crate::telemetry::{self, SelfMetrics};
use crate::topology::{self, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Structured JSON logs in; Prometheus metrics out.",
    long_about = "weir reads structured JSON logs (stdin or files), derives Prometheus metrics \
                  declared in a pipeline file, and serves them on /metrics. With no --config it \
                  runs the embedded agent-system pipeline (pipelines/agents.toml).",
    after_help = ENV_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The environment variables weir reads, for `--help` (top level and `weir run`).
const ENV_HELP: &str = "Environment:\n  \
    WEIR_LOG      filter for weir's own logs (JSON on stderr): off, error, warn, info (default), \
    debug, trace, or TARGET=LEVEL pairs (info,weir::sink=debug); an invalid value is refused \
    (exit 2)\n  \
    METRICS_PORT  port of /metrics when --listen is not given (default 9090)";

// Parsed once and matched at once: the size of `RunArgs` costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: read stdin (or FILEs), derive metrics, serve /metrics.
    #[command(after_help = ENV_HELP)]
    Run(RunArgs),
    /// Check a pipeline file: exit 0, or print where it is wrong and exit 2.
    Validate(ValidateArgs),
    /// Run the tests carried in pipeline files ([[tests]]): exit 0 when all pass, 1 if not.
    ///
    /// Each test feeds its input lines through the pipeline (parse, metrics, alert rules on the
    /// lines' own timestamps), without network or server, and compares metric values, event
    /// fields and alerts with what it expects. Exit 0 when all pass, 1 when one fails, 2 when a
    /// file is invalid (printed as file:line:column).
    Test(TestArgs),
    /// Generate data.
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Print a shell completion script (bash, zsh, fish): `weir completions bash >
    /// ~/.local/share/bash-completion/completions/weir`.
    Completions(crate::reference::CompletionsArgs),
    /// Print the man page (roff): `weir man > weir.1 && man -l weir.1`.
    Man,
    /// Watch the events flowing through a running weir, as JSON lines on stdout.
    Tap(TapArgs),
    /// A running weir's own numbers, refreshed: events/s per source, parse errors, sinks
    /// (events/s, retries, buffer, dead letters), channel fill, alerts.
    Top(TopArgs),
    /// Exit 0 if a running weir answers GET /health, else 1 (for container health checks).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file. Default: the embedded pipelines/agents.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address for /metrics, /health and /ready (a port alone means 0.0.0.0:PORT).
    /// Default: 0.0.0.0:$METRICS_PORT, else 0.0.0.0:9090.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the admin endpoints: /tap, /stats, POST /-/reload (`weir tap`, `weir top`):
    /// HOST:PORT, unix:/path (a socket of mode 0600) or `off`. Default: $WEIR_ADMIN_LISTEN,
    /// else 127.0.0.1:9190 (this host only).
    #[arg(long, value_name = "ADDR|unix:PATH|off", env = "WEIR_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// The admin endpoints require `Authorization: Bearer TOKEN`, TOKEN being the value of
    /// this environment variable.
    #[arg(long, value_name = "VAR")]
    pub admin_token_env: Option<String>,
    /// TLS and basic auth of the public listener: a Prometheus exporter-toolkit web
    /// configuration file (YAML: tls_server_config, basic_auth_users, http_server_config).
    #[arg(long, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// HTTP connections open at once, per listener; at the cap the longest idle one is closed
    /// to make room.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub http_max_connections: usize,
    /// Seconds an HTTP client may take to send a request's headers, and a kept-alive
    /// connection may wait idle for its next request.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub http_header_timeout_secs: u64,
    /// Seconds a response write may make no progress before its connection is closed (a
    /// client, /tap included, that stops reading).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub http_write_timeout_secs: u64,
    /// Parse threads, at most 256 (0: one per core). Lines are parsed on these in parallel
    /// and derived on one more thread in the order they were read.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub threads: u16,
    /// Read the input to its end, print the final metrics (Prometheus text format) on stdout
    /// and exit. Serves nothing.
    #[arg(long)]
    pub oneshot: bool,
    /// Progress bar for files on stderr: auto (when stderr is a terminal), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub progress: String,
    /// Add a TCP source listening on this address (newline-delimited JSON); repeatable.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Vec<String>,
    /// Framing of the inputs given here: json (default), docker, cri or auto.
    #[arg(long, value_parser = ["json", "docker", "cri", "auto"])]
    pub format: Option<String>,
    /// Join multi-line events (tracebacks, stack traces) of the inputs given here (stdin,
    /// files, --tcp): python, java or go. Overrides the pipeline's top-level `multiline`.
    #[arg(long, value_parser = ["python", "java", "go"])]
    pub multiline: Option<String>,
    /// Forward every line to Loki (push API, protobuf + snappy), e.g. http://loki:3100.
    #[arg(long, value_name = "URL")]
    pub loki: Option<String>,
    /// Forward every line to Elasticsearch (`_bulk`), e.g. http://elasticsearch:9200.
    #[arg(long, value_name = "URL")]
    pub elasticsearch: Option<String>,
    /// Send the pipeline's spans and every line as OTLP/HTTP (protobuf) to an OpenTelemetry
    /// collector, Tempo or Jaeger, e.g. http://collector:4318 (/v1/traces and /v1/logs added).
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// Buffer of every sink: memory (default) or disk (under --data-dir; survives restarts).
    #[arg(long, value_parser = ["memory", "disk"])]
    pub buffer: Option<String>,
    /// After SIGINT/SIGTERM, how long sinks may take to deliver what they hold.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Pass every line through to stdout (`app | weir run --stdout | tee app.log`).
    #[arg(long, conflicts_with = "oneshot")]
    pub stdout: bool,
    /// Reload the pipeline file when it changes (SIGHUP and `POST /-/reload` always reload).
    #[arg(long, requires = "config", conflicts_with = "oneshot")]
    pub watch_config: bool,
    /// With --oneshot: also send the alerts' notifications (a backfill only reports them).
    #[arg(long, requires = "oneshot")]
    pub notify: bool,
    /// Directory for checkpoints of tailed files (overrides the pipeline's data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Files or globs to follow like `tail -F` (with --oneshot: read once, in order, to their
    /// end). Without any, weir reads stdin.
    #[arg(value_name = "FILE_OR_GLOB")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pipelines").required(true).multiple(true).args(["files", "config"])))]
pub struct TestArgs {
    /// Pipeline files whose [[tests]] to run.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Pipeline files, as with FILE (kept for scripts written before FILE).
    #[arg(long, short, num_args = 1.., value_name = "FILE")]
    pub config: Vec<PathBuf>,
}

impl TestArgs {
    /// The files to test: positional ones, then those of `--config`.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.iter().chain(&self.config)
    }
}

#[derive(Debug, Args)]
pub struct TapArgs {
    /// The running weir's admin address (its --admin-listen: HOST:PORT or unix:PATH).
    /// Default: $WEIR_ADMIN_LISTEN, else 127.0.0.1:9190.
    #[arg(long)]
    pub addr: Option<String>,
    /// Send `Authorization: Bearer TOKEN`, TOKEN being the value of this environment variable
    /// (weir run --admin-token-env).
    #[arg(long, value_name = "VAR")]
    pub admin_token_env: Option<String>,
    /// Only events matching this condition (the pipeline's condition language), e.g.
    /// 'level == "ERROR" && component == "EventBus"'. Any field may be named.
    #[arg(long)]
    pub filter: Option<String>,
    /// Only events of this source: `stdin`, a file source's path or glob as configured,
    /// `tcp:ADDR` (the address the TCP source listens on).
    #[arg(long)]
    pub source: Option<String>,
    /// At most this many events a second, up to 1000 (the rest are counted as dropped).
    #[arg(long, default_value_t = crate::tap::DEFAULT_RATE)]
    pub rate: f64,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The running weir's admin address (its --admin-listen: HOST:PORT or unix:PATH).
    /// Default: $WEIR_ADMIN_LISTEN, else 127.0.0.1:9190.
    #[arg(long)]
    pub addr: Option<String>,
    /// Send `Authorization: Bearer TOKEN`, TOKEN being the value of this environment variable
    /// (weir run --admin-token-env).
    #[arg(long, value_name = "VAR")]
    pub admin_token_env: Option<String>,
    /// Seconds between two polls (rates are over this interval).
    #[arg(long, default_value_t = 2.0)]
    pub interval_secs: f64,
    /// Stop after this many frames (default: until Ctrl-C). Output that is not a terminal gets
    /// one frame after another instead of a screen redrawn in place.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The running weir's HTTP address (`https://HOST:PORT` when it serves TLS; the
    /// certificate is not verified). Default: 127.0.0.1:$METRICS_PORT, else 127.0.0.1:9090.
    #[arg(long)]
    pub addr: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pipeline").required(true).args(["file", "config"])))]
pub struct ValidateArgs {
    /// Pipeline file to check.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Pipeline file to check, as with FILE (kept for scripts written before FILE).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also print what the pipeline does: sources, event fields, metrics with their labels and
    /// buckets, sinks, alerts and notifiers.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Agent-system JSON logs, deterministic for a given seed.
    DemoLogs(DemoLogsArgs),
    /// Prometheus alerting rules (YAML) equivalent to a pipeline's [[alerts]], for
    /// `rule_files`; rules Prometheus cannot express are listed as comments.
    PrometheusRules(PrometheusRulesArgs),
    /// A Grafana dashboard (JSON) for the metrics a pipeline declares: one panel per metric
    /// (counters as rates, gauges as they are, histograms as p50/p95/p99) and a variable per
    /// label.
    GrafanaDashboard(GrafanaDashboardArgs),
    /// The configuration reference (docs/configuration.md) or the pipeline file's JSON Schema
    /// (docs/weir.schema.json), generated from the config types. For maintainers.
    #[command(hide = true)]
    ConfigReference(crate::reference::ConfigReferenceArgs),
}

#[derive(Debug, Args)]
pub struct GrafanaDashboardArgs {
    /// Pipeline file. Default: the embedded pipelines/agents.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Output file. Default: stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PrometheusRulesArgs {
    /// Pipeline file. Default: the embedded pipelines/agents.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Output file. Default: stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoLogsArgs {
    /// Number of lines; 0 writes until the output is closed.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub count: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of lines (0 to 1) replaced by truncated JSON or plain text.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_rate: f64,
    /// Lines per second; 0 is as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Stamp lines with the current time (for a live demo) instead of a clock from 2024-01-01.
    #[arg(long)]
    pub live: bool,
    /// Play incidents over a quiet baseline, one for each alert of the default pipeline, in
    /// every 40 minutes of the log's clock: agent-07 fails every task (2:00-3:00), queue
    /// `retries` backs up (4:00-7:00), tasks take over a minute (10:00-25:00), SlackGateway goes
    /// silent (15:00-21:40).
    #[arg(long)]
    pub incidents: bool,
    /// Output file. Default: stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Writes generated text to `path`, or to stdout without one.
fn write_or_print(bytes: &[u8], path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    match path {
        Some(path) => std::fs::write(path, bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves the listen address from `--listen`, then `METRICS_PORT`, then the default.
pub fn listen_addr(flag: Option<&str>, env_port: Option<&str>) -> anyhow::Result<SocketAddr> {
    let text = match (flag, env_port) {
        (Some(f), _) => f.to_string(),
        (None, Some(p)) if !p.trim().is_empty() => p.trim().to_string(),
        _ => "0.0.0.0:9090".to_string(),
    };
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.parse::<SocketAddr>()
        .with_context(|| format!("invalid listen address {text:?}: expected HOST:PORT or a port"))
}

/// Runs the command; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_pipeline(args),
        Command::Test(args) => run_tests(&args),
        Command::Tap(args) => run_tap(args),
        Command::Health(args) => run_health(&args),
        Command::Top(args) => run_top(&args),
        Command::Generate(GenerateCommand::GrafanaDashboard(a)) => grafana_dashboard(&a),
        Command::Generate(GenerateCommand::ConfigReference(a)) => {
            let text = crate::reference::config_reference(a.format);
            write_or_print(text.as_bytes(), a.output.as_deref())
        }
        Command::Completions(a) => write_or_print(&crate::reference::completions(a.shell), None),
        Command::Man => write_or_print(&crate::reference::man()?, None),
        Command::Validate(args) => {
            let selfm = SelfMetrics::new();
            let Some(path) = args.file.as_ref().or(args.config.as_ref()) else {
                anyhow::bail!("weir validate needs a pipeline file: weir validate FILE");
            };
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(source) => {
                    return config_error(ConfigError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            };
            let name = path.display().to_string();
            let cfg = match config::PipelineConfig::parse(&name, &text) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            match cfg.compile(&name, &text, &selfm) {
                Ok(p) => {
                    println!(
                        "{}: ok ({} metrics, {} alerts, {} notifiers)",
                        path.display(),
                        p.deriver.metrics().len(),
                        p.rules.len(),
                        p.notifiers.len()
                    );
                    // Notifiers read their secrets from the environment when weir starts; say
                    // now which would stop it here.
                    for (name, n) in &p.notifiers {
                        if let Err(e) = n.build() {
                            eprintln!("warning: notifier {name}: {e} (weir run refuses to start without it)");
                        }
                    }
                    if args.explain {
                        // Values of secret-looking `${VAR}`s are shown as `${VAR}`.
                        let explained = crate::explain::explain(&cfg, &p);
                        print!("\n{}", cfg.interpolation.mask(&explained));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => config_error(e),
            }
        }
        Command::Generate(GenerateCommand::PrometheusRules(a)) => {
            let selfm = SelfMetrics::new();
            let p = match config::load(a.config.as_deref(), &selfm) {
                Ok(p) => p,
                Err(e) => return config_error(e),
            };
            let text = prometheus_rules(&p);
            match &a.output {
                Some(path) => std::fs::write(path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(GenerateCommand::DemoLogs(a)) => {
            if !(0.0..=1.0).contains(&a.malformed_rate) {
                anyhow::bail!("--malformed-rate must be between 0 and 1");
            }
            let opts = DemoOptions {
                count: a.count,
                seed: a.seed,
                malformed_rate: a.malformed_rate,
                rate: a.rate,
                live: a.live,
                incidents: a.incidents,
            };
            match &a.output {
                Some(p) => {
                    let f = std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                    generate::demo_logs(&opts, &mut w)?;
                    w.flush()?;
                }
                None => {
                    let mut w =
                        std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
                    generate::demo_logs(&opts, &mut w)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The Prometheus rules file of a compiled pipeline.
pub fn prometheus_rules(p: &config::CompiledPipeline) -> String {
    use crate::alert::promrules::{render_rules, MetricInfo, RuleInfo};
    let metrics = p.deriver.metrics();
    let lookup = |name: &str| {
        metrics.iter().find(|m| m.name == name).map(|m| MetricInfo {
            name: &m.name,
            kind: m.kind,
            counts_events: m.counts_events(),
            label_names: &m.label_names,
            buckets: &m.buckets,
        })
    };
    let rules: Vec<RuleInfo<'_>> = p
        .rules
        .iter()
        .map(|r| RuleInfo {
            name: &r.name,
            expr: &r.expr,
            severity: r.severity,
            summary: r.summary.as_ref(),
            description: r.description.as_ref(),
            link: r.link.as_ref(),
            labels: &r.labels,
        })
        .collect();
    // `weir-agents` for pipelines/agents.toml (embedded or not), `weir-my` for my.toml.
    let stem = pipeline_stem(&p.origin);
    render_rules(&format!("weir-{stem}"), &rules, &lookup)
}

/// `weir generate grafana-dashboard`: the dashboard of a pipeline's metrics, with each
/// metric's help text from the file.
fn grafana_dashboard(a: &GrafanaDashboardArgs) -> anyhow::Result<ExitCode> {
    use crate::dashboard::{self, DashboardMetric};
    let selfm = SelfMetrics::new();
    let p = match config::load(a.config.as_deref(), &selfm) {
        Ok(p) => p,
        Err(e) => return config_error(e),
    };
    let metrics: Vec<DashboardMetric<'_>> = p
        .deriver
        .metrics()
        .iter()
        .map(|m| DashboardMetric {
            name: &m.name,
            kind: m.kind,
            help: m.help.as_deref(),
            label_names: &m.label_names,
            counts_events: m.counts_events(),
        })
        .collect();
    let origin = a
        .config
        .as_ref()
        .map_or("pipelines/agents.toml".into(), |p| p.display().to_string());
    let board = dashboard::grafana_dashboard(pipeline_stem(&p.origin), &origin, &metrics);
    let text = dashboard::render(&board);
    match &a.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The file stem of a pipeline's origin: `agents` for pipelines/agents.toml, embedded or not.
fn pipeline_stem(origin: &str) -> &str {
    origin
        .trim_end_matches('>')
        .rsplit(['/', '\\', ' '])
        .next()
        .unwrap_or("pipeline")
        .trim_end_matches(".toml")
}

/// The address `weir health` asks (the public listener): `--addr`, else
/// `127.0.0.1:$METRICS_PORT`, else `127.0.0.1:9090`.
fn client_addr(addr: Option<String>) -> String {
    addr.unwrap_or_else(|| {
        let port = std::env::var("METRICS_PORT").unwrap_or_else(|_| "9090".into());
        format!("127.0.0.1:{}", port.trim())
    })
}

/// The admin address `weir tap` and `weir top` ask: `--addr`, else `$WEIR_ADMIN_LISTEN` (as
/// `weir run` reads it; a wildcard host is asked on 127.0.0.1), else `127.0.0.1:9190`.
fn admin_client_addr(addr: Option<String>, env: Option<&str>) -> anyhow::Result<String> {
    if let Some(a) = addr {
        return Ok(a);
    }
    let Some(text) = env.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(server::DEFAULT_ADMIN.to_string());
    };
    anyhow::ensure!(
        text != "off",
        "WEIR_ADMIN_LISTEN is off: this weir serves no admin endpoints (give --addr)"
    );
    if text.starts_with("unix:") {
        return Ok(text.to_string());
    }
    let mut a: SocketAddr = text
        .parse()
        .with_context(|| format!("WEIR_ADMIN_LISTEN {text:?} is not HOST:PORT"))?;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(a.to_string())
}

/// The admin listener of `weir run`: `--admin-listen ADDR` (or `$WEIR_ADMIN_LISTEN`), `off`
/// for none, else [`server::DEFAULT_ADMIN`].
pub fn admin_listen_addr(flag: Option<&str>) -> anyhow::Result<Option<server::AdminAddr>> {
    let text = flag.map(str::trim).filter(|t| !t.is_empty());
    match text {
        Some("off") => Ok(None),
        Some(t) => server::AdminAddr::parse(t)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("invalid --admin-listen {e}")),
        None => server::AdminAddr::parse(server::DEFAULT_ADMIN)
            .map(Some)
            .map_err(anyhow::Error::msg),
    }
}

/// The value of the environment variable that holds a token (`--admin-token-env VAR`).
fn token_from_env(var: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        _ => anyhow::bail!(
            "--admin-token-env {var}: the environment variable {var} is unset or empty"
        ),
    }
}

/// The single-threaded runtime of the client commands (`tap`, `top`, `health`).
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// `weir top`: polls a running weir's `GET /stats` and shows its numbers.
fn run_top(args: &TopArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.interval_secs > 0.0, "--interval-secs must be above 0");
    let env = std::env::var("WEIR_ADMIN_LISTEN").ok();
    let opts = crate::top::TopOptions {
        addr: admin_client_addr(args.addr.clone(), env.as_deref())?,
        token: token_from_env(args.admin_token_env.as_deref())?,
        interval: std::time::Duration::from_secs_f64(args.interval_secs),
        count: args.count,
    };
    let runtime = client_runtime()?;
    runtime.block_on(crate::top::run(opts))?;
    Ok(ExitCode::SUCCESS)
}

/// `weir health`: GET /health of a running weir; exit 0 on a 2xx, 1 otherwise (said on stderr).
/// The container image's HEALTHCHECK, where no shell or curl exists.
fn run_health(args: &HealthArgs) -> anyhow::Result<ExitCode> {
    let addr = client_addr(args.addr.clone());
    // `--addr https://HOST:PORT` when the listener has TLS (--web-config-file).
    let base = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    };
    let url = format!("{base}/health");
    let runtime = client_runtime()?;
    let timeout = std::time::Duration::from_secs(args.timeout_secs);
    let answer = runtime.block_on(async {
        // A liveness probe asks whether weir answers, not who it is: the certificate (often
        // for a name other than the address asked) is not verified.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(base.starts_with("https://"))
            .build()?;
        client.get(&url).send().await
    });
    match answer {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {:#}", anyhow::Error::from(e));
            Ok(ExitCode::from(1))
        }
    }
}

/// The sinks of `--loki`, `--elasticsearch` and `--otlp`, with every other setting at its
/// default.
fn cli_sinks(
    loki: Option<&str>,
    es: Option<&str>,
    otlp: Option<&str>,
) -> anyhow::Result<Vec<crate::sink::SinkConfig>> {
    let mut out = Vec::new();
    for (kind, url) in [("loki", loki), ("elasticsearch", es), ("otlp", otlp)] {
        if let Some(url) = url {
            let text = format!("type = {kind:?}\nendpoint = {url:?}\n");
            out.push(toml::from_str(&text).with_context(|| format!("--{kind} {url}"))?);
        }
    }
    Ok(out)
}

fn config_error(e: ConfigError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::from(2))
}

/// `weir tap`: streams `GET /tap` to stdout, a line at a time; the tap's notes go to stderr as
/// text. Exit 0 at `--limit`, on Ctrl-C or when weir goes away; 2 when weir refuses the filter
/// or the rate (its message on stderr); 1 when weir cannot be reached.
fn run_tap(args: TapArgs) -> anyhow::Result<ExitCode> {
    let env = std::env::var("WEIR_ADMIN_LISTEN").ok();
    let addr = admin_client_addr(args.addr.clone(), env.as_deref())?;
    let token = token_from_env(args.admin_token_env.as_deref())?;
    let runtime = client_runtime()?;
    runtime.block_on(async move {
        let mut query = vec![("rate", args.rate.to_string())];
        if let Some(f) = &args.filter {
            query.push(("filter", f.clone()));
        }
        if let Some(s) = &args.source {
            query.push(("source", s.clone()));
        }
        let (client, base) = server::admin_client(&addr);
        let mut request = client
            .build()
            .context("cannot build an HTTP client")?
            .get(format!("{base}/tap"))
            .query(&query);
        if let Some(t) = &token {
            request = request.bearer_auth(t);
        }
        let mut resp = request
            .send()
            .await
            .with_context(|| format!("cannot reach weir at {addr}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            eprintln!("error: weir answered {status}: {}", text.trim_end());
            let refused = matches!(
                status,
                reqwest::StatusCode::BAD_REQUEST | reqwest::StatusCode::NOT_FOUND
            );
            return Ok(ExitCode::from(if refused { 2 } else { 1 }));
        }
        let stream = async {
            let mut out = std::io::stdout().lock();
            let (mut pending, mut seen) = (Vec::new(), 0u64);
            // An error mid-stream is weir going away: the tap ends as at the stream's end.
            while let Ok(Some(chunk)) = resp.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(nl) = memchr::memchr(b'\n', &pending) {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&line[..nl]);
                    if let Some(note) = tap_note(&text) {
                        eprintln!("{note}");
                        continue;
                    }
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    seen += 1;
                    if args.limit.is_some_and(|l| seen >= l) {
                        return Ok(());
                    }
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = stream => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A `{"tap": {"dropped": n, "skipped": m}}` line of `GET /tap`, as text for people.
fn tap_note(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let note = v.get("tap")?;
    let n = |k: &str| note.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Some(format!(
        "tap: {} events dropped (rate limit), {} lines skipped (more than 20 × rate a second)",
        n("dropped"),
        n("skipped")
    ))
}

/// `weir test`: each file's report on stdout, config errors on stderr. Exit 2 if a file is
/// invalid, else 1 if a test failed, else 0.
fn run_tests(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let mut code = 0u8;
    let mut out = std::io::stdout().lock();
    for (i, path) in args.paths().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        match crate::pipeline_test::run_file(path) {
            Ok(report) => {
                write!(out, "{report}")?;
                if report.failed() > 0 {
                    code = code.max(1);
                }
            }
            Err(e) => {
                out.flush()?;
                eprintln!("error: {e}");
                code = 2;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::from(code))
}

fn run_pipeline(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = telemetry::init_tracing() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let selfm = SelfMetrics::new();
    let pipeline = match config::load(args.config.as_deref(), &selfm) {
        Ok(p) => p,
        Err(e) => return config_error(e),
    };
    // A backfill ends at its input's end; a TCP listener has none, so it would never end.
    let tcp_in_pipeline = pipeline
        .sources
        .iter()
        .any(|s| matches!(s, crate::source::SourceConfig::Tcp(_)));
    if args.oneshot && (!args.tcp.is_empty() || tcp_in_pipeline) {
        let which = if args.tcp.is_empty() {
            "the pipeline has a tcp source"
        } else {
            "--tcp was given"
        };
        eprintln!(
            "error: --oneshot reads its input to the end and exits, but {which}: a TCP \
             listener has no end. Run without --oneshot to serve /metrics, or save the stream \
             to a file and run `weir run --oneshot FILE`."
        );
        return Ok(ExitCode::from(2));
    }
    let listen = if args.oneshot {
        None
    } else {
        let env = std::env::var("METRICS_PORT").ok();
        Some(listen_addr(args.listen.as_deref(), env.as_deref())?)
    };
    let http = server::HttpOptions {
        admin: admin_listen_addr(args.admin_listen.as_deref())?,
        web: match &args.web_config_file {
            Some(path) => match server::WebConfig::load(path) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            },
            None => server::WebConfig::default(),
        },
        admin_token: token_from_env(args.admin_token_env.as_deref())?
            .map(|t| std::sync::Arc::new(server::auth::BearerToken::new(&t))),
        limits: server::Limits {
            max_connections: args.http_max_connections.max(1),
            header_timeout: std::time::Duration::from_secs(args.http_header_timeout_secs.max(1)),
            write_timeout: std::time::Duration::from_secs(args.http_write_timeout_secs.max(1)),
            ..server::Limits::default()
        },
    };
    let progress = match args.progress.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    } && !args.files.is_empty();
    let registry = pipeline.registry.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let shutdown = CancellationToken::new();
    runtime.spawn(crate::shutdown::watch_signals(shutdown.clone()));
    let parse_report = std::sync::Arc::new(crate::parse::report::ParseReport::default());
    let opts = RunOptions {
        files: args.files,
        listen,
        http,
        progress,
        tcp: args.tcp,
        oneshot: args.oneshot,
        format: args.format.as_deref().map(|f| match f {
            "docker" => Format::Docker,
            "cri" => Format::Cri,
            "auto" => Format::Auto,
            _ => Format::Json,
        }),
        data_dir: args.data_dir,
        stdout: args.stdout,
        sinks: cli_sinks(
            args.loki.as_deref(),
            args.elasticsearch.as_deref(),
            args.otlp.as_deref(),
        )?,
        buffer: args.buffer.as_deref().map(|b| match b {
            "disk" => crate::sink::BufferKind::Disk,
            _ => crate::sink::BufferKind::Memory,
        }),
        shutdown_timeout_secs: args.shutdown_timeout_secs,
        notify: args.notify,
        config: args.config.clone(),
        watch_config: args.watch_config,
        parse_report: parse_report.clone(),
        threads: usize::from(args.threads),
        multiline: args
            .multiline
            .as_deref()
            .and_then(crate::source::multiline::MultilineMode::parse)
            .map(crate::source::multiline::MultilineConfig::mode),
    };
    runtime.block_on(topology::run(pipeline, opts, selfm.clone(), shutdown))?;
    if args.oneshot {
        // Written chunk by chunk, as /metrics streams it: never the whole text in memory.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut written = Ok(());
        for chunk in server::Exposition::gather(&registry, &selfm) {
            written = out.write_all(chunk?.as_bytes());
            if written.is_err() {
                break;
            }
        }
        match written.and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.context("writing the exposition")?,
        }
    }
    // A backfill says what it read and what went wrong, on stderr (stdout is the exposition).
    let code = if args.oneshot {
        eprint!("{}", parse_report.summary());
        if parse_report.nothing_usable() {
            ExitCode::from(crate::parse::report::EXIT_NOTHING_USABLE)
        } else {
            ExitCode::SUCCESS
        }
    } else {
        ExitCode::SUCCESS
    };
    tracing::info!("stopped");
    // The stdin reader may still sit in a blocking read; don't wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_precedence() {
        assert_eq!(listen_addr(None, None).unwrap().to_string(), "0.0.0.0:9090");
        assert_eq!(
            listen_addr(None, Some("9100")).unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            listen_addr(Some("127.0.0.1:1234"), Some("9100"))
                .unwrap()
                .to_string(),
            "127.0.0.1:1234"
        );
        assert_eq!(
            listen_addr(Some("8080"), None).unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert!(listen_addr(Some("nonsense"), None).is_err());
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(
            admin_listen_addr(None).unwrap().unwrap().to_string(),
            "127.0.0.1:9190"
        );
        assert_eq!(admin_listen_addr(Some("off")).unwrap(), None);
        assert_eq!(
            admin_listen_addr(Some("unix:/run/w.sock"))
                .unwrap()
                .unwrap()
                .to_string(),
            "unix:/run/w.sock"
        );
        assert!(admin_listen_addr(Some("unix:")).is_err());
        assert_eq!(
            admin_client_addr(None, Some("unix:/run/w.sock")).unwrap(),
            "unix:/run/w.sock"
        );
        assert_eq!(
            admin_listen_addr(Some("0.0.0.0:9999"))
                .unwrap()
                .unwrap()
                .to_string(),
            "0.0.0.0:9999"
        );
        assert!(admin_listen_addr(Some("9999")).is_err());
        assert_eq!(admin_client_addr(None, None).unwrap(), "127.0.0.1:9190");
        assert_eq!(
            admin_client_addr(None, Some("0.0.0.0:9300")).unwrap(),
            "127.0.0.1:9300"
        );
        assert_eq!(
            admin_client_addr(Some("h:1".into()), Some("0.0.0.0:9300")).unwrap(),
            "h:1"
        );
        assert!(admin_client_addr(None, Some("off")).is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
