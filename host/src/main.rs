//! The `wharf` binary: the server and its operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wharf::config::{Config, LogFormat};
use wharf::packs::build::{BuildOptions, build_pack};
use wharf::packs::manifest::{Form, Manifest};
use wharf::server::Server;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "Plugin packs as sandboxed WebAssembly components"
)]
struct Cli {
    /// Path to wharf.toml (default: ./wharf.toml when present).
    #[arg(long, global = true, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the packs dir, watch it, and serve the HTTP API.
    Serve {
        /// Build every source pack under this directory into the packs dir first
        /// (e.g. `--build-packs packs` for the first-party packs).
        #[arg(long)]
        build_packs: Option<PathBuf>,
    },
    /// Probe an OpenAI-compatible endpoint once, without the server: loads the provider packs,
    /// prints the verdict and each step. Exit code 0 only when the verdict is `ready`.
    Probe(ProbeArgs),
    /// Build and check packs.
    Pack {
        #[command(subcommand)]
        command: PackCommand,
    },
    /// Apply a pack's overlays to a local directory, or revert them.
    Overlay {
        #[command(subcommand)]
        command: OverlayCommand,
    },
    /// Batches on a running server (`WHARF_URL`, key in `WHARF_API_KEY`).
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Relay imports on a running server (`WHARF_URL`, key in `WHARF_API_KEY`).
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import the provider keys of a file (one per line) into a registered relay host. With
    /// `--follow`, show progress until every key has its final access status, then a table.
    /// Exit code 0 when (followed) every key ended `ready`, 2 otherwise.
    Submit(ImportSubmitArgs),
}

#[derive(clap::Args)]
struct ImportSubmitArgs {
    /// The relay host's id (`rh_...`, from `POST /v1/hosts`).
    #[arg(long)]
    host: String,
    /// The provider id, e.g. `kimi`.
    #[arg(long)]
    provider: String,
    /// The keys, one per line (blank lines and `#` comments skipped); `-` reads stdin.
    #[arg(long)]
    keys_file: PathBuf,
    /// `subscription` or `self_service`.
    #[arg(long, default_value = "subscription")]
    mode: String,
    /// Models the accounts serve (comma-separated; aliases resolve). Default: the provider's.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// The upstream base URL. Default: the provider's.
    #[arg(long)]
    base_url: Option<String>,
    /// Print the plan (created, reused, changed per key) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Follow the import to its end: progress on stderr, then a table of the keys.
    #[arg(long)]
    follow: bool,
    /// The server's root URL.
    #[arg(long, env = "WHARF_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Submit a JSONL file of tasks (or a JSON array; `-` for stdin). With `--follow`, show a
    /// progress bar until the batch ends, then a summary table. Exit code 0 when every line
    /// was valid and (followed) every task succeeded, 2 otherwise.
    Submit(BatchSubmitArgs),
}

#[derive(clap::Args)]
struct BatchSubmitArgs {
    /// The tasks: JSONL, or a JSON array; `-` reads stdin.
    file: PathBuf,
    /// The server's root URL.
    #[arg(long, env = "WHARF_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Refuse the whole batch when any line is invalid.
    #[arg(long)]
    strict: bool,
    /// Keep the sandbox of a failed task for inspection.
    #[arg(long)]
    keep_on_failure: bool,
    /// Reuse earlier succeeded trajectories of identical tasks (the result cache).
    #[arg(long)]
    cache: bool,
    /// Follow the batch to its end: progress on stderr, then a summary table.
    #[arg(long)]
    follow: bool,
}

#[derive(Subcommand)]
enum OverlayCommand {
    /// Apply the overlays of a pack that match a target and version (or the ones named with
    /// `--overlay`) to DIR: all of them or none (a hunk that does not apply is
    /// `overlay_conflict` and nothing is written); one already applied is left alone.
    /// `--revert` undoes them.
    Apply(OverlayApplyArgs),
}

