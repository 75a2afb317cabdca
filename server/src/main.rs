//! `switchboard-server`: parse the options, start logging, bind, serve until Ctrl-C or
//! SIGTERM. Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use switchboard_server::config::{Config, LogFormat};
use switchboard_server::{AppState, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate().map_err(anyhow::Error::msg)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // Tests and scripts read this line to learn the port when --addr ends in :0.
    println!("switchboard listening on {scheme}://{addr}");
    tracing::info!(%addr, dist = %config.dist.display(), "serving");
    let budget = switchboard_server::budget::MemoryBudget::from_config(&config);
    tracing::info!(
        per_connection_kib = budget.per_connection >> 10,
        streams_mib = budget.shared >> 20,
        max_connections = config.max_connections,
        worst_case_mib = budget.total(&config) >> 20,
        "memory bound (see server/src/budget.rs; lower --max-connections or --queue-bytes to lower it)"
    );
    let state = AppState::try_new(config).map_err(anyhow::Error::msg)?;
    run(listener, state, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
