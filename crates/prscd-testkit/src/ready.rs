//! A child process that says it listens by printing `ready: port=N` on
//! stderr (prscd, the benchmark's comparison servers): start it, wait for
//! that line within a bound, notice when it exits first, kill it on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The port of a `ready: port=N …` line.
pub fn ready_port(line: &str) -> Option<u16> {
    let rest = line.split("ready: port=").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The process exited before it said it was ready (with its last log line).
#[derive(Debug, thiserror::Error)]
#[error("{program} exited before ready: {status}: {log}")]
pub struct ExitedBeforeReady {
    pub program: String,
    pub status: std::process::ExitStatus,
    pub log: String,
}

/// A started process that said it was ready. Killed (SIGKILL) on drop.
pub struct ReadyProcess {
    child: Child,
    pub port: u16,
}

impl ReadyProcess {
    /// Spawns `cmd` (stdin and stdout null, stderr read) and waits up to
    /// `within` for its `ready: port=N` line.
    pub fn start(mut cmd: Command, within: Duration) -> anyhow::Result<ReadyProcess> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stderr = child.stderr.take().expect("piped");
        let port = Arc::new(Mutex::new(None::<u16>));
        let seen = port.clone();
        // The last line it logged, for the error if it dies at start.
        let last_line = Arc::new(Mutex::new(String::new()));
        let last = last_line.clone();
        // Keeps reading so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(p) = ready_port(&line) {
                    seen.lock().unwrap().get_or_insert(p);
                }
                *last.lock().unwrap() = line;
            }
        });
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = *port.lock().unwrap() {
                return Ok(ReadyProcess { child, port: p });
            }
            if let Some(status) = child.try_wait()? {
                // The reader thread may still be taking the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let log = last_line.lock().unwrap().clone();
                return Err(ExitedBeforeReady {
                    program,
                    status,
                    log,
                }
                .into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{program} not ready within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ReadyProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        assert_eq!(ready_port("INFO ready: port=8443 mesh=eu"), Some(8443));
        assert_eq!(ready_port("ready: port=x"), None);
        assert_eq!(ready_port("listening"), None);
    }
}
