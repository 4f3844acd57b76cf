//! [`DashboardServer`]: the dashboard page, its JSON, its event stream and `/metrics`, served
//! by axum; [`MetricsServer`]: `/metrics` alone.
//!
//! Neither holds up a run: each connection is served on its own task (a client that stalls or
//! drops mid-request stalls only that task), a scrape renders from the recorder's handle without
//! waiting on the runtime, and `shutdown` gives open connections (an event stream, a stalled
//! scraper) a moment, then stops the server and every connection it still has.
//!
//! The accept loop is ours, over hyper's HTTP/1 connection builder, rather than `axum::serve`:
//! that one sets no timer, so hyper's header-read timeout never fires, and a client that connects
//! and sends nothing (or half a request, or idles on keep-alive) holds its connection, and a file
//! descriptor, for ever. Here [`ServeLimits`] bounds both: how long a connection may take to send
//! a request's headers (an idle keep-alive connection is closed after the same time), and how
//! many connections are served at once (more wait in the listen backlog until one closes).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, broadcast, oneshot, watch};
use tokio::task::JoinSet;

use super::{Telemetry, TelemetryError};
use crate::agents::RunEvent;

/// The page: one file, plain JavaScript, no build step.
const PAGE: &str = include_str!("dashboard.html");

/// Where the page carries the state as of its request, so its first paint needs no round trip.
const INITIAL_STATE: &str = "/*INITIAL_STATE*/null";

/// Parses `--dashboard`: `IP:PORT`, `localhost:PORT`, or a bare port (on 127.0.0.1).
pub fn parse_addr(text: &str) -> Result<SocketAddr, TelemetryError> {
    parse_server_addr("dashboard", text)
}

/// Parses the address of `server` (`dashboard`, `metrics`; named in the error): `IP:PORT`,
/// `localhost:PORT` or a bare port (both on 127.0.0.1). No other name is looked up: what a
/// server binds to should not depend on a resolver.
pub fn parse_server_addr(server: &'static str, text: &str) -> Result<SocketAddr, TelemetryError> {
    let text = text.trim();
    let port = match text.get(..10) {
        Some(host) if host.eq_ignore_ascii_case("localhost:") => &text[10..],
        // One `:` at most (`:8080`): `::1` is an IPv6 address, not port 1.
        _ => text.strip_prefix(':').unwrap_or(text),
    };
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| TelemetryError::BadAddr {
        server,
        text: text.to_owned(),
    })
}

/// How long `shutdown` waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// How long the accept loop pauses after a failed accept (out of file descriptors, say), so it
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a server allows its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long a connection may take to send a request's headers; an idle keep-alive
    /// connection is closed after the same time. Default 10 s. (An event stream, once its
    /// request is read, is not limited.)
    pub header_read_timeout: Duration,
    /// Connections served at once, event streams included; further ones wait in the listen
    /// backlog until one closes. Default 256.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

impl ServeLimits {
    fn check(&self, server: &'static str) -> Result<(), TelemetryError> {
        let problem = if self.max_connections == 0 {
            "max_connections is 0 (no connection could ever be served)"
        } else if self.header_read_timeout.is_zero() {
            "header_read_timeout is 0 (every connection would be closed before its request)"
        } else {
            return Ok(());
        };
        Err(TelemetryError::BadLimits {
            server,
            problem: problem.to_owned(),
        })
    }
}

/// One axum server on its own task.
struct Serving {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    async fn start(
        server: &'static str,
        addr: SocketAddr,
        app: Router,
        limits: ServeLimits,
    ) -> Result<Self, TelemetryError> {
        limits.check(server)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AddrInUse => TelemetryError::AddrInUse {
                    server,
                    addr,
                    source,
                },
                _ => TelemetryError::Bind {
                    server,
                    addr,
                    source,
                },
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind {
                server,
                addr,
                source,
            })?;
        // Warned with the port bound, which `:0` leaves to the system.
        if !is_loopback(bound.ip()) {
            tracing::warn!(
                "{server} listens on {bound}: other machines can reach it, and it shows command \
                 lines and failure reasons"
            );
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Apps::new(app),
            limits,
            stopped,
            server,
            bound,
        ));
        Ok(Serving {
            addr: bound,
            stop: Some(stop),
            task,
        })
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for every open connection, and an event stream or a stalled
        // client never finishes on its own: give them a moment, then stop the server.
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The router for each kind of connection.
#[derive(Clone)]
struct Apps {
    /// For connections to a loopback address: only `localhost` or an IP address as `Host`.
    loopback: Router,
    /// For connections from other machines (a server bound to a non-loopback address).
    remote: Router,
}

