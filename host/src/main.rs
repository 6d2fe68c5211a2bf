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
    /// Build and check packs.
    Pack {
        #[command(subcommand)]
        command: PackCommand,
    },
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("WHARF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
