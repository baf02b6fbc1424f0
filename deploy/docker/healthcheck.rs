//! `prscd-healthcheck`: the container image's HEALTHCHECK probe.
//!
//! The image has no shell and no curl (distroless), and `/health` on the main
//! port is behind TLS, so the probe reads the plain-HTTP `/health` that the
//! node also serves on `METRICS_PORT` (the image sets `METRICS_PORT=9464`):
//! exit 0 on `200`, 1 on anything else (`503` while draining, refused,
//! timeout). With `METRICS_PORT` unset or empty it can only check that the
//! main `PORT` (default 8443) accepts TCP connections, and says so.
//!
//! Standard library only; built in the Dockerfile with
//! `rustc --edition 2021 -O deploy/docker/healthcheck.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    match probe() {
        Ok(what) => {
            println!("healthy: {what}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Where to connect: the node's `HOST`, or loopback when it binds every address.
fn address(port: u16) -> Result<SocketAddr, String> {
    let host = match var("HOST").as_deref() {
        None | Some("0.0.0.0") => "127.0.0.1".to_owned(),
        Some("::") | Some("[::]") => "::1".to_owned(),
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
    };
    (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))
}

fn port(name: &str, default: Option<u16>) -> Result<Option<u16>, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}={v:?}: {e}")),
    }
}

fn probe() -> Result<String, String> {
    let Some(metrics) = port("METRICS_PORT", None)? else {
        let main = port("PORT", Some(8443))?.unwrap_or(8443);
        let addr = address(main)?;
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
        return Ok(format!(
            "{addr} accepts TCP (METRICS_PORT is not set, so /health was not read)"
        ));
    };
    let addr = address(metrics)?;
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut response = Vec::new();
    tcp.take(64 * 1024)
        .read_to_end(&mut response)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or("");
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let summary = field(body, "status").unwrap_or("?");
    if status == "200" {
        Ok(format!("http://{addr}/health 200 status={summary}"))
    } else if status.is_empty() {
        Err(format!("http://{addr}/health: no HTTP response"))
    } else {
        Err(format!("http://{addr}/health {status} status={summary}"))
    }
}

/// The value of a top-level string field of the JSON body (`"status":"healthy"`).
fn field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let start = body.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = body[start..].find('"')?;
    Some(&body[start..start + len])
}
