//! Client transports: WebSocket over TLS on TCP, WebTransport over HTTP/3 on
//! UDP, both on the same port number.
//!
//! What the two share lives here: the handshake checks of PROTOCOL.md §1
//! and of the app's credentials and origins ([`admit`]), the per-connection
//! settings ([`Context`]), and binding one port number on both TCP and UDP. Transports decode nothing and route
//! nothing themselves: each frame goes to [`crate::hub::Peer::handle`], and
//! each message in the peer's outbox is written out as one frame/datagram.

pub mod http;
pub mod reuseport;
pub mod tls_stream;
pub mod webtransport;
pub mod ws;

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::apps::{App, Apps};
use crate::auth::{self, Grant};
use crate::hub::Hub;
use crate::quota::{Quotas, Slot};

/// Version sent in `X-Prscd-Version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a client has for TLS + the HTTP or CONNECT request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection needs to know.
pub struct Context {
    pub hub: Arc<Hub>,
    /// Swapped whole on SIGHUP; a connection keeps the settings it was
    /// admitted with.
    apps: RwLock<Arc<Apps>>,
    quotas: Arc<Quotas>,
    /// Longest `id` accepted at the handshake, in bytes.
    pub max_id_len: usize,
    /// Bearer token for `/metrics` on the client port; `None`: not served there.
    pub metrics_token: Option<String>,
    /// `ADMIN_TOKEN`, for the admin-only endpoints of `METRICS_PORT`.
    pub admin_token: Option<String>,
    pub max_message_size: usize,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    /// Every connection task, so a drain can wait for them.
    pub tasks: TaskTracker,
    /// The presence API (`/v1/apps/...`), on the TCP port and `METRICS_PORT`.
    pub api: crate::api::Api,
    /// The operator's console (`/console`), on `METRICS_PORT`.
    pub console: crate::console::Console,
}

/// The settings of a [`Context`] other than its state.
pub struct Settings {
    pub apps: Apps,
    pub max_id_len: usize,
    pub metrics_token: Option<String>,
    pub max_message_size: usize,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    /// `ADMIN_TOKEN`: opens the console and the profiles; `None`: neither.
    pub admin_token: Option<String>,
}

impl Context {
    pub fn new(hub: Arc<Hub>, settings: Settings) -> Context {
        Context {
            hub: hub.clone(),
            apps: RwLock::new(Arc::new(settings.apps)),
            quotas: Arc::default(),
            max_id_len: settings.max_id_len,
            metrics_token: settings.metrics_token,
            admin_token: settings.admin_token.clone(),
            max_message_size: settings.max_message_size,
            keepalive_interval: settings.keepalive_interval,
            idle_timeout: settings.idle_timeout,
            tasks: TaskTracker::new(),
            api: crate::api::Api::new(hub.clone(), settings.max_message_size),
            console: crate::console::Console::new(hub.clone(), settings.admin_token),
        }
    }

    pub fn apps(&self) -> Arc<Apps> {
        self.apps.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves new handshakes with `apps` from now on.
    pub fn set_apps(&self, apps: Apps) {
        *self.apps.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(apps);
    }

    /// The handshake checks ([`admit`]) with this node's apps, then the
    /// connection counted against its app's caps (or the 429 refusing it).
    pub fn admit(
        &self,
        target: &str,
        origin: Option<&str>,
        ip: IpAddr,
    ) -> Result<(Admission, Slot), Rejection> {
        let admission = admit(target, origin, &self.apps(), self.max_id_len)?;
        let slot = self
            .quotas
            .acquire(&admission.app, ip)
            .map_err(|refused| reject(429, refused.as_str()))?;
        Ok((admission, slot))
    }

    /// The `X-Prscd-*` headers carried by every handshake response.
    pub fn prscd_headers(&self) -> [(&'static str, String); 2] {
        [
            ("X-Prscd-Version", VERSION.to_owned()),
            ("X-Prscd-MeshID", self.hub.mesh_id().to_owned()),
        ]
    }
}

/// An accepted handshake: which app, which client, what its token grants.
#[derive(Debug)]
pub struct Admission {
    pub app: Arc<App>,
    pub client_id: String,
    pub grant: Grant,
}

/// A refused handshake: the HTTP status and why (for the log and the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub why: &'static str,
}

const fn reject(status: u16, why: &'static str) -> Rejection {
    Rejection { status, why }
}

/// The checks of PROTOCOL.md §1, in order, on a request target such as
/// `/v1?publickey=K&id=I` (origin form) or `https://host/v1?...` (absolute
/// form), then the `id`'s length, the key or signed token (README,
/// "Signed tokens"), and the request's `Origin` against the app's list.
pub fn admit(
    target: &str,
    origin: Option<&str>,
    apps: &Apps,
    max_id_len: usize,
) -> Result<Admission, Rejection> {
    let origin_form = match target.split_once("://") {
        Some((_, rest)) if target.starts_with("http") => {
            rest.find(['/', '?']).map_or("/", |i| &rest[i..])
        }
        _ => target,
    };
    if !origin_form.starts_with('/') {
        return Err(reject(400, "request target cannot be parsed"));
    }
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    let (mut id, mut public_key) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value =
            crate::percent::decode(value).ok_or(reject(400, "query string cannot be parsed"))?;
        match key {
            "id" => id = Some(value),
            "publickey" => public_key = Some(value),
            _ => {}
        }
    }
    if path != "/v1" {
        return Err(reject(404, "path is not /v1"));
    }
    let client_id = id
        .filter(|v| !v.is_empty())
        .ok_or(reject(401, "id is empty or missing"))?;
    let public_key = public_key
        .filter(|v| !v.is_empty())
        .ok_or(reject(401, "publickey is empty or missing"))?;
    if client_id.len() > max_id_len {
        return Err(reject(400, "id is longer than MAX_ID_LEN"));
    }
    let (app, grant) = if auth::is_token(&public_key) {
        auth::verify(&public_key, &client_id, apps).map_err(|e| reject(e.status(), e.as_str()))?
    } else {
        let app = apps
            .for_public_key(&public_key)
            .ok_or(reject(403, "unknown publickey"))?;
        if app.tokens_only {
            return Err(reject(403, "this app accepts signed tokens only"));
        }
        (app, Grant::default())
    };
    if !app.origin_allowed(origin) {
        return Err(reject(403, "origin not allowed for this app"));
    }
    Ok(Admission {
        app: app.clone(),
        client_id,
        grant,
    })
}

