//! Linux network namespaces, for runs that simulate separate networks on
//! one machine (`tests/wan.rs`, `prscd-chaos`): create and remove them (with
//! whatever still runs inside), clean up those of an earlier run that
//! crashed, run a process in one (`ip netns exec`), and open TCP
//! connections from inside one (a thread that `setns`es into it, so the
//! socket belongs to that namespace). Needs root and iproute2's `ip`
//! ([`unusable`] says why not).

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// `ip`, from PATH or the usual sbin directories.
pub fn ip_binary() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = path.split(':').map(PathBuf::from).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("ip")).find(|p| p.is_file())
}

/// Why namespaces cannot be used here, or `None` when they can.
pub fn unusable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if ip_binary().is_none() {
        return Some("iproute2's `ip` is missing".into());
    }
    None
}

/// Runs `ip args…`; the error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let bin = ip_binary().context("no ip binary")?;
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n ns args…`.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
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
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes namespaces named `<prefix><pid>-…` whose run (`pid`) is gone,
/// with the processes still running in them; with `own`, also those of this
/// process's pid (left by an earlier run that had it: only for a process
/// that has not made any yet).
pub fn remove_stale(prefix: &str, own: bool) {
    let me = std::process::id() as i32;
    for name in list() {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if (pid != me && alive(pid)) || (pid == me && !own) {
            continue;
        }
        eprintln!("removing stale namespace {name} (its run, pid {pid}, is gone)");
        remove(&name);
    }
}

/// Pids of the processes in namespace `ns`.
pub fn pids(ns: &str) -> Vec<i32> {
    let Some(bin) = ip_binary() else {
        return Vec::new();
    };
    Command::new(bin)
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what runs in `ns` and deletes it.
pub fn remove(ns: &str) {
    for pid in pids(ns) {
        // SAFETY: plain kill(2) of a pid the namespace holds.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("netns cleanup: {e:#}");
    }
}

/// `ip netns add ns`, loopback up.
pub fn create(ns: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])
}

/// Writes a sysctl inside `ns` (e.g. `net/ipv4/ip_forward`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    let value = value.to_owned();
    run_in(ns, move || std::fs::write(&path, value))
        .with_context(|| format!("sysctl {key} in {ns}"))
}

/// Runs `f` on a new thread that has joined namespace `ns`: sockets it
/// creates belong to the namespace (and stay there when handed back).
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let name = ns.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter(&name)?;
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// The command prefix that runs a program in `ns` (`ip netns exec` execs in place).
pub fn exec_prefix(ns: &str) -> Vec<String> {
    vec![
        ip_binary().map_or("ip".into(), |p| p.display().to_string()),
        "netns".into(),
        "exec".into(),
        ns.into(),
    ]
}

/// Moves the calling thread (only it) into namespace `name`.
fn enter(name: &str) -> anyhow::Result<()> {
    let file = File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    // SAFETY: a valid namespace fd; setns changes the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// A TCP connection to `addr` made from inside `ns` (or from here when
/// `None`), TCP_NODELAY set, blocking.
pub fn connect_std(
    ns: Option<&str>,
    addr: SocketAddr,
    within: Duration,
) -> anyhow::Result<std::net::TcpStream> {
    let connect = move || -> std::io::Result<std::net::TcpStream> {
        let tcp = std::net::TcpStream::connect_timeout(&addr, within)?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    };
    match ns {
        Some(ns) => run_in(ns, connect),
        None => Ok(connect()?),
    }
}

/// As [`connect_std`], for tokio. The connect runs on a thread of its own,
/// never on a runtime thread, whose namespace must not change.
pub async fn connect(
    ns: Option<&str>,
    addr: SocketAddr,
    within: Duration,
) -> anyhow::Result<tokio::net::TcpStream> {
    let name = ns.map(str::to_owned);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(connect_std(name.as_deref(), addr, within));
    });
    let tcp = rx.await.context("connect thread")??;
    tcp.set_nonblocking(true)?;
    Ok(tokio::net::TcpStream::from_std(tcp)?)
}

/// A named network namespace, removed (with whatever still runs in it) on
/// drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add name`, with its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes charge of namespace `name`, which exists: removed on drop.
    pub fn adopt(name: String) -> Netns {
        Netns { name }
    }

    /// The command prefix that runs a program in this namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        exec_prefix(&self.name)
    }

    /// `ip -n name args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        ip_in(&self.name, args)
    }

    /// Writes a sysctl of this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sysctl(&self.name, key, value)
    }

    /// Pids of the processes in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.name)
    }

    /// A TCP connection to `addr` from inside this namespace.
    pub fn connect_std(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<std::net::TcpStream> {
        connect_std(Some(&self.name), addr, within)
    }

    /// As [`Netns::connect_std`], for tokio.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<tokio::net::TcpStream> {
        connect(Some(&self.name), addr, within).await
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}
