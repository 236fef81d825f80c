//! The `latch` command: `serve`, `check`, `gen-secret`, `contracts`, and the operator verbs.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{ArgGroup, Args, Parser, Subcommand};
use hyper::Method;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

use latch::cli::wait::{self, Target};
use latch::cli::{
    self, AdminClient,
    Cell::{Text, Time},
    CliError,
};
use latch::config::{format_duration, Config, RuntimeFlavor};

#[derive(Parser)]
#[command(
    name = "latch",
    version,
    about = "Token introspection and revocation server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PEM file of the CA(s) that signed an https:// server's certificate (a private CA);
    /// without it the system's roots are trusted.
    #[arg(long, global = true, env = "LATCH_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ConfigArg),
    /// Validate a config file; names the exact key and reason on error.
    Check(ConfigArg),
    /// Print a random client secret and its secret_sha256.
    GenSecret,
    /// Revoke every token of a subject, session, client, one token, or all tokens.
    Revoke(RevokeArgs),
    /// List, rotate or revoke signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The store's history: after restoring a backup or any loss, start a new epoch.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The cluster at a glance: nodes and their lag, keys by state, the newest
    /// revocations and how long each took to reach the last node.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Print audit records.
    Audit {
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Exit 0 when the server answers 200 at /readyz (no credentials): for container and
    /// service-manager health checks.
    Healthcheck {
        /// Base URL of the server to check.
        #[arg(long, env = "LATCH_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Give up (exit 1) after this long.
        #[arg(long, default_value = "3s", value_parser = latch::config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Authorization contracts: check, diff and plan a directory offline; apply, list,
    /// show, cancel, promote and roll back on a server.
    Contracts {
        #[command(subcommand)]
        command: cli::contracts::Command,
    },
    /// Just-in-time elevation: request, list, show, approve, deny, revoke grants, each
    /// person under their own credentials (LATCH_CLIENT_ID/LATCH_CLIENT_SECRET, else the
    /// admin variables).
    Grants {
        #[command(subcommand)]
        command: cli::grants::Command,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Config file.
    #[arg(long, env = "LATCH_CONFIG", default_value = "config/latch.toml")]
    config: PathBuf,
}

#[derive(Args)]
struct Remote {
    /// Base URL of a running latch (admin credentials from LATCH_ADMIN_CLIENT_ID and
    /// LATCH_ADMIN_CLIENT_SECRET).
    #[arg(
        long,
        global = true,
        env = "LATCH_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["subject", "session", "client", "token", "all"])))]
struct RevokeArgs {
    // Values may start with `-`: a jti or a session id is random base64url, so one in 32
    // does (clap would otherwise read `--token -x…` as an unknown flag).
    /// The subject as latch writes it in tokens, or with --issuer the IdP's own sub.
    #[arg(long, allow_hyphen_values = true)]
    subject: Option<String>,
    /// With --subject: the trusted issuer whose sub it is (its subject_prefix applies).
    #[arg(long, requires = "subject")]
    issuer: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    session: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    client: Option<String>,
    /// A token's jti.
    #[arg(long, allow_hyphen_values = true)]
    token: Option<String>,
    /// Every token issued so far.
    #[arg(long)]
    all: bool,
    /// Why: recorded in the audit log.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Clone, Copy)]
struct WaitArgs {
    /// Then wait until every live node has applied it or provably fails closed; exit 3
    /// (naming the nodes) if that takes longer than --timeout.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = latch::config::parse_duration, requires = "wait")]
    timeout: std::time::Duration,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List keys and their states.
    List,
    /// Rotate now: next signs, the active key starts retiring. Refused while the next key
    /// is too young for verifiers' cached JWKS to know it, unless --force.
    Rotate {
        #[arg(long, default_value = "")]
        reason: String,
        /// Rotate even if the promoted key may be unknown to verifiers (audited as forced).
        #[arg(long)]
        force: bool,
    },
    /// Emergency revocation: the key and its tokens are dead at once.
    Revoke {
        /// The key id (a thumbprint; it may start with '-').
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Close the store's epoch and open a new one (audited); with --revoke-all, also
    /// revoke every token and session issued before it.
    Recover {
        /// Why: recorded in the audit log.
        #[arg(long)]
        reason: String,
        /// Also revoke everything issued so far (after restoring an older backup).
        #[arg(long)]
        revoke_all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A verb whose output goes to a pipe closed early (`latch audit | head`) ends
        // quietly, as command-line tools do, instead of panicking in `println!`. The
        // server keeps Rust's default (SIGPIPE ignored): a peer that goes away is an
        // error on its socket, not the end of the process.
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging();
    if let Some(path) = cli.ca_file {
        cli::set_ca_file(path);
    }
    match cli.command {
        Command::Serve(a) => serve(a.config),
        Command::Check(a) => check(a.config),
        Command::GenSecret => gen_secret(),
        Command::Revoke(a) if a.wait.wait => {
            let (server, json, timeout) = (a.remote.server.clone(), a.remote.json, a.wait.timeout);
            wait::after(&server, json, timeout, Target::Revocation, |c| revoke(c, a))
        }
        Command::Revoke(a) => operator(&a.remote.server.clone(), a.remote.json, |c| revoke(c, a)),
        Command::Keys {
            command: command @ KeysCommand::Revoke { wait: w, .. },
            remote,
        } if w.wait => wait::after(&remote.server, remote.json, w.timeout, Target::Keys, |c| {
            keys(c, command)
        }),
        Command::Keys { command, remote } => {
            operator(&remote.server, remote.json, |c| keys(c, command))
        }
        Command::Status { remote } => operator(&remote.server, remote.json, wait::status),
        Command::Store { command, remote } => {
            operator(&remote.server, remote.json, |c| store(c, command))
        }
        Command::Audit {
            since,
            limit,
            remote,
        } => operator(&remote.server, remote.json, move |c| audit(c, since, limit)),
        Command::Contracts { command } => cli::contracts::run(command),
        Command::Grants { command, remote } => {
            cli::grants::run(command, &remote.server, remote.json)
        }
        Command::Healthcheck { server, timeout } => healthcheck(&server, timeout),
    }
}

/// Logs go to stderr (stdout carries the announce line and command output). `LATCH_LOG`
/// or `RUST_LOG` set the filter; default `info`.
fn init_logging() {
    let filter = std::env::var("LATCH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    // LATCH_LOG_FORMAT=json: one JSON object per line, with the request's span (its id and
    // endpoint) on every line logged while serving it. Anything else: readable text.
    if std::env::var("LATCH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| refused(path, e))
}

/// A configuration that cannot work: says why, naming the file, and exits 2.
fn refused(path: &std::path::Path, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("latch: {}: {why}", path.display());
    ExitCode::from(2)
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // `multi_thread`: one runtime, `workers` threads, for everything. `per_core`: this
    // thread's runtime runs the node's background tasks and the metrics listener, and
    // `latch::run` starts one single-threaded runtime per worker for the main listener.
    let mut builder = match config.runtime.flavor {
        RuntimeFlavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(config.runtime.worker_count());
            b
        }
        RuntimeFlavor::PerCore => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The signal handlers are installed before the node starts, so a SIGTERM that arrives
    // the moment it reports ready is not lost (it was, about 1 run in 6, when the
    // handler was installed on the future's first poll).
    let shutdown = match runtime.block_on(async { shutdown_signal() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latch: cannot install the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(latch::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        // A trusted issuer's JWKS that cannot be read or parsed is a config error, as
        // `latch check` reports it.
        Err(e @ latch::StartError::Config(_)) => refused(&path, e),
        Err(e) => {
            eprintln!("latch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now (inside the runtime); the future resolves
/// on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn check(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Validation does no IO; the trusted issuers' JWKS files are read here, as at start.
    // So are the JWKS files of private_key_jwt clients.
    if let Err(e) = config.trusted_issuers().and_then(|_| config.clients()) {
        return refused(&path, e);
    }
    println!("{}: ok", path.display());
    println!(
        "  issuer {}, listen {}, metrics {}",
        config.issuer, config.listen, config.metrics.listen
    );
    println!(
        "  store {} ({}), max_staleness {}",
        config.store.kind,
        match config.store.kind {
            latch::config::StoreKind::Embedded => config.store.path.display().to_string(),
            latch::config::StoreKind::Redis => "redis".into(),
        },
        format_duration(config.store.max_staleness)
    );
    println!(
        "  keys {} rotate every {} published {} ahead; access tokens {}",
        config.keys.algorithm.as_str(),
        format_duration(config.keys.rotate_every),
        format_duration(config.keys.publish_ahead),
        format_duration(config.tokens.access_ttl)
    );
    println!(
        "  {} clients, {} trusted issuers",
        config.clients.len(),
        config.trusted_issuers.len()
    );
    match latch::tls::check(&config.tls) {
        Ok(Some(chain)) => println!(
            "  tls on the main listener: {chain} certificate(s), key matches; reloaded on \
             SIGHUP and file change"
        ),
        Ok(None) => println!("  tls off (plain http on the main listener)"),
        Err(e) => return refused(&path, latch::config::ConfigError::from(e)),
    }
    if config.requests_client_certs() {
        match latch::tls::ClientAuth::load(&config.tls) {
            Ok(_) => println!(
                "  mutual TLS: client certificates requested{}",
                if config.tls.client_ca_file.is_some() {
                    "; chains checked against tls.client_ca_file"
                } else {
                    " (self-signed only: no tls.client_ca_file)"
                }
            ),
            Err(e) => return refused(&path, latch::config::ConfigError::from(e)),
        }
    }
    if config.has_demo_secret() {
        println!("  warning: demo secrets configured; latch will listen on loopback only");
    }
    report_contract_drift(&config);
    if config.store.kind == latch::config::StoreKind::Redis {
        return check_redis(&config);
    }
    ExitCode::SUCCESS
}

/// Reads the Redis settings latch depends on, if Redis is reachable now. A setting latch
/// refuses to start on fails the check; an unreachable Redis does not (the file is valid).
/// Prints how the contracts in the store differ from `[[clients]]`, if the store can be
/// read now (informational: the store wins; a busy or unreachable store is noted).
fn report_contract_drift(config: &Config) {
    let drift = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    latch::contract_drift(config),
                )
                .await
                .map_err(|_| "no answer within 10s".to_string())?
                .map_err(|e| e.to_string())
            })
        });
    match drift {
        Ok(lines) if lines.is_empty() => println!("  contracts: the store agrees with [[clients]]"),
        Ok(lines) => lines.iter().for_each(|l| println!("  contracts: {l}")),
        Err(e) => println!(
            "  contracts: not compared with the store ({})",
            latch::store::redis::topology::redact(&e)
        ),
    }
}

fn check_redis(config: &Config) -> ExitCode {
    use latch::store::redis::{topology::redact, RedisStore};
    let url = config.store.redis_url.as_deref().unwrap_or_default();
    println!("  redis {}", redact(url));
    let report = config
        .store
        .redis_options()
        .map_err(|e| e.to_string())
        .and_then(|options| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let timeout = std::time::Duration::from_secs(2);
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    RedisStore::inspect_settings(url, options, timeout),
                )
                .await
                .map_err(|_| "no answer within 10s".to_string())?
                .map_err(|e| e.to_string())
            })
        });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            println!(
                "  warning: could not check the redis settings: {}",
                redact(&e)
            );
            return ExitCode::SUCCESS;
        }
    };
    for note in &report.notes {
        println!("  redis {note}");
    }
    for warning in &report.warnings {
        println!("  warning: redis {warning}");
    }
    if report.refusals.is_empty() {
        return ExitCode::SUCCESS;
    }
    for refusal in &report.refusals {
        eprintln!("latch: redis {refusal}");
    }
    ExitCode::FAILURE
}

fn gen_secret() -> ExitCode {
    let mut bytes = [0u8; 32];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        eprintln!("latch: no randomness available");
        return ExitCode::FAILURE;
    }
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    println!("secret         {secret}");
    println!("secret_sha256  {hex}");
    ExitCode::SUCCESS
}

/// `latch healthcheck`: exit 0 on a 200 from /readyz, 1 with the reason otherwise.
fn healthcheck(server: &str, timeout: std::time::Duration) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unreachable {
            server: server.to_string(),
            reason: e.to_string(),
        })
        .and_then(|rt| rt.block_on(cli::healthcheck(server, timeout)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (CliError::BadServer(_) | CliError::BadCaFile { .. })) => {
            eprintln!("latch: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("latch: not ready: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator verb against a server; prints its JSON or its table.
fn operator<F, Fut>(server: &str, json: bool, f: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<(Value, String), CliError>>,
{
    let result = AdminClient::from_env(server).and_then(|client| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Unreachable {
                server: server.to_string(),
                reason: e.to_string(),
            })?;
        rt.block_on(f(client))
    });
    match result {
        Ok((value, text)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("latch: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn revoke(client: AdminClient, a: RevokeArgs) -> Result<(Value, String), CliError> {
    let (kind, value) = if a.all {
        ("all", None)
    } else if let Some(v) = a.subject {
        ("subject", Some(v))
    } else if let Some(v) = a.session {
        ("session", Some(v))
    } else if let Some(v) = a.client {
        ("client", Some(v))
    } else {
        ("token", a.token)
    };
    let mut body = json!({ "kind": kind, "reason": a.reason });
    if let Some(v) = value {
        body["value"] = json!(v);
    }
    if let Some(iss) = a.issuer {
        body["issuer"] = json!(iss);
    }
    let answer = client
        .call(Method::POST, "/admin/revoke", Some(body))
        .await?;
    let target = match &answer["value"] {
        Value::String(v) => format!("{kind} {v}"),
        _ => "all tokens".to_string(),
    };
    let text = format!(
        "revoked {target}: seq {}, at {} UTC",
        answer["seq"],
        cli::time_cell(&answer, "revoked_at")
    );
    Ok((answer, text))
}

async fn store(client: AdminClient, command: StoreCommand) -> Result<(Value, String), CliError> {
    let StoreCommand::Recover { reason, revoke_all } = command;
    let body = json!({ "reason": reason, "revoke_all": revoke_all });
    let answer = client
        .call(Method::POST, "/admin/store/recover", Some(body))
        .await?;
    let mut text = format!(
        "new store epoch {} from seq {}",
        cli::text_cell(&answer, "epoch"),
        answer["seq"]
    );
    if let Some(seq) = answer["revoked_all_seq"].as_u64() {
        text.push_str(&format!(
            "; everything issued before is revoked (seq {seq})"
        ));
    }
    Ok((answer, text))
}

async fn keys(client: AdminClient, command: KeysCommand) -> Result<(Value, String), CliError> {
    let answer = match command {
        KeysCommand::List => client.call(Method::GET, "/admin/keys", None).await?,
        KeysCommand::Rotate { reason, force } => {
            let body = json!({ "reason": reason, "force": force });
            client
                .call(Method::POST, "/admin/keys/rotate", Some(body))
                .await?
        }
        KeysCommand::Revoke { kid, reason, .. } => {
            let path = format!(
                "/admin/keys/{}/revoke",
                form_urlencoded::byte_serialize(kid.as_bytes()).collect::<String>()
            );
            client
                .call(Method::POST, &path, Some(json!({ "reason": reason })))
                .await?
        }
    };
    let text = cli::objects_table(
        &answer["keys"],
        &[
            ("KID", "kid", Text),
            ("STATE", "state", Text),
            ("ALG", "alg", Text),
            ("CREATED (UTC)", "created_at", Time),
            ("ACTIVATES", "activates_at", Time),
            ("RETIRES", "retires_at", Time),
        ],
    );
    Ok((answer, text))
}

async fn audit(client: AdminClient, since: u64, limit: u32) -> Result<(Value, String), CliError> {
    let path = format!("/admin/audit?since={since}&limit={limit}");
    let answer = client.call(Method::GET, &path, None).await?;
    let text = cli::objects_table(
        &answer["records"],
        &[
            ("SEQ", "seq", Text),
            ("TIME (UTC)", "time", Time),
            ("ACTOR", "actor", Text),
            ("ACTION", "action", Text),
            ("TARGET", "target", Text),
            ("REASON", "reason", Text),
        ],
    );
    Ok((answer, text))
}
