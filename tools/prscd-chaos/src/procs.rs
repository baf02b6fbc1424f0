//! The child processes of a chaos run (nodes, zenohd routers, WAN relays):
//! started with a log file per start, signalled, killed. Each child gets
//! PR_SET_PDEATHSIG so that it dies with the driver even when the driver is
//! killed with -9; every child is killed when its [`Proc`] drops.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub struct Proc {
    pub name: String,
    /// A prefix such as `ip netns exec NS` (which execs the program in place).
    prefix: Vec<String>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    child: Option<Child>,
    pub starts: u32,
    /// The log of the current (or last) start.
    pub log: PathBuf,
    /// Every log this process wrote, for the panic scan.
    pub logs: Vec<PathBuf>,
    pub stopped: bool,
}

impl Proc {
    pub fn new(
        name: &str,
        prefix: Vec<String>,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: &Path,
    ) -> Proc {
        Proc {
            name: name.into(),
            prefix,
            program: program.into(),
            args,
            env,
            dir: dir.into(),
            child: None,
            starts: 0,
            log: PathBuf::new(),
            logs: Vec::new(),
            stopped: false,
        }
    }

    /// Starts it (it must not be running). Call from the main thread only:
    /// PDEATHSIG fires when the spawning thread ends.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        self.log = self.dir.join(format!("{}.{}.log", self.name, self.starts));
        let log = std::fs::File::create(&self.log)?;
        let mut cmd = match self.prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.program.display()))?;
        self.child = Some(child);
        self.logs.push(self.log.clone());
        self.stopped = false;
        Ok(())
    }

    /// Waits until the current log holds a line with `needle`; that line.
    pub fn wait_line(&mut self, needle: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before {needle:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&text, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no {needle:?} within {within:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&text, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `Some(status)` if it exited on its own (it is then reaped and forgotten).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    pub fn stop(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    pub fn cont(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// SIGTERM, then waits up to `within` for the exit; kill -9 after that.
    /// True if it exited on its own.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }

    /// Lines of every log of this process that contain `needle`.
    pub fn grep(&self, needle: &str) -> Vec<String> {
        self.logs
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped {
            self.cont();
        }
        self.kill9();
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Resident memory (KiB) and open file descriptors of `pid`, from /proc.
pub fn resources(pid: i32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}
