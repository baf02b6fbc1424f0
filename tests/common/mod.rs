//! Shared integration-test harness: a test PKI, the real `prscd` binary on
//! an ephemeral port, and real clients for both transports (TLS WebSocket,
//! WebTransport datagrams and streams). Every wait is bounded.

#![allow(dead_code)]

pub mod netns;
pub mod zmesh;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rmpv::Value;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// Apps every default node knows.
pub const KEY1: &str = "pk1";
pub const KEY2: &str = "pk2";

/// The HS256 secret of app1 on every default node.
pub const APP1_SECRET: &str = "app1-token-secret-for-tests-0123456789";

/// The bearer token for `/metrics` on every default node's client port.
pub const METRICS_TOKEN: &str = "test-metrics-token";

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` in `app`, valid for a minute, with `extra`
/// claims merged in (and overriding).
pub fn hs256_token(secret: &str, app: &str, sub: &str, extra: serde_json::Value) -> String {
    let mut claims = serde_json::json!({"app": app, "sub": sub, "exp": unix_now() + 60});
    if let (Some(c), serde_json::Value::Object(extra)) = (claims.as_object_mut(), extra) {
        c.extend(extra);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn scratch_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("prscd-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA and a leaf for 127.0.0.1/localhost (ECDSA P-256, 10 days, so
/// WebTransport clients may also pin its hash).
pub struct Pki {
    pub chain_pem: PathBuf,
    pub key_pem: PathBuf,
    pub ca: CertificateDer<'static>,
    pub leaf: CertificateDer<'static>,
    /// Issues more leaves the test clients trust.
    pub issuer: TestCa,
}

/// A tool installed under `$PRSCD_TOOLS` (default `~/.cache/prscd-tools`)
/// by one of the project's install scripts. Missing: the test fails when
/// `require_var` is set (as `scripts/test` and CI set it), else it says it
/// is skipped and gets `None`.
pub fn installed_tool(relative: &str, require_var: &str, install: &str) -> Option<PathBuf> {
    let tools = std::env::var("PRSCD_TOOLS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/prscd-tools",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let path = PathBuf::from(tools).join(relative);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os(require_var).is_none(),
        "{} missing: run {install}",
        path.display()
    );
    eprintln!("SKIPPED: {} missing (run {install})", path.display());
    None
}

/// A test certificate authority (ECDSA P-256, valid 30 days).
pub struct TestCa {
    pub cert: rcgen::Certificate,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let now = time::OffsetDateTime::now_utc();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, params, key }
    }

    /// An ECDSA P-256 certificate for localhost and 127.0.0.1, valid `days`
    /// (at most 14 lets WebTransport clients pin its hash), and its key.
    pub fn issue(&self, common_name: &str, days: i64) -> (rcgen::Certificate, rcgen::KeyPair) {
        let now = time::OffsetDateTime::now_utc();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let issuer = rcgen::Issuer::new(self.params.clone(), &self.key);
        (params.signed_by(&key, &issuer).unwrap(), key)
    }
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = scratch_dir("pki");
        let ca = TestCa::new("prscd test CA");
        let (leaf, leaf_key) = ca.issue("127.0.0.1", 10);
        let chain_pem = dir.join("chain.pem");
        let key_pem = dir.join("key.pem");
        std::fs::write(&chain_pem, format!("{}{}", leaf.pem(), ca.cert.pem())).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
        Pki {
            chain_pem,
            key_pem,
            ca: ca.cert.der().clone(),
            leaf: leaf.der().clone(),
            issuer: ca,
        }
    })
}

/// The real binary, started in its own scratch directory.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// What it was started with, to start it again.
    vars: Vec<(String, String)>,
    /// A command prefix it runs under (e.g. `ip netns exec NS`), if any.
    wrapper: Vec<String>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_prscd")
}

/// A tool of the workspace (`prscd-bench`, `prscd-netem`), built beside the
/// node in the shared target directory by `cargo build --workspace` (cargo
/// builds only this package's binaries for its tests).
pub fn tool_binary(name: &str) -> PathBuf {
    let path = Path::new(binary()).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build the tools first (cargo build --workspace)",
        path.display()
    );
    path
}

impl Node {
    /// A node with two apps (`pk1` → app1, `pk2` → app2) and the test PKI.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// As [`Node::start`], with `env` added or overriding.
    pub fn start_with(env: &[(&str, &str)]) -> Node {
        Node::start_in(&[], env)
    }

    /// As [`Node::start_with`], run under the command prefix `wrapper`.
    pub fn start_in(wrapper: &[String], env: &[(&str, &str)]) -> Node {
        let pki = pki();
        let mut vars: Vec<(String, String)> = vec![
            ("APPS".into(), format!("{KEY1}:app1,{KEY2}:app2")),
            ("APP_TOKEN_SECRETS".into(), format!("app1:{APP1_SECRET}")),
            ("METRICS_TOKEN".into(), METRICS_TOKEN.into()),
            ("MESH_ID".into(), "test-node".into()),
            ("CERT_FILE".into(), pki.chain_pem.display().to_string()),
            ("KEY_FILE".into(), pki.key_pem.display().to_string()),
            ("DEBUG".into(), "true".into()),
            // Leaves at once, so that other tests see exact sequences; the
            // grace period has tests of its own (tests/presence.rs).
            ("PRESENCE_GRACE_MS".into(), "0".into()),
        ];
        for (k, v) in env {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        let mut node = Node::spawn_in(wrapper, &vars);
        node.port = node.wait_ready();
        node
    }

    /// Spawns with exactly `vars` (plus HOST/PORT defaults) and does not wait.
    pub fn spawn(vars: &[(String, String)]) -> Node {
        Node::spawn_in(&[], vars)
    }

    /// As [`Node::spawn`], run under the command prefix `wrapper`, which
    /// must exec the binary in the same process (as `ip netns exec` does).
    pub fn spawn_in(wrapper: &[String], vars: &[(String, String)]) -> Node {
        crypto();
        let dir = scratch_dir("node");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Ok(filter) = std::env::var("PRSCD_TEST_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        for (k, v) in vars {
            // An empty value removes a default.
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("spawn prscd");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("PRSCD_TEST_ECHO").is_some() {
                    eprintln!("[prscd] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Node {
            child: Some(child),
            port: 0,
            dir,
            logs,
            vars: vars.to_vec(),
            wrapper: wrapper.to_vec(),
        }
    }

    /// A new process with the same settings (after [`Node::kill9`]).
    pub fn restart(&self) -> Node {
        let mut node = Node::spawn_in(&self.wrapper, &self.vars);
        node.port = node.wait_ready();
        node
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the ready line and returns the port it announces.
    pub fn wait_ready(&self) -> u16 {
        let line = self.wait_log_blocking("ready: port=", Duration::from_secs(20));
        ready_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    fn find_log(&self, needle: &str) -> Option<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    fn no_log_line(&self, needle: &str, within: Duration) -> ! {
        panic!(
            "no log line with {needle:?} within {within:?}; logs:\n{}",
            self.logs().join("\n")
        )
    }

    /// Waits (blocking the thread) for a log line containing `needle`.
    pub fn wait_log_blocking(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.find_log(needle) {
                return line;
            }
            if Instant::now() > deadline {
                self.no_log_line(needle, within);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.find_log(needle) {
                return line;
            }
            if Instant::now() > deadline {
                self.no_log_line(needle, WAIT);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` over TLS: (status, headers lower-cased, body).
    pub async fn get(&self, path: &str) -> (u16, Vec<(String, String)>, String) {
        http_get(&mut tls_connect(self.addr()).await, path).await
    }

    /// `GET path` on the client port with extra request headers.
    pub async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<(String, String)>, String) {
        http_get_with(&mut tls_connect(self.addr()).await, path, headers).await
    }

    /// `/metrics` on the client port, with the test bearer token.
    pub async fn metrics(&self) -> String {
        let auth = format!("Bearer {METRICS_TOKEN}");
        let (status, _, body) = self.get_with("/metrics", &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    pub async fn health(&self) -> (u16, serde_json::Value) {
        let (status, _, body) = self.get("/health").await;
        (status, serde_json::from_str(&body).expect("health json"))
    }

    /// A counter from `/health`, e.g. `["dropped", "malformed"]`.
    pub async fn counter(&self, path: &[&str]) -> u64 {
        let (_, mut v) = self.health().await;
        for key in path {
            v = v[*key].take();
        }
        v.as_u64().unwrap_or_else(|| panic!("no counter {path:?}"))
    }

    /// Polls a counter until it reaches `at_least`.
    pub async fn wait_counter(&self, path: &[&str], at_least: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let n = self.counter(path).await;
            if n >= at_least {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "counter {path:?} stuck at {n}, wanted {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn connect(&self, via: Via, key: &str, id: &str) -> Client {
        match via {
            Via::Ws => self.ws(key, id).await,
            Via::Datagram => self.wt(key, id, false).await,
            Via::Stream => self.wt(key, id, true).await,
        }
    }

    pub async fn ws(&self, key: &str, id: &str) -> Client {
        let (ws, _) = ws_handshake(self.addr(), &format!("/v1?publickey={key}&id={id}"))
            .await
            .unwrap_or_else(|(status, _)| panic!("websocket handshake refused: {status}"));
        Client::ws(id, ws)
    }

    pub async fn wt(&self, key: &str, id: &str, stream: bool) -> Client {
        let conn = wt_connect(self.port, &format!("/v1?publickey={key}&id={id}"))
            .await
            .unwrap_or_else(|e| panic!("webtransport refused: {e}"));
        Client::wt(id, conn, stream).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// For nodes whose test clients never announce themselves the way browsers
/// do: turns the mesh presence check off (see [`mesh_of`]).
pub const SILENT_CLIENTS: (&str, &str) = ("MESH_PRESENCE_CHECK_MS", "0");

/// A TCP port free right now on 127.0.0.1.
///
/// Below the kernel's ephemeral range (32768 and up by default): a port the
/// kernel handed out for bind(0) is free again once checked, and an outgoing
/// connection of a concurrent test (a browser, a zenoh link) could take it
/// before the node binds it ("Address already in use", seen in CI).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    // One walk per process, starting where other test processes are unlikely to be.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SEED: OnceLock<u32> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(2_654_435_761) ^ nanos
    });
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// Nodes meshed peer to peer over zenoh TCP on loopback: node i listens on
/// its own port and connects to every earlier node. `extra` goes to all.
///
/// The presence check (`MESH_PRESENCE_CHECK_MS`) is off unless `extra` sets
/// it: these tests' clients do not announce themselves as browsers do, and
/// check exact message sequences; the check has tests of its own.
pub fn mesh_of(names: &[&str], extra: &[(&str, &str)]) -> Vec<Node> {
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let listen = format!("tcp/127.0.0.1:{}", ports[i]);
        let connect: Vec<String> = ports[..i]
            .iter()
            .map(|p| format!("tcp/127.0.0.1:{p}"))
            .collect();
        let connect = connect.join(",");
        let mut env = vec![
            ("MESH_ID", *name),
            ("ZENOH_LISTEN", listen.as_str()),
            ("ZENOH_CONNECT", connect.as_str()),
            SILENT_CLIENTS,
        ];
        env.extend_from_slice(extra);
        nodes.push(Node::start_with(&env));
    }
    nodes
}

impl Node {
    /// Waits until `/health` says the mesh is `state`.
    pub async fn wait_mesh_state(&self, state: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, health) = self.health().await;
            if health["mesh"]["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mesh state stuck at {}, wanted {state}",
                health["mesh"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this node knows `n` memberships of other nodes' peers.
    pub async fn wait_remote_members(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.counter(&["mesh", "remote_members"]).await;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "remote_members stuck at {got}, wanted {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A TCP relay that can be cut silently (bytes swallowed, sockets left
/// open, like a network partition) and healed (new connections flow).
pub struct TcpRelay {
    pub port: u16,
    state: Arc<Mutex<(bool, u64)>>, // (cut, epoch)
}

impl TcpRelay {
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new((false, 0u64)));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let epoch = st.lock().unwrap().1;
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, st.clone(), epoch));
                tokio::spawn(pipe(ro, wi, st.clone(), epoch));
            }
        });
        TcpRelay { port, state }
    }

    /// Silently drops everything from now on, on every connection.
    pub fn cut(&self) {
        self.state.lock().unwrap().0 = true;
    }

    /// Lets new connections through again (old ones stay dead).
    pub fn heal(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 = false;
        st.1 += 1;
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<(bool, u64)>>,
    epoch: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (cut, now) = *state.lock().unwrap();
        if cut || now != epoch {
            continue; // swallowed
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `GET path` on an open TLS stream to a node: (status, headers lower-cased,
/// body), bounded by [`WAIT`].
pub async fn http_get<S>(tls: &mut S, path: &str) -> (u16, Vec<(String, String)>, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    http_get_with(tls, path, &[]).await
}

/// As [`http_get`], with extra request headers.
pub async fn http_get_with<S>(
    tls: &mut S,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    http_request(tls, "GET", path, headers, None).await
}

/// One HTTP/1.1 request on an open stream (TLS or not), with a body if
/// given (and its Content-Length): (status, headers lower-cased, body).
pub async fn http_request<S>(
    tls: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Vec<(String, String)>, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (status, headers, body) = http_request_bytes(tls, method, path, headers, body, WAIT).await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// As [`http_request`], with the body as bytes and the response awaited
/// for up to `within` (a profile takes its seconds).
pub async fn http_request_bytes<S>(
    tls: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    within: Duration,
) -> (u16, Vec<(String, String)>, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    if let Some(body) = body {
        extra.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    if let Some(body) = body {
        tls.write_all(body).await.unwrap();
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(within, tls.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

pub async fn tls_connect(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls_wrap(tcp).await
}

/// Roots that trust the test PKI.
pub fn test_roots() -> rustls::RootCertStore {
    crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().ca.clone()).unwrap();
    roots
}

pub async fn tls_wrap(tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_wrap(tcp).await.expect("tls handshake")
}

/// As [`tls_wrap`], returning the handshake's error (for tests that count
/// resets).
pub async fn try_tls_wrap(
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(test_roots())
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

pub type Ws = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// WebSocket handshake for `target`; on refusal, the status and headers.
pub async fn ws_handshake(
    addr: SocketAddr,
    target: &str,
) -> Result<(Ws, Vec<(String, String)>), (u16, Vec<(String, String)>)> {
    ws_handshake_with(addr, target, &[]).await
}

/// As [`ws_handshake`], with extra request headers (such as `Origin`).
pub async fn ws_handshake_with(
    addr: SocketAddr,
    target: &str,
    extra: &[(&str, &str)],
) -> Result<(Ws, Vec<(String, String)>), (u16, Vec<(String, String)>)> {
    use tungstenite::client::IntoClientRequest as _;
    let tls = tls_connect(addr).await;
    let mut url = format!("wss://127.0.0.1:{}{target}", addr.port())
        .into_client_request()
        .unwrap();
    for (name, value) in extra {
        url.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let headers = |h: &tungstenite::http::HeaderMap| {
        h.iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect::<Vec<_>>()
    };
    match tokio_tungstenite::client_async(url, tls).await {
        Ok((ws, resp)) => Ok((ws, headers(resp.headers()))),
        Err(tungstenite::Error::Http(resp)) => {
            Err((resp.status().as_u16(), headers(resp.headers())))
        }
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

/// A WebTransport session to `path`, pinning the test leaf's hash.
pub async fn wt_connect(
    port: u16,
    path: &str,
) -> Result<wtransport::Connection, wtransport::error::ConnectingError> {
    wt_connect_pinned(port, path, &pki().leaf).await
}

pub async fn wt_connect_pinned(
    port: u16,
    path: &str,
    leaf: &[u8],
) -> Result<wtransport::Connection, wtransport::error::ConnectingError> {
    wt_connect_with(port, path, leaf, &[]).await
}

/// A WebTransport session with extra CONNECT headers (such as `origin`).
pub async fn wt_connect_with(
    port: u16,
    path: &str,
    leaf: &[u8],
    headers: &[(&str, &str)],
) -> Result<wtransport::Connection, wtransport::error::ConnectingError> {
    crypto();
    let hash = wtransport::tls::Sha256Digest::new(
        ring::digest::digest(&ring::digest::SHA256, leaf)
            .as_ref()
            .try_into()
            .unwrap(),
    );
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([hash])
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .build();
    let endpoint = wtransport::Endpoint::client(config).unwrap();
    let mut options =
        wtransport::endpoint::ConnectOptions::builder(format!("https://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        options = options.add_header(*name, *value);
    }
    tokio::time::timeout(WAIT, endpoint.connect(options.build()))
        .await
        .expect("webtransport connect timed out")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Ws,
    Datagram,
    Stream,
}

pub const ALL_VIA: [Via; 3] = [Via::Ws, Via::Datagram, Via::Stream];

enum Transport {
    Ws(Box<Ws>),
    Wt {
        conn: wtransport::Connection,
        stream: Option<(wtransport::SendStream, wtransport::RecvStream, BytesMut)>,
    },
}

/// What [`Client::next_within`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Msg(Vec<u8>),
    /// Nothing arrived in time; the connection is still open.
    Quiet,
    /// The connection ended (close, reset or error).
    Closed,
}

/// One connected test client.
pub struct Client {
    pub id: String,
    transport: Transport,
}

impl Client {
    pub fn ws(id: &str, ws: Ws) -> Client {
        Client {
            id: id.to_owned(),
            transport: Transport::Ws(Box::new(ws)),
        }
    }

    /// Queues a TLS 1.3 KeyUpdate asking for the node's (WebSocket only); it
    /// goes out with the next message.
    pub fn refresh_tls_keys(&mut self) {
        match &mut self.transport {
            Transport::Ws(ws) => ws.get_mut().get_mut().1.refresh_traffic_keys().unwrap(),
            Transport::Wt { .. } => panic!("{}: TLS key updates are for WebSocket", self.id),
        }
    }

    pub async fn wt(id: &str, conn: wtransport::Connection, stream: bool) -> Client {
        let stream = if stream {
            let (send, recv) = conn.open_bi().await.unwrap().await.unwrap();
            Some((send, recv, BytesMut::new()))
        } else {
            None
        };
        Client {
            id: id.to_owned(),
            transport: Transport::Wt { conn, stream },
        }
    }

    pub fn ws_mut(&mut self) -> &mut Ws {
        match &mut self.transport {
            Transport::Ws(ws) => ws.as_mut(),
            _ => panic!("not a websocket client"),
        }
    }

    pub fn wt_conn(&self) -> &wtransport::Connection {
        match &self.transport {
            Transport::Wt { conn, .. } => conn,
            _ => panic!("not a webtransport client"),
        }
    }

    /// Sends one raw frame / datagram / stream message.
    pub async fn send(&mut self, frame: &[u8]) {
        match &mut self.transport {
            Transport::Ws(ws) => ws
                .send(Message::Binary(frame.to_vec().into()))
                .await
                .unwrap(),
            Transport::Wt {
                stream: Some((send, _, _)),
                ..
            } => send.write_all(frame).await.unwrap(),
            Transport::Wt { conn, .. } => conn.send_datagram(frame).unwrap(),
        }
    }

    /// The next message's raw bytes, or `None` when nothing arrives within
    /// `within`. Panics if the connection has ended: a wait for silence must
    /// not pass because the client died. [`Client::next_within`] tells the
    /// two apart for tests that expect a close.
    pub async fn recv_raw(&mut self, within: Duration) -> Option<Vec<u8>> {
        match self.next_within(within).await {
            Next::Msg(raw) => Some(raw),
            Next::Quiet => None,
            Next::Closed => panic!("{}: the connection ended", self.id),
        }
    }

    /// The next message, silence for `within`, or the connection's end.
    pub async fn next_within(&mut self, within: Duration) -> Next {
        match tokio::time::timeout(within, self.next_raw()).await {
            Ok(Some(raw)) => Next::Msg(raw),
            Ok(None) => Next::Closed,
            Err(_) => Next::Quiet,
        }
    }

    /// `None` when the connection ended.
    async fn next_raw(&mut self) -> Option<Vec<u8>> {
        match &mut self.transport {
            Transport::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Binary(b)) => return Some(b.to_vec()),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
            Transport::Wt {
                stream: Some((_, recv, buf)),
                ..
            } => loop {
                if let Ok(n) = prscd_wire::protocol::value_len(buf) {
                    let msg = buf[..n].to_vec();
                    buf.advance(n);
                    return Some(msg);
                }
                let mut chunk = [0u8; 8192];
                match recv.read(&mut chunk).await {
                    Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            },
            Transport::Wt { conn, .. } => conn
                .receive_datagram()
                .await
                .ok()
                .map(|d| d.payload().to_vec()),
        }
    }

    /// The next message, decoded. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        let raw = self
            .recv_raw(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: nothing received within {WAIT:?}", self.id));
        decode(&raw)
    }

    /// Skips messages until one with `op` (or `t` for data) arrives.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        self.recv_op_within(op, WAIT).await
    }

    /// As [`Client::recv_op`], waiting up to `within`.
    pub async fn recv_op_within(&mut self, op: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let raw = self
                .recv_raw(left)
                .await
                .unwrap_or_else(|| panic!("{}: no {op} within {within:?}", self.id));
            let v = decode(&raw);
            if field(&v, "op") == Some(op) || (op == "data" && field(&v, "t") == Some("data")) {
                return v;
            }
        }
    }

    /// Reads and discards until nothing arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while self.recv_raw(quiet).await.is_some() {
            n += 1;
        }
        n
    }

    /// Asserts nothing from `peer` (as `p`) arrives for `quiet`; other
    /// traffic is read and ignored.
    pub async fn expect_nothing_from(&mut self, peer: &str, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Some(raw) = self
            .recv_raw(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            let v = decode(&raw);
            assert_ne!(field(&v, "p"), Some(peer), "{}: got {v}", self.id);
        }
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(raw) = self.recv_raw(quiet).await {
            panic!("{}: expected nothing, got {}", self.id, decode(&raw));
        }
    }

    /// Joins `channel`, returning the ack.
    pub async fn join(&mut self, channel: &str) -> Value {
        self.send(&join(channel, &self.id.clone())).await;
        let ack = self.recv_op("channel_join").await;
        assert_eq!(field(&ack, "c"), Some(channel));
        ack
    }

    /// WebSocket: waits for the server's close frame and returns its code.
    /// WebTransport: waits for the session to close and returns the app code.
    pub async fn closed_with(&mut self) -> Option<u16> {
        let fut = async {
            match &mut self.transport {
                Transport::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return None,
                    }
                },
                Transport::Wt { conn, .. } => match conn.closed().await {
                    wtransport::error::ConnectionError::ApplicationClosed(close) => {
                        Some(close.code().into_inner() as u16)
                    }
                    _ => None,
                },
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("connection did not close")
    }

    /// Ends the connection politely.
    pub async fn close(mut self) {
        match &mut self.transport {
            Transport::Ws(ws) => {
                let _ = ws.as_mut().close(None).await;
            }
            Transport::Wt { conn, .. } => conn.close(wtransport::VarInt::from_u32(0), b"bye"),
        }
    }
}

pub fn decode(raw: &[u8]) -> Value {
    let mut slice = raw;
    let v = rmpv::decode::read_value(&mut slice).expect("msgpack from server");
    assert!(slice.is_empty(), "trailing bytes in one frame: {raw:?}");
    v
}

/// A string field of a decoded message.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .and_then(|(_, v)| v.as_str())
}

pub fn has_key(v: &Value, key: &str) -> bool {
    v.as_map()
        .is_some_and(|m| m.iter().any(|(k, _)| k.as_str() == Some(key)))
}

/// The raw bytes of a bin field.
pub fn bin<'a>(v: &'a Value, key: &str) -> Option<&'a [u8]> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .and_then(|(_, v)| v.as_slice())
}

/// Encodes a Signalling map from (key, value) pairs.
pub fn msg(pairs: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    );
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &map).unwrap();
    out
}

/// msgpack of `{id, ...}`: what the client puts in `pl` for state.
pub fn state(id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(
        &mut out,
        &Value::Map(vec![(Value::from("id"), Value::from(id))]),
    )
    .unwrap();
    out
}

pub fn join(channel: &str, id: &str) -> Vec<u8> {
    control("channel_join", channel, Some(state(id)))
}

pub fn control(op: &str, channel: &str, pl: Option<Vec<u8>>) -> Vec<u8> {
    let mut pairs = vec![
        ("t", Value::from("control")),
        ("op", Value::from(op)),
        ("c", Value::from(channel)),
    ];
    if let Some(pl) = pl {
        pairs.push(("pl", Value::Binary(pl)));
    }
    msg(pairs)
}

/// A data message: `pl` = msgpack `{event, data}`.
pub fn data(channel: &str, event: &str, json: &str) -> Vec<u8> {
    let mut pl = Vec::new();
    rmpv::encode::write_value(
        &mut pl,
        &Value::Map(vec![
            (Value::from("event"), Value::from(event)),
            (Value::from("data"), Value::from(json)),
        ]),
    )
    .unwrap();
    msg(vec![
        ("t", Value::from("data")),
        ("c", Value::from(channel)),
        ("pl", Value::Binary(pl)),
    ])
}

pub fn tempfile(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

pub use prscd_testkit::ready::ready_port;

/// A process that prints `ready: port=N` on stderr when it listens: the
/// benchmark's comparison servers (the testkit's, failing the test when it
/// is not ready within 20 s). Killed on drop.
pub struct ReadyProcess(prscd_testkit::ready::ReadyProcess);

impl std::ops::Deref for ReadyProcess {
    type Target = prscd_testkit::ready::ReadyProcess;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ReadyProcess {
    pub fn start(cmd: Command) -> ReadyProcess {
        let what = format!("{cmd:?}");
        ReadyProcess(
            prscd_testkit::ready::ReadyProcess::start(cmd, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{what}: {e:#}")),
        )
    }
}
