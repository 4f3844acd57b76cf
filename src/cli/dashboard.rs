//! `tetrarch dashboard`: the dashboard of a finished run, read from the store; and the live
//! dashboard (`tetrarch run --dashboard ADDR`) and metrics endpoint (`--metrics ADDR`) started
//! beside a run. One that cannot start (address in use, bad address) is a warning: the run goes
//! on without it.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tetrarch::agents::Runtime;
use tetrarch::plan::Plan;
use tetrarch::store::StoreConfig;
use tetrarch::telemetry::{
    DashboardServer, MetricsServer, Telemetry, install_metrics, parse_addr, parse_server_addr,
};

/// `tetrarch dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to serve: IP:PORT, localhost:PORT, or a port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: String,
    /// The run to show (default: the newest in the store).
    #[arg(long)]
    run: Option<String>,
}

/// Serves the dashboard of a finished run until Ctrl-C.
pub fn run(args: DashboardArgs, store: &Path) -> Result<ExitCode> {
    let addr = parse_addr(&args.addr)?;
    // The view is read once and the store closed, so a `tetrarch run` on it can start while
    // the page is served.
    let telemetry = {
        let store = super::open_store_to_read(store, StoreConfig::default())
            .with_context(|| format!("cannot open the store {}", store.display()))?;
        Telemetry::finished(&store, args.run.as_deref(), install_metrics().ok())?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = DashboardServer::bind(addr, telemetry).await?;
        stderr_line!(
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

/// The dashboard and/or `/metrics` beside a live run, fed by one [`Telemetry`].
pub struct LiveTelemetry {
    telemetry: Telemetry,
    dashboard: Option<DashboardServer>,
    metrics: Option<MetricsServer>,
    observer: tokio::task::JoinHandle<()>,
}

/// Starts the dashboard (`--dashboard ADDR`) and the metrics endpoint (`--metrics ADDR`) of
/// `plan`'s run. Each that cannot start (bad address, address in use) is a warning; `None` when
/// neither was asked for or neither started.
pub async fn start_live(
    dashboard: Option<&str>,
    metrics: Option<&str>,
    plan: &Plan,
    resumed_run: Option<&str>,
    runtime: &Runtime,
) -> Option<LiveTelemetry> {
    if dashboard.is_none() && metrics.is_none() {
        return None;
    }
    let dashboard_addr = dashboard.and_then(|text| {
        parse_server_addr("dashboard", text)
            .inspect_err(|e| stderr_line!("warning: {e}; the run goes on without the dashboard"))
            .ok()
    });
    let metrics_addr = metrics.and_then(|text| {
        parse_server_addr("metrics", text)
            .inspect_err(|e| stderr_line!("warning: {e}; the run goes on without /metrics"))
            .ok()
    });
    if dashboard_addr.is_none() && metrics_addr.is_none() {
        return None;
    }
    let recorder = install_metrics()
        .inspect_err(|e| stderr_line!("warning: {e}; /metrics will be empty"))
        .ok();
    let telemetry = Telemetry::new(recorder);
    telemetry.watch_plan(plan);
    if let Some(run_id) = resumed_run
        && let Err(e) = telemetry.resume_from(runtime.store(), run_id)
    {
        stderr_line!("warning: the dashboard starts without the run's earlier tasks: {e}");
    }
    let observer = telemetry.observe(runtime.subscribe_all());
    let dashboard = match dashboard_addr {
        Some(addr) => started(
            DashboardServer::bind(addr, telemetry.clone()).await,
            "the dashboard",
            |s| {
                format!(
                    "dashboard: http://{}/ (metrics at /metrics)",
                    s.local_addr()
                )
            },
        ),
        None => None,
    };
    let metrics = match metrics_addr {
        Some(addr) => started(
            MetricsServer::bind(addr, telemetry.clone()).await,
            if dashboard.is_some() {
                "/metrics of its own (the dashboard serves /metrics too)"
            } else {
                "/metrics"
            },
            |s| format!("metrics: http://{}/metrics", s.local_addr()),
        ),
        None => None,
    };
    if dashboard.is_none() && metrics.is_none() {
        observer.abort();
        return None;
    }
    Some(LiveTelemetry {
        telemetry,
        dashboard,
        metrics,
        observer,
    })
}

/// A server that started (announced with `announce`), or the warning that the run goes on
/// without `what`.
fn started<T>(
    bound: Result<T, tetrarch::telemetry::TelemetryError>,
    what: &str,
    announce: impl FnOnce(&T) -> String,
) -> Option<T> {
    match bound {
        Ok(server) => {
            stderr_line!("{}", announce(&server));
            Some(server)
        }
        Err(e) => {
            stderr_line!("warning: {e}; the run goes on without {what}");
            None
        }
    }
}

/// Runs `run`, sampling the runtime for the dashboard and metrics meanwhile when there are any.
pub async fn drive<F: Future>(
    live: Option<&LiveTelemetry>,
    runtime: &Runtime,
    run: F,
) -> F::Output {
    match live {
        Some(live) => live.telemetry.drive(runtime, run).await,
        None => run.await,
    }
}

impl LiveTelemetry {
    /// Waits (at most 10 s) until the run's end is recorded when it emitted one (`run_ended`: a
    /// run that ended in an error emits none): the events reach the telemetry on a task of
    /// their own, and what is served after the run must include its final values
    /// (`tetrarch_runs_total` is only counted then).
    /// The store's gauges are sampled again once the run's background writes (its outputs'
    /// memories, recorded after the outcome went on) are queued and committed
    /// ([`Runtime::settle`], 10 s at most): sampled at the run's end, they could miss the last
    /// ones.
    pub async fn settle(&self, runtime: &Runtime, run_ended: bool) {
        // Limits a loaded machine will not reach; they bound the wait on a stuck write.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while run_ended && !self.telemetry.run_over() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        match runtime.settle(std::time::Duration::from_secs(10)).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "telemetry: the run's background writes were still going after 10s; the store's \
                 gauges may miss them"
            ),
            Err(e) => tracing::warn!("telemetry: the store's last writes were not committed: {e}"),
        }
        self.telemetry.sample(runtime);
    }

    /// What is served: the dashboard (with `/metrics`), `/metrics` alone, or both.
    pub fn serving(&self) -> &'static str {
        if self.dashboard.is_some() {
            "the dashboard and /metrics"
        } else {
            "/metrics"
        }
    }

    /// Stops serving (after the run's last events were recorded).
    pub async fn shutdown(self) {
        if let Some(server) = self.dashboard {
            server.shutdown().await;
        }
        if let Some(server) = self.metrics {
            server.shutdown().await;
        }
        self.observer.abort();
    }
}
