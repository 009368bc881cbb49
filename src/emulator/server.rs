//! The HTTP face of the emulator: routes, answers, fault injection and the connection loop.

use super::app::{error_response, App, Faults};
use super::content;
use super::objects::{ObjectStore, S3Error};
use super::request::Payload;
use super::stats::{Call, Outcome};
use super::store::{Store, StoreError};
use anyhow::Context;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use maxlofs_api::{CreateOutcome, MediaRecord};
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tower::ServiceExt;

/// Marks a response that must not be sent: the connection loop closes the connection instead.
#[derive(Clone, Copy)]
struct DropConnection;

#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose (--drop-rate)")]
struct Dropped;

/// Binds `listen`, prints `listening on http://IP:PORT` to stdout and serves until SIGINT or
/// SIGTERM.
pub async fn serve(
    listen: &str,
    store: Store,
    objects: ObjectStore,
    faults: Faults,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let router = router(App {
        store: Arc::new(store),
        objects: Arc::new(objects),
        stats: Arc::default(),
        faults: Arc::new(Mutex::new(faults)),
        origin: origin(address),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{address}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%address, ?faults, "emulator ready");

    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(%err, "accept failed");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        };
        tokio::spawn(serve_connection(stream, router.clone()));
    }
    tracing::info!("emulator stopping");
    Ok(())
}

/// The URL clients reach this emulator at: an unspecified listening address (0.0.0.0, ::) is
/// reached on loopback.
fn origin(address: SocketAddr) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

/// Serves one connection with hyper directly (not `axum::serve`): a service error makes hyper
/// close the connection without an answer, which is how `--drop-rate` drops one.
async fn serve_connection(stream: tokio::net::TcpStream, router: Router) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            let response = router
                .oneshot(request.map(Body::new))
                .await
                .unwrap_or_else(|never| match never {});
            if response.extensions().get::<DropConnection>().is_some() {
                Err(Dropped)
            } else {
                Ok(response)
            }
        }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "connection closed");
    }
}

fn router(app: App) -> Router {
    let api = |call: Call, route: MethodRouter<App>| {
        route.route_layer(middleware::from_fn_with_state(
            (app.clone(), call),
            inject_faults,
        ))
    };
    Router::new()
        .route(
            "/device/1/media_grant/:grant/media",
            api(Call::Create, post(create)),
        )
        .route(
            "/device/1/media_grant/:grant/media/:media_id",
            api(Call::Update, post(update)),
        )
        .route(
            "/device/1/media_grant/:grant/media/:media_id",
            api(Call::Delete, delete(delete_media)),
        )
        .route("/device/1/current", api(Call::Current, post(current)))
        .route("/device/1/media_grant", api(Call::MediaGrant, post(grants)))
        .merge(content::routes(&api))
        .route("/_emulator/media_grant/:grant/media", get(list_media))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/stats/reset", post(reset_stats))
        .route("/_emulator/revoke-key", post(revoke_key))
        .route("/_emulator/fail-rate", post(set_fail_rate))
        .with_state(app)
}

/// Latency, then a 503 (call not carried out) or, after carrying it out, a dropped answer.
/// Every API call is counted here, faulted or not.
async fn inject_faults(
    State((app, call)): State<(App, Call)>,
    request: Request,
    next: Next,
) -> Response {
    let faults = *app.faults.lock();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let (fail, drop) = {
        let mut rng = rand::thread_rng();
        (
            rng.gen_bool(faults.fail_rate),
            rng.gen_bool(faults.drop_rate),
        )
    };
    let (response, outcome) = if fail {
        const INJECTED: &str = "injected failure (--fail-rate)";
        let response = if call.is_object_transfer() {
            content::discard_body(request).await;
            S3Error::new(503, "ServiceUnavailable", INJECTED).into_response()
        } else {
            error_response(StatusCode::SERVICE_UNAVAILABLE, INJECTED)
        };
        (response, Outcome::Status(503))
    } else {
        let response = next.run(request).await;
        if drop {
            let mut dropped = Response::default();
            dropped.extensions_mut().insert(DropConnection);
            (dropped, Outcome::Dropped)
        } else {
            let status = response.status().as_u16();
            (response, Outcome::Status(status))
        }
    };
    app.stats.record(call, outcome);
    tracing::debug!(?call, %outcome, "api call");
    response
}