/// Connections the kernel may hold completed before the node accepts them.
/// std's 128 overflows when a few hundred clients connect at once (a
/// reconnect wave after a deploy): their SYNs are dropped and retried only
/// after a second. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A TCP socket bound to `addr`, not listening yet: `SO_REUSEADDR` as
/// std's, and `SO_REUSEPORT` to share the port with a running node.
fn tcp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A UDP socket on `addr`; with `reuse_port`, shared with a running node,
/// whose QUIC sessions keep their datagrams ([`reuseport`]).
fn udp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    if !reuse_port {
        return UdpSocket::bind(addr);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    reuseport::steer(&socket, reuseport::Steer::Oldest)?;
    Ok(socket.into())
}

/// Listens on a socket from [`bind`] with [`LISTEN_BACKLOG`] (again, when
/// it listens already). With `reuse_port`, new connections come to this
/// listener from now on rather than to an older node's ([`reuseport`]):
/// call it when ready to accept.
pub fn listen(socket: socket2::Socket, reuse_port: bool) -> std::io::Result<TcpListener> {
    socket.listen(LISTEN_BACKLOG)?;
    if reuse_port {
        reuseport::steer(&socket, reuseport::Steer::Newest)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A plain TCP listener on `addr` (`METRICS_PORT`), shared as [`listen`] says.
pub fn listen_on(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    listen(tcp_socket(addr, reuse_port)?, reuse_port)
}

/// Binds TCP and UDP on the same port. Port 0 picks a number free on both.
/// Without `reuse_port` the TCP socket listens at once, so that no other
/// process takes the port meanwhile; with it, only at [`listen`].
pub fn bind(
    host: IpAddr,
    port: u16,
    reuse_port: bool,
) -> std::io::Result<(socket2::Socket, UdpSocket)> {
    let attempts = if port == 0 { 50 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let tcp = tcp_socket(SocketAddr::new(host, port), reuse_port)?;
        let bound = tcp
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("TCP socket bound to a non-IP address"))?;
        if !reuse_port {
            tcp.listen(LISTEN_BACKLOG)?;
        }
        match udp_socket(bound, reuse_port) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("at least one attempt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps() -> Apps {
        crate::apps::AppSources {
            pairs: Some("k1:app1".into()),
            ..Default::default()
        }
        .load()
        .unwrap()
        .unwrap()
    }

    #[test]
    fn handshake_rows_of_protocol_section_1() {
        let apps = apps();
        let status = |t: &str| {
            admit(t, None, &apps, 16)
                .map(|a| (a.app.id.to_string(), a.client_id))
                .map_err(|r| r.status)
        };
        assert_eq!(
            status("/v1?publickey=k1&id=alice"),
            Ok(("app1".into(), "alice".into()))
        );
        assert_eq!(status("/v1?publickey=k1&id=a-very-long-user-id"), Err(400));
        assert_eq!(status("/v2?publickey=k1&id=a"), Err(404));
        assert_eq!(status("/?publickey=k1&id=a"), Err(404));
        assert_eq!(status("/v1?publickey=k1"), Err(401));
        assert_eq!(status("/v1?publickey=k1&id="), Err(401));
        assert_eq!(status("/v1?id=a"), Err(401));
        assert_eq!(status("/v1?id=a&publickey="), Err(401));
        assert_eq!(status("/v1?id=a&publickey=nope"), Err(403));
        assert_eq!(status("/v1?id=a%zz&publickey=k1"), Err(400));
        assert_eq!(status("v1?id=a&publickey=k1"), Err(400));
        assert_eq!(status("/v1?id=%C3%A9+x&publickey=k1").unwrap().1, "é+x");
        assert_eq!(
            status("https://h:1/v1?id=a&publickey=k1").unwrap().0,
            "app1"
        );
    }
}