impl Apps {
    fn new(app: Router) -> Apps {
        Apps {
            loopback: app
                .clone()
                .layer(axum::middleware::from_fn(local_host_only)),
            remote: app,
        }
    }

    /// The router for a connection accepted on `local`. A server bound to `0.0.0.0` also
    /// answers on 127.0.0.1, where a rebinding page's requests arrive: the `Host` check holds
    /// for every connection made to a loopback address, whatever address was bound.
    fn for_connection(&self, local: Option<SocketAddr>) -> &Router {
        match local {
            Some(local) if !is_loopback(local.ip()) => &self.remote,
            _ => &self.loopback,
        }
    }
}

/// Whether `ip` is a loopback address, an IPv4 one mapped into IPv6 (`::ffff:127.0.0.1`, seen
/// on a dual-stack socket) included.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// Accepts connections until `stopped`, then closes each gracefully (in-flight requests finish).
/// The connections are this task's: aborting it (after [`SHUTDOWN_GRACE`]) ends them too.
async fn serve(
    listener: tokio::net::TcpListener,
    apps: Apps,
    limits: ServeLimits,
    stopped: oneshot::Receiver<()>,
    server: &'static str,
    bound: SocketAddr,
) {
    let (closing, closed) = watch::channel(());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            _ = &mut stopped => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("{server} on {bound}: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let app = apps.for_connection(stream.local_addr().ok());
        let service = TowerToHyperService::new(app.clone());
        let mut closed = closed.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!("{server}: connection ended: {e}");
                    }
                    return;
                }
                _ = closed.changed() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    // No new connections; the open ones finish their requests.
    drop(listener);
    let _ = closing.send(());
    while connections.join_next().await.is_some() {}
}

/// On a loopback address, serves only requests whose `Host` is `localhost` or an IP address.
/// A web page can point a name it controls at 127.0.0.1 (DNS rebinding) and then read what a
/// local server answers as its own; its requests carry that name, so they are refused.
async fn local_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request.headers().get(header::HOST).map(|h| h.to_str());
    match host {
        None => next.run(request).await,
        Some(Ok(host)) if is_local_host(host) => next.run(request).await,
        Some(_) => (
            StatusCode::FORBIDDEN,
            "Host not allowed: a loopback server answers to localhost or an IP address\n",
        )
            .into_response(),
    }
}

/// Whether a `Host` header (`name[:port]`, `[v6]:port`) names localhost or an IP address.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The dashboard, serving until [`DashboardServer::shutdown`] or drop.
pub struct DashboardServer {
    serving: Serving,
}

impl DashboardServer {
    /// Listens on `addr` (port 0 picks a free one) and serves `telemetry`, with the default
    /// [`ServeLimits`].
    pub async fn bind(addr: SocketAddr, telemetry: Telemetry) -> Result<Self, TelemetryError> {
        Self::bind_with_limits(addr, telemetry, ServeLimits::default()).await
    }