#[derive(clap::Args)]
struct OverlayApplyArgs {
    /// The pack (source or built) whose `overlays/` to use.
    #[arg(long)]
    pack: PathBuf,
    /// What DIR is, e.g. a relay host's name (with --version).
    #[arg(long, requires = "version", required_unless_present = "overlay")]
    target: Option<String>,
    /// DIR's version (semver, a leading `v` allowed).
    #[arg(long, requires = "target")]
    version: Option<String>,
    /// An overlay by id instead of matching (repeatable; in the order given).
    #[arg(long, conflicts_with = "target")]
    overlay: Vec<String>,
    /// Undo the overlays instead.
    #[arg(long)]
    revert: bool,
    /// Check and report; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// The directory to patch.
    dir: PathBuf,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// Provider id, e.g. `kimi`.
    #[arg(long)]
    provider: String,
    /// The relay or upstream API root.
    #[arg(long)]
    base_url: String,
    /// Name of the environment variable holding the API key (keys never go on a command line).
    #[arg(long)]
    api_key_env: String,
    /// Model to probe (aliases resolve); default the provider's smoke-test model.
    #[arg(long)]
    model: Option<String>,
    /// Ask for a streamed chat completion.
    #[arg(long)]
    stream: bool,
    /// The upstream itself: tells a relay's incompatibility from an upstream problem.
    #[arg(long)]
    direct_base_url: Option<String>,
    /// A directory of built packs, or one built pack (default: the configured packs dir,
    /// `WHARF_PACKS_DIR` or `<data_dir>/packs`).
    #[arg(long)]
    packs_dir: Option<PathBuf>,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PackCommand {
    /// Compile the component crates of a source pack into a built pack.
    Build {
        source: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Cargo target dir for the wasm builds.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Report every problem of a pack (source or built), with file and field.
    Validate { dir: PathBuf },
    /// Scaffold a source pack: pack.toml and one component crate on the plugin SDK, with
    /// tests (`cargo test`), ready for `wharf pack build`.
    New {
        /// Pack id, component and crate name: 2-64 chars of a-z, 0-9 and '-'.
        name: String,
        #[arg(long, value_enum, default_value_t = KindArg::Adapter)]
        kind: KindArg,
        /// Directory to create the pack in (as `<dir>/<name>`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Depend on a local checkout of `plugin-sdk/` instead of the published crate
        /// (for working on the SDK itself, and for this repository's tests).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Adapter,
    Provider,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { build_packs } => serve(cli.config, build_packs),
        Command::Pack {
            command:
                PackCommand::Build {
                    source,
                    out,
                    target_dir,
                },
        } => {
            init_tracing(LogFormat::Text);
            build_pack(&source, &out, &BuildOptions { target_dir }).map(|manifest| {
                println!(
                    "built {} {} -> {}",
                    manifest.id,
                    manifest.version,
                    out.display()
                );
            })
        }
        Command::Pack {
            command: PackCommand::Validate { dir },
        } => validate(&dir),
        Command::Overlay {
            command: OverlayCommand::Apply(args),
        } => overlay_apply(args),
        Command::Pack {
            command:
                PackCommand::New {
                    name,
                    kind,
                    dir,
                    sdk_path,
                },
        } => new_pack(name, kind, &dir, sdk_path),
        Command::Batch {
            command: BatchCommand::Submit(args),
        } => match batch_submit(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(err) => Err(err),
        },
        Command::Import {
            command: ImportCommand::Submit(args),
        } => match import_submit(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(err) => Err(err),
        },
        Command::Probe(args) => match probe(cli.config, args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn new_pack(
    name: String,
    kind: KindArg,
    dir: &std::path::Path,
    sdk_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    use wharf::packs::manifest::ComponentKind;
    use wharf::packs::scaffold::{Scaffold, SdkSource};
    let scaffold = Scaffold {
        name,
        kind: match kind {
            KindArg::Adapter => ComponentKind::Adapter,
            KindArg::Provider => ComponentKind::Provider,
        },
        sdk: sdk_path.map_or(SdkSource::Registry, SdkSource::Path),
    };
    let root = wharf::packs::scaffold::new_pack(dir, &scaffold)?;
    println!("created {}", root.display());
    println!(
        "  test:  cargo test --manifest-path {}",
        root.join(&scaffold.name).join("Cargo.toml").display()
    );
    println!("  build: wharf pack build {} --out <dir>", root.display());
    Ok(())
}

fn validate(dir: &std::path::Path) -> anyhow::Result<()> {
    let manifest = Manifest::load(dir, Form::Either).map_err(|problems| {
        for problem in &problems {
            eprintln!("{problem}");
        }
        anyhow::anyhow!("{} problem(s) in {}", problems.len(), dir.display())
    })?;
    let built = wharf::packs::loader::content_digest(dir)?;
    let mut problems = Vec::new();
    for (i, component) in manifest.components.iter().enumerate() {
        if let wharf::packs::manifest::ComponentSource::Wasm { path, sha256 } = &component.source {
            let file = dir.join(path);
            match std::fs::read(&file) {
                Ok(bytes) => {
                    use sha2::Digest;
                    let actual = hex::encode(sha2::Sha256::digest(&bytes));
                    if &actual != sha256 {
                        problems.push(format!(
                            "{}: components[{i}].sha256: manifest pins {sha256}, file has {actual}",
                            dir.join("pack.toml").display()
                        ));
                    }
                }
                Err(err) => problems.push(format!(
                    "{}: components[{i}].wasm: {}: {err}",
                    dir.join("pack.toml").display(),
                    path.display()
                )),
            }
        }
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    if !problems.is_empty() {
        anyhow::bail!("{} problem(s) in {}", problems.len(), dir.display());
    }
    println!(
        "ok: {} {} ({} components, content sha256 {built})",
        manifest.id,
        manifest.version,
        manifest.components.len()
    );
    Ok(())
}

/// `wharf overlay apply`: the pack's overlays read straight from its directory.
fn overlay_apply(args: OverlayApplyArgs) -> anyhow::Result<()> {
    use wharf::overlays::{self, apply};
    let manifest = Manifest::load(&args.pack, Form::Either).map_err(|problems| {
        for problem in &problems {
            eprintln!("{problem}");
        }
        anyhow::anyhow!("{} problem(s) in {}", problems.len(), args.pack.display())
    })?;
    let carried = overlays::load::load_overlays(&args.pack, &manifest.data, Some(&args.pack))
        .map_err(|why| anyhow::anyhow!("{}: {why}", args.pack.display()))?;
    let pack_version = manifest.version.to_string();
    let all: Vec<_> = carried
        .into_iter()
        .map(|overlay| {
            (
                overlays::info(&manifest.id, &pack_version, 0, &overlay),
                overlays::Selected {
                    pack: manifest.id.clone(),
                    pack_version: pack_version.clone(),
                    overlay,
                },
            )
        })
        .collect();
    let fail =
        |err: wharf::error::WharfError| anyhow::anyhow!("{} ({})", err.message, err.code.as_str());
    let (selected, plan) = match (&args.target, &args.version) {
        (Some(target), Some(version)) => {
            let (plan, selected) = overlays::plan(all, target, version).map_err(fail)?;
            (selected, Some(plan))
        }
        _ => (overlays::by_name(&all, &args.overlay).map_err(fail)?, None),
    };
    let direction = if args.revert {
        apply::Direction::Revert
    } else {
        apply::Direction::Apply
    };
    let outcomes = apply::run(&args.dir, &selected, direction, args.dry_run).map_err(fail)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"plan": plan, "outcomes": outcomes}))?
        );
        return Ok(());
    }
    if let Some(plan) = &plan {
        for other in &plan.not_matching {
            println!(
                "skipped {}/{}: {}",
                other.overlay.pack, other.overlay.id, other.reason
            );
        }
        if plan.matching.is_empty() {
            println!(
                "no overlay of {} {} matches {} {}",
                manifest.id, manifest.version, plan.target, plan.version
            );
        }
    }
    let verb = |action: apply::Action| match action {
        apply::Action::Applied if args.dry_run => "would apply",
        apply::Action::Reverted if args.dry_run => "would revert",
        apply::Action::Applied => "applied",
        apply::Action::Reverted => "reverted",
        apply::Action::AlreadyApplied => "already applied",
        apply::Action::NotApplied => "not applied",
    };
    for outcome in &outcomes {
        println!(
            "{} {}/{} ({}){}{}",
            verb(outcome.action),
            outcome.pack,
            outcome.overlay,
            outcome.pack_version,
            if outcome.files.is_empty() { "" } else { ": " },
            outcome.files.join(", ")
        );
    }
    Ok(())
}

/// `wharf batch submit`: the key comes from `WHARF_API_KEY` (keys never go on a command line).
fn batch_submit(args: BatchSubmitArgs) -> anyhow::Result<bool> {
    let key = std::env::var("WHARF_API_KEY")
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| anyhow::anyhow!("set WHARF_API_KEY to the API key to submit with"))?;
    let options = wharf::batches::client::SubmitOptions {
        url: args.url,
        key,
        file: args.file,
        strict: args.strict,
        keep_on_failure: args.keep_on_failure,
        cache: args.cache,
        follow: args.follow,
        poll_interval: std::time::Duration::from_millis(500),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(wharf::batches::client::submit(&options))
}

/// `wharf import submit`: the key comes from `WHARF_API_KEY` (keys never go on a command line;
/// the provider keys come from a file).
fn import_submit(args: ImportSubmitArgs) -> anyhow::Result<bool> {
    let key = std::env::var("WHARF_API_KEY")
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| anyhow::anyhow!("set WHARF_API_KEY to the API key to import with"))?;
    let options = wharf::relays::client::ImportOptions {
        url: args.url,
        key,
        host_id: args.host,
        provider: args.provider,
        keys_file: args.keys_file,
        mode: args.mode,
        models: args.models,
        base_url: args.base_url,
        dry_run: args.dry_run,
        follow: args.follow,
        poll_interval: std::time::Duration::from_millis(500),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(wharf::relays::client::submit(&options))
}

/// Runs one probe with the packs loaded in-process. `Ok(true)` when ready.
fn probe(config_path: Option<PathBuf>, args: ProbeArgs) -> anyhow::Result<bool> {
    let config = Config::load(config_path.as_deref())?;
    init_tracing(config.log_format);
    let api_key = std::env::var(&args.api_key_env).map_err(|_| {
        anyhow::anyhow!(
            "environment variable {} is not set (it must hold the API key)",
            args.api_key_env
        )
    })?;
    let packs_dir = args.packs_dir.clone().unwrap_or_else(|| config.packs_dir());
    // One built pack given directly: load it from a scratch packs dir holding a copy.
    let scratch = tempfile_dir()?;
    let packs_dir = if packs_dir.join("pack.toml").is_file() {
        let name = packs_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "pack".into());
        copy_tree(&packs_dir, &scratch.join(name))?;
        scratch.clone()
    } else {
        anyhow::ensure!(
            packs_dir.is_dir(),
            "packs dir {} does not exist",
            packs_dir.display()
        );
        packs_dir
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Data snapshots go to the scratch dir (a dot name: never scanned as a pack), never
    // to a data dir a running server may share.
    let pack_data = scratch.join(".pack-data");
    let result = runtime.block_on(async move {
        let metrics = std::sync::Arc::new(wharf::metrics::Metrics::new());
        let engine = wharf::runtime::Runtime::new(
            config.runtime.clone(),
            config.data_dir.join("cache/components"),
            metrics,
        )?;
        let logs = std::sync::Arc::new(wharf::runtime::logs::PluginLogs::new(
            config.packs.log_lines_per_pack,
            config.packs.log_owners_per_pack,
        ));
        let profiles = wharf::sandbox::profiles::Profiles::new(&config.profiles)?;
        let settings = wharf::packs::PackSettings::new(&config.packs, pack_data, profiles.names());
        let packs = std::sync::Arc::new(wharf::packs::Packs::new(
            packs_dir,
            std::sync::Arc::new(engine),
            logs,
            settings,
        )?);
        packs.rescan().await;
        for row in packs.snapshot().rows().iter().filter(|r| r.error.is_some()) {
            eprintln!(
                "pack {} quarantined: {}",
                row.dir,
                row.error.as_deref().unwrap_or_default()
            );
        }
        let runner = wharf::probes::runner::ProbeRunner::new(packs, config.probes.clone())?;
        let request = wharf::probes::runner::ProbeRequest {
            provider: args.provider,
            base_url: args.base_url,
            api_key,
            model: args.model,
            stream: args.stream.then_some(true),
            direct_base_url: args.direct_base_url,
        };
        // The CLI runs on the server's machine, by its operator: any address is theirs to probe.
        runner
            .run(&request, wharf::outbound::Reach::Any)
            .await
            .map_err(|err| anyhow::anyhow!("{} ({})", err.message, err.code.as_str()))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let result = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "verdict: {}{}",
            result.verdict,
            if result.retriable { " (retriable)" } else { "" }
        );
        println!("detail:  {}", result.detail);
        println!("model:   {}", result.model.as_deref().unwrap_or("-"));
        println!(
            "pack:    {} {} (generation {})",
            result.pack, result.pack_version, result.generation
        );
        println!(
            "attempts: {}, {:.1} ms",
            result.attempts, result.duration_ms
        );
        for warning in &result.warnings {
            println!("warning: {warning}");
        }
        for step in &result.steps {
            let status = step.status.map_or("---".to_string(), |s| s.to_string());
            println!(
                "  [{}] {:<6} {:<16} {} {:<4} {:>8.1} ms  {}: {}",
                if step.passed { "ok" } else { "!!" },
                step.via,
                step.name,
                step.method,
                status,
                step.latency_ms,
                step.class,
                step.detail
            );
        }
    }
    Ok(result.ready())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wharf-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("WHARF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // bollard's debug events echo the engine's answers, which carry containers' environment
    // (a case's secret_env): never below info, whatever WHARF_LOG asks.
    let filter = filter.add_directive("bollard=info".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config_path: Option<PathBuf>, build_packs: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    init_tracing(config.log_format);
    if let Some(sources) = build_packs {
        build_all(&sources, &config.packs_dir())?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let (server, generated_admin) = Server::start(config).await?;
        if let Some(secret) = generated_admin {
            // Printed once, to the terminal only: it is never logged.
            println!("\n  First start: generated admin API key (shown once, store it now):\n\n    {secret}\n");
        }
        tracing::info!(address = %listener.local_addr()?, packs_dir = %server.state.packs.dir().display(), "wharf serving");
        server.serve(listener, shutdown_signal()).await
    })
}

fn build_all(sources: &std::path::Path, packs_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(sources)?
        .flatten()
        .filter(|e| e.path().join("pack.toml").is_file())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let out = packs_dir.join(entry.file_name());
        let manifest = build_pack(&entry.path(), &out, &BuildOptions::default())?;
        tracing::info!(pack = %manifest.id, version = %manifest.version, out = %out.display(), "built pack");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
