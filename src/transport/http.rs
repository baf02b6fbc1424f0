//! The HTTP/1.1 the TCP port speaks before a WebSocket upgrade: read one
//! request head, answer `/health` or a rejection, or hand over to WebSocket.
//!
//! Hand-rolled on `httparse` because the port serves few things (upgrade,
//! health, metrics, the presence API of [`crate::api`], errors) and must put
//! the `X-Prscd-*` headers on each.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::api::{Api, ApiError};
use crate::apps::Apps;
use crate::hub::Hub;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection closed before the request head ended")]
    Eof,
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("bad request head: {0}")]
    Parse(#[from] httparse::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A parsed request head; header names lower-cased.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when `name` holds `token` in its comma-separated list.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Reads one request head. Returns it and any bytes read past its end.
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((request, len)) = parse_head(&buf)? {
            return Ok((request, buf.split_off(len)));
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf)? {
        httparse::Status::Complete(len) => {
            let request = Request {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((request, len)))
        }
        httparse::Status::Partial if buf.len() > MAX_HEAD => Err(HttpError::TooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete response and flushes. `headers` come after the status line.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, String)],
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_bytes(stream, status, headers, content_type, body.as_bytes()).await
}

/// As [`respond`], with a body of any bytes (a profile).
pub async fn respond_bytes<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, String)],
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Reads the body announced by `Content-Length` (none: empty), after the
/// `leftover` bytes read with the head; refuses chunked bodies and bodies
/// over `max` before reading them.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &Request,
    mut leftover: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    if request.header("transfer-encoding").is_some() {
        return Err(ApiError::LengthRequired);
    }
    let len = match request.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest("bad Content-Length".into()))?,
    };
    if len > max {
        return Err(ApiError::TooLarge(max));
    }
    leftover.truncate(len);
    let mut chunk = [0u8; 4096];
    while leftover.len() < len {
        let want = (len - leftover.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..want])
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if n == 0 {
            return Err(ApiError::BadRequest("the body ended early".into()));
        }
        leftover.extend_from_slice(&chunk[..n]);
    }
    Ok(leftover)
}

/// Answers a presence API request (`/v1/apps/...`): (status, JSON body).
pub async fn api<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &Request,
    leftover: Vec<u8>,
    api: &Api,
    apps: &Apps,
) -> (u16, String) {
    let answer = async {
        let route = api.admit(
            apps,
            &request.method,
            request.path(),
            request.header("authorization"),
        )?;
        let body = if route.has_body() {
            read_body(stream, request, leftover, api.max_body).await?
        } else {
            Vec::new()
        };
        api.run(route, &body).await
    };
    answer.await.unwrap_or_else(|e| (e.status(), e.body()))
}

/// Whether a request is for the presence API.
pub fn is_api(request: &Request) -> bool {
    request.path().starts_with(crate::api::PREFIX)
}

/// Who may read `/metrics` on a port.
#[derive(Debug, Clone, Copy)]
pub enum Metrics<'a> {
    /// Anyone: `METRICS_PORT`, which operators keep private.
    Open,
    /// The client port: only with `Authorization: Bearer <METRICS_TOKEN>`,
    /// and not at all without a token set.
    Bearer(Option<&'a str>),
}

/// `/health` (public) and `/metrics` (as `metrics` says), on the TLS port
/// and on `METRICS_PORT`: (status, content type, body), or `None` for any
/// other path.
pub fn observability(
    request: &Request,
    hub: &Hub,
    metrics: Metrics<'_>,
) -> Option<(u16, &'static str, String)> {
    match request.path() {
        "/health" => {
            let (status, body) = health(hub);
            Some((status, "application/json", body))
        }
        "/metrics" => {
            let allowed = match metrics {
                Metrics::Open => true,
                Metrics::Bearer(None) => {
                    return Some((
                        404,
                        "text/plain",
                        "metrics are served on METRICS_PORT\n".into(),
                    ))
                }
                Metrics::Bearer(Some(token)) => request
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|given| crate::admin::constant_time_eq(given.trim(), token)),
            };
            Some(if allowed {
                (
                    200,
                    crate::stats::METRICS_CONTENT_TYPE,
                    hub.stats().prometheus(&hub.gauges()),
                )
            } else {
                (401, "text/plain", "bearer token required\n".into())
            })
        }
        _ => None,
    }
}

/// Serves `/health`, `/metrics`, the presence API, the console and the
/// admin-only profiles ([`crate::profile`]) in plain HTTP (for Prometheus,
/// load balancer probes, backends and operators on `METRICS_PORT`), until
/// the process exits.
pub async fn serve_plain(listener: tokio::net::TcpListener, ctx: std::sync::Arc<super::Context>) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, read_request(&mut tcp)).await;
            let Ok(Ok((request, leftover))) = read else {
                return;
            };
            if crate::console::http::is_console(&request) {
                let apps = ctx.apps();
                crate::console::http::serve(&mut tcp, &request, &ctx.console, &apps).await;
                return;
            }
            let (status, content_type, body) = if is_api(&request) {
                let apps = ctx.apps();
                let answer = api(&mut tcp, &request, leftover, &ctx.api, &apps);
                match tokio::time::timeout(super::HANDSHAKE_TIMEOUT, answer).await {
                    Ok((status, body)) => (status, "application/json", body.into_bytes()),
                    Err(_) => return,
                }
            } else if request.path() == crate::profile::PATH {
                crate::profile::serve(&request, ctx.admin_token.as_deref()).await
            } else {
                let (status, content_type, body) = observability(&request, &ctx.hub, Metrics::Open)
                    .unwrap_or((404, "text/plain", "not found\n".to_owned()));
                (status, content_type, body.into_bytes())
            };
            let _ = respond_bytes(&mut tcp, status, &[], content_type, &body).await;
        });
    }
}

/// `GET /health`: 200 while serving, 503 while draining, with the counters.
pub fn health(hub: &Hub) -> (u16, String) {
    let draining = hub.is_draining();
    let mut body = serde_json::json!({
        "status": if draining { "draining" } else { "healthy" },
        "service": "prscd",
        "version": super::VERSION,
        "mesh_id": hub.mesh_id(),
        "peers": hub.peer_count(),
    });
    if let (Some(body), serde_json::Value::Object(stats)) =
        (body.as_object_mut(), hub.stats().to_json())
    {
        body.extend(stats);
    }
    (if draining { 503 } else { 200 }, body.to_string())
}