    /// [`Self::bind`] with `limits` for its connections.
    pub async fn bind_with_limits(
        addr: SocketAddr,
        telemetry: Telemetry,
        limits: ServeLimits,
    ) -> Result<Self, TelemetryError> {
        // Event streams stay open for the run; held to half the connections, they cannot take
        // every slot and lock the page and `/metrics` out.
        let streams = EventStreams(Arc::new(Semaphore::new(
            (limits.max_connections / 2).max(1),
        )));
        let app = Router::new()
            .route("/", get(page))
            .route("/api/state", get(state))
            .route("/api/events", get(events))
            .route("/metrics", get(metrics))
            .layer(axum::Extension(streams))
            .with_state(telemetry);
        Ok(DashboardServer {
            serving: Serving::start("dashboard", addr, app, limits).await?,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.serving.addr
    }

    /// Stops listening. Open event streams are closed with the server.
    pub async fn shutdown(mut self) {
        self.serving.shutdown().await;
    }

    /// Serves until the process ends (`tetrarch dashboard`).
    pub async fn wait(mut self) {
        let _ = (&mut self.serving.task).await;
    }
}

/// `/metrics` alone (Prometheus text; every other path is 404), serving until
/// [`MetricsServer::shutdown`] or drop.
pub struct MetricsServer {
    serving: Serving,
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks a free one) and serves `telemetry`'s metrics, with the
    /// default [`ServeLimits`].
    pub async fn bind(addr: SocketAddr, telemetry: Telemetry) -> Result<Self, TelemetryError> {
        Self::bind_with_limits(addr, telemetry, ServeLimits::default()).await
    }

    /// [`Self::bind`] with `limits` for its connections.
    pub async fn bind_with_limits(
        addr: SocketAddr,
        telemetry: Telemetry,
        limits: ServeLimits,
    ) -> Result<Self, TelemetryError> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(telemetry);
        Ok(MetricsServer {
            serving: Serving::start("metrics", addr, app, limits).await?,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.serving.addr
    }

    /// Stops listening; connections still open after a moment are not waited for.
    pub async fn shutdown(mut self) {
        self.serving.shutdown().await;
    }
}

async fn page(State(telemetry): State<Telemetry>) -> Response {
    match serde_json::to_string(&telemetry.state()) {
        // `<` escaped so no text in the state can close the script element.
        Ok(json) => {
            Html(PAGE.replacen(INITIAL_STATE, &json.replace('<', "\\u003c"), 1)).into_response()
        }
        Err(e) => encode_error(&e),
    }
}

fn encode_error(e: &serde_json::Error) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot encode the dashboard state: {e}"),
    )
        .into_response()
}

async fn state(State(telemetry): State<Telemetry>) -> Response {
    match serde_json::to_vec(&telemetry.state()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => encode_error(&e),
    }
}

/// The run's events as they happen. The stream ends after `run_finished`; once the run is over
/// (or for a finished run) the answer is 204 No Content, which tells `EventSource` not to
/// reconnect.
async fn events(
    State(telemetry): State<Telemetry>,
    axum::Extension(streams): axum::Extension<EventStreams>,
) -> Response {
    // Subscribed before the check: a run that finishes in between is seen as over here, or its
    // `run_finished` is in the stream (checked first, the stream could miss it and never end).
    let events = telemetry.subscribe();
    if telemetry.run_over() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let Ok(permit) = streams.0.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams are open; reload /api/state instead\n",
        )
            .into_response();
    };
    Sse::new(event_stream(events, permit))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The event streams a dashboard serves at once.
#[derive(Clone)]
struct EventStreams(Arc<Semaphore>);

/// The run's events as SSE; the stream holds `permit` (its place among the open streams) until
/// it ends or its client goes.
fn event_stream(
    events: broadcast::Receiver<RunEvent>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some((events, permit)), |state| async move {
        let (mut events, permit) = state?;
        loop {
            match events.recv().await {
                Ok(event) => match serde_json::to_string(&event) {
                    Ok(json) => {
                        let last = matches!(event, RunEvent::RunFinished { .. });
                        let next = (!last).then_some((events, permit));
                        return Some((Ok(Event::default().data(json)), next));
                    }
                    Err(e) => tracing::warn!("dashboard: cannot encode an event: {e}"),
                },
                // The page reloads /api/state when told it missed events.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let lagged = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(lagged), Some((events, permit))));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

async fn metrics(State(telemetry): State<Telemetry>) -> Response {
    match telemetry.metrics() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics: no Prometheus recorder is installed in this process",
        )
            .into_response(),
    }
}