/// An id in a path that is not a number names nothing: `unknown` (a 404), before any key check,
/// as for an unknown route.
fn parse_id<T: std::str::FromStr>(text: &str, unknown: StoreError) -> Result<T, StoreError> {
    text.parse().map_err(|_| unknown)
}

fn ok<T: Serialize>(value: T) -> Response {
    Json(value).into_response()
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        if let StoreError::Database(err) = &self {
            tracing::error!(%err, "database error");
        }
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

async fn create(
    State(app): State<App>,
    Path(grant): Path<String>,
    payload: Payload,
) -> Result<Response, StoreError> {
    let grant = parse_id(&grant, StoreError::GrantNotFound)?;
    let media = payload.body.and_then(|body| body.new_media());
    let outcome = app
        .blocking(move |app| app.store.create(&payload.credentials, grant, media))
        .await?;
    Ok(match outcome {
        CreateOutcome::Created(media_id) => ok(json!({ "media_id": media_id })),
        CreateOutcome::Conflict(record) => (StatusCode::CONFLICT, Json(record)).into_response(),
    })
}

async fn update(
    State(app): State<App>,
    Path((grant, media_id)): Path<(String, String)>,
    payload: Payload,
) -> Result<Response, StoreError> {
    let grant = parse_id(&grant, StoreError::GrantNotFound)?;
    let media_id = parse_id(&media_id, StoreError::MediaNotFound)?;
    let state = payload.body.and_then(|body| body.media_state());
    app.blocking(move |app| {
        app.store
            .update(&payload.credentials, grant, media_id, state)
    })
    .await?;
    Ok(ok(json!({})))
}

async fn delete_media(
    State(app): State<App>,
    Path((grant, media_id)): Path<(String, String)>,
    payload: Payload,
) -> Result<Response, StoreError> {
    let grant = parse_id(&grant, StoreError::GrantNotFound)?;
    let media_id = parse_id(&media_id, StoreError::MediaNotFound)?;
    app.blocking(move |app| app.store.delete(&payload.credentials, grant, media_id))
        .await?;
    Ok(ok(json!({})))
}

async fn current(State(app): State<App>, payload: Payload) -> Result<Response, StoreError> {
    let device = app
        .blocking(move |app| app.store.current_device(&payload.credentials))
        .await?;
    Ok(ok(device))
}

async fn grants(State(app): State<App>, payload: Payload) -> Result<Response, StoreError> {
    let grants = app
        .blocking(move |app| app.store.media_grants(&payload.credentials))
        .await?;
    Ok(ok(grants))
}

/// A struct rather than `json!` so that each record keeps its fields in declaration order.
#[derive(Serialize)]
struct MediaList {
    media_list: Vec<MediaRecord>,
}

async fn list_media(
    State(app): State<App>,
    Path(grant): Path<String>,
) -> Result<Response, StoreError> {
    let grant = parse_id(&grant, StoreError::GrantNotFound)?;
    let media_list = app.blocking(move |app| app.store.records(grant)).await?;
    Ok(ok(MediaList { media_list }))
}

async fn stats(State(app): State<App>) -> Response {
    ok(app.stats.snapshot())
}

async fn reset_stats(State(app): State<App>) -> Response {
    app.stats.reset();
    ok(json!({}))
}

async fn revoke_key(State(app): State<App>, payload: Payload) -> Result<Response, StoreError> {
    let key = payload.body.and_then(|body| body.string("key"))?;
    app.blocking(move |app| app.store.revoke_key(&key)).await;
    Ok(ok(json!({})))
}

/// `{"fail_rate": R}`: from now on, calls fail at rate R (a service going down, or recovering).
async fn set_fail_rate(State(app): State<App>, payload: Payload) -> Result<Response, StoreError> {
    #[derive(serde::Deserialize)]
    struct FailRate {
        fail_rate: f64,
    }
    let FailRate { fail_rate } = payload.body.and_then(|body| body.parse())?;
    let mut faults = app.faults.lock();
    match Faults::new(fail_rate, faults.drop_rate, faults.latency) {
        Ok(changed) => *faults = changed,
        Err(err) => return Ok(error_response(StatusCode::BAD_REQUEST, &err.to_string())),
    }
    tracing::info!(fail_rate, "fail rate changed");
    Ok(ok(json!({})))
}
