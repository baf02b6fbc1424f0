//! Linux network namespaces for tests that simulate separate networks on
//! one machine (`tests/wan.rs`): create and remove them, run a process in
//! one (`ip netns exec`), and open TCP connections from inside one (a
//! thread that `setns`es into it, so the socket belongs to that namespace).
//! Needs root and iproute2's `ip`; [`usable`] says whether a test may run.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{http_get, tls_wrap, Client, WAIT};

/// `ip`, from PATH or the usual sbin directories.
pub fn ip_binary() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = path.split(':').map(PathBuf::from).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("ip")).find(|p| p.is_file())
}

/// `Some(ip)` when this process may create namespaces (root, `ip`
/// present). Otherwise the test is skipped with a message, or fails when
/// `require_var` is set (as `scripts/test` sets it).
pub fn usable(require_var: &str) -> Option<PathBuf> {
    let why = if unsafe { libc::geteuid() } != 0 {
        "not root (network namespaces need CAP_SYS_ADMIN)".to_owned()
    } else {
        match ip_binary() {
            None => "iproute2's `ip` is missing (apt-get install iproute2)".to_owned(),
            Some(ip) => return Some(ip),
        }
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
    let ip = ip_binary().ok_or("no ip binary")?;
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip args…`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    if let Err(e) = ip_try(args) {
        panic!("{e}");
    }
}

/// The namespaces that exist now (names under /run/netns).
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes namespaces named `<prefix><pid>-…` whose creating process `pid`
/// is gone (a run that was killed before it could clean up), with the
/// processes still running in them.
pub fn remove_stale(prefix: &str) {
    for name in list() {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || alive(pid) {
            continue;
        }
        eprintln!("removing stale namespace {name} (its run, pid {pid}, is gone)");
        drop(Netns { name });
    }
}

/// A named network namespace, removed (with whatever still runs in it) on
/// drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add name`, with its loopback up.
    pub fn create(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// The command prefix that runs a program in this namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            ip_binary().unwrap().display().to_string(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// `ip -n name args…`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Writes a sysctl of this namespace (e.g. `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        self.run(move || std::fs::write(path, value))
            .unwrap_or_else(|e| panic!("sysctl {key} in {}: {e}", self.name));
    }

    /// Pids of the processes in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        let Some(ip) = ip_binary() else {
            return Vec::new();
        };
        Command::new(ip)
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` on a new thread that has joined this namespace: sockets it
    /// creates belong to the namespace (and stay there when handed back).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let name = self.name.clone();
        std::thread::spawn(move || enter(&name).and_then(|()| f()))
            .join()
            .expect("namespace thread panicked")
    }

    /// A TCP connection to `addr` made from inside this namespace
    /// (TCP_NODELAY set).
    pub fn connect_std(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> io::Result<std::net::TcpStream> {
        self.run(move || connect_nodelay(addr, within))
    }

    /// As [`Netns::connect_std`], for tokio (the connect runs on a thread of
    /// its own, never on a runtime thread, whose namespace must not change).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let name = self.name.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(enter(&name).and_then(|()| connect_nodelay(addr, WAIT)));
        });
        let tcp = rx.await.expect("connect thread")?;
        tcp.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(tcp)
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

/// Moves the calling thread into namespace `name` (only this thread).
fn enter(name: &str) -> io::Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: a valid namespace fd; setns changes the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn connect_nodelay(addr: SocketAddr, within: Duration) -> io::Result<std::net::TcpStream> {
    let tcp = std::net::TcpStream::connect_timeout(&addr, within)?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in it would keep it alive, unnamed.
        for pid in self.pids() {
            // SAFETY: plain kill(2) of a pid this namespace holds.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Err(e) = ip_try(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}
