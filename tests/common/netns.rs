//! Network namespaces for tests that simulate separate networks on one
//! machine (`tests/wan.rs`): the testkit's (`prscd_testkit::netns`), with
//! the tests' rule (skip, or fail when required) and their clients, and
//! panics instead of errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use prscd_testkit::netns as kit;

use super::{http_get, tls_wrap, Client, WAIT};

pub use kit::ip_binary;

/// The namespaces that exist now.
pub fn list() -> Vec<String> {
    kit::list()
}

/// `Some(ip)` when this process may create namespaces (root, `ip`
/// present). Otherwise the test is skipped with a message, or fails when
/// `require_var` is set (as `scripts/test` sets it).
pub fn usable(require_var: &str) -> Option<PathBuf> {
    let Some(why) = kit::unusable() else {
        return ip_binary();
    };
    assert!(
        std::env::var_os(require_var).is_none(),
        "{require_var} is set but network namespaces are unusable: {why}"
    );
    eprintln!("SKIPPED: {why}; set {require_var}=1 to make this a failure");
    None
}

/// Runs `ip args…`; the error carries its stderr.
pub fn ip_try(args: &[&str]) -> Result<(), String> {
    kit::ip(args).map_err(|e| format!("{e:#}"))
}

/// Runs `ip args…`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    if let Err(e) = ip_try(args) {
        panic!("{e}");
    }
}

/// Removes namespaces named `<prefix><pid>-…` of runs that are gone (never
/// this process's: other tests may be using them).
pub fn remove_stale(prefix: &str) {
    kit::remove_stale(prefix, false);
}

/// A named network namespace, removed (with whatever still runs in it) on
/// drop; the testkit's, whose methods it adds to or makes panic.
pub struct Netns(kit::Netns);

impl std::ops::Deref for Netns {
    type Target = kit::Netns;
    fn deref(&self) -> &kit::Netns {
        &self.0
    }
}

impl Netns {
    /// `ip netns add name`, with its loopback up.
    pub fn create(name: &str) -> Netns {
        Netns(kit::Netns::create(name).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Takes charge of namespace `name`, which exists: removed on drop.
    pub fn adopt(name: String) -> Netns {
        Netns(kit::Netns::adopt(name))
    }

    /// `ip -n name args…`.
    pub fn ip(&self, args: &[&str]) {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Writes a sysctl of this namespace (e.g. `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.0
            .sysctl(key, value)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// A tokio TCP connection to `addr` from inside this namespace.
    pub async fn connect(&self, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        self.0.connect(addr, WAIT).await
    }

    /// As [`kit::Netns::connect_std`] (TCP_NODELAY set).
    pub fn connect_std(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<std::net::TcpStream> {
        self.0.connect_std(addr, within)
    }

    /// A TLS WebSocket client of the node listening on 127.0.0.1:`port`
    /// inside this namespace.
    pub async fn ws(&self, port: u16, key: &str, id: &str) -> Client {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = self
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr} in {}: {e}", self.name));
        let tls = tls_wrap(tcp).await;
        let url = format!("wss://127.0.0.1:{port}/v1?publickey={key}&id={id}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
            .await
            .expect("websocket handshake timed out")
            .unwrap_or_else(|e| panic!("websocket handshake in {}: {e}", self.name));
        Client::ws(id, ws)
    }

    /// `GET path` over TLS from inside this namespace: (status, body).
    pub async fn get(&self, port: u16, path: &str) -> (u16, String) {
        let tcp = self
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("connect for GET");
        let (status, _, body) = http_get(&mut tls_wrap(tcp).await, path).await;
        (status, body)
    }

    /// `/health` of the node on 127.0.0.1:`port` inside this namespace.
    pub async fn health(&self, port: u16) -> serde_json::Value {
        let (status, body) = self.get(port, "/health").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("health json")
    }
}
