//! `tetrarch dashboard`: the dashboard of a finished run, read from the store; and the live
//! dashboard `tetrarch run --dashboard ADDR` starts beside a run. A dashboard that cannot start
//! (address in use, bad address) is a warning: the run goes on without it.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tetrarch::agents::Runtime;
use tetrarch::plan::Plan;
use tetrarch::store::{Store, StoreConfig};
use tetrarch::telemetry::{DashboardServer, Telemetry, install_metrics, parse_addr};

/// `tetrarch dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to serve: HOST:PORT, or a port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: String,
    /// The run to show (default: the newest in the store).
    #[arg(long)]
    run: Option<String>,
}

/// Serves the dashboard of a finished run until Ctrl-C.
pub fn run(args: DashboardArgs, store: &Path) -> Result<ExitCode> {
    let addr = parse_addr(&args.addr)?;
    let store = Store::open(store, StoreConfig::default())
        .with_context(|| format!("cannot open the store {}", store.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let telemetry = Telemetry::finished(&store, args.run.as_deref(), install_metrics().ok())?;
        let server = DashboardServer::bind(addr, telemetry).await?;
        eprintln!(
            "dashboard: http://{}/ (Ctrl-C to stop)",
            server.local_addr()
        );
        tokio::select! {
            () = server.wait() => {}
            signal = tokio::signal::ctrl_c() => signal.context("cannot listen for Ctrl-C")?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The dashboard beside a live run.
pub struct LiveDashboard {
    telemetry: Telemetry,
    server: DashboardServer,
    observer: tokio::task::JoinHandle<()>,
}

/// Starts the dashboard of `plan`'s run on `addr` (`--dashboard`), or warns and returns `None`.
pub async fn start_live(
    addr: Option<&str>,
    plan: &Plan,
    runtime: &Runtime,
) -> Option<LiveDashboard> {
    let addr = match parse_addr(addr?) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("warning: {e}; the run goes on without the dashboard");
            return None;
        }
    };
    let metrics = install_metrics()
        .inspect_err(|e| eprintln!("warning: {e}; /metrics will be empty"))
        .ok();
    let telemetry = Telemetry::new(metrics);
    telemetry.watch_plan(plan);
    let observer = telemetry.observe(runtime.subscribe());
    match DashboardServer::bind(addr, telemetry.clone()).await {
        Ok(server) => {
            eprintln!(
                "dashboard: http://{}/ (metrics at /metrics)",
                server.local_addr()
            );
            Some(LiveDashboard {
                telemetry,
                server,
                observer,
            })
        }
        Err(e) => {
            eprintln!("warning: {e}; the run goes on without the dashboard");
            observer.abort();
            None
        }
    }
}

/// Runs `run`, sampling the runtime for the dashboard meanwhile when there is one.
pub async fn drive<F: Future>(
    dashboard: Option<&LiveDashboard>,
    runtime: &Runtime,
    run: F,
) -> F::Output {
    match dashboard {
        Some(dashboard) => dashboard.telemetry.drive(runtime, run).await,
        None => run.await,
    }
}

impl LiveDashboard {
    /// Stops serving (after the run's last events were recorded).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.observer.abort();
    }
}
