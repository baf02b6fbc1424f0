//! Live CPU profiles of the running node: `GET /debug/pprof/profile` on the
//! admin port, behind the admin token ([`crate::admin`]).
//!
//! The `pprof` crate samples every thread's stack on `SIGPROF` for the
//! asked number of seconds; the answer is the pprof protobuf (what
//! `go tool pprof` and most profile viewers read), or a flamegraph SVG.
//! Sampling runs on a blocking thread, never on the runtime's workers, and
//! one profile is taken at a time: the profiler is process-wide.
//!
//! There is no heap profile: no crate gives one without replacing the
//! global allocator, which the node does not do for this alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::transport::http::Request;

/// Where the admin port serves profiles.
pub const PATH: &str = "/debug/pprof/profile";

/// Longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 60;
/// As Go's `net/http/pprof` when `seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 30;
/// Samples per second: off the beat of periodic work, as pprof's default.
const FREQUENCY: i32 = 99;

/// Whether a profile is being taken (the profiler is process-wide).
static BUSY: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("seconds must be a whole number in 1..={MAX_SECONDS}")]
    BadSeconds,
    #[error("format must be `proto` or `svg`")]
    BadFormat,
    #[error("a profile is being taken already; ask again when it is done")]
    Busy,
    #[error("the profiler failed: {0}")]
    Profiler(#[from] pprof::Error),
    #[error("the profile could not be encoded: {0}")]
    Encode(String),
}

impl ProfileError {
    pub fn status(&self) -> u16 {
        match self {
            ProfileError::BadSeconds | ProfileError::BadFormat => 400,
            ProfileError::Busy => 409,
            ProfileError::Profiler(_) | ProfileError::Encode(_) => 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The pprof protobuf (`profile.proto`), not compressed.
    Proto,
    /// A flamegraph (inferno's SVG).
    Svg,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Proto => "application/octet-stream",
            Format::Svg => "image/svg+xml",
        }
    }
}

/// What a request asks for: how long, and in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub seconds: u64,
    pub format: Format,
}

/// Reads `?seconds=N&format=proto|svg`; without `format`, an `Accept` that
/// names `image/svg+xml` asks for the SVG.
pub fn parse(request: &Request) -> Result<Ask, ProfileError> {
    let query = request.target.split_once('?').map_or("", |(_, q)| q);
    let (mut seconds, mut format) = (DEFAULT_SECONDS, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "seconds" => {
                seconds = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_SECONDS).contains(s))
                    .ok_or(ProfileError::BadSeconds)?;
            }
            "format" => {
                format = Some(match value {
                    "proto" | "pb" => Format::Proto,
                    "svg" | "flamegraph" => Format::Svg,
                    _ => return Err(ProfileError::BadFormat),
                });
            }
            _ => {}
        }
    }
    let format = format.unwrap_or_else(|| {
        if request.header_has_token("accept", "image/svg+xml") {
            Format::Svg
        } else {
            Format::Proto
        }
    });
    Ok(Ask { seconds, format })
}

/// Holds [`BUSY`] while a profile is taken.
struct Slot;

impl Slot {
    fn take() -> Result<Slot, ProfileError> {
        BUSY.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Slot)
            .map_err(|_| ProfileError::Busy)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// Samples the process for `ask.seconds` on a blocking thread and encodes
/// the result.
pub async fn take(ask: Ask) -> Result<Vec<u8>, ProfileError> {
    let slot = Slot::take()?;
    let sample = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        sample(ask)
    });
    sample
        .await
        .map_err(|e| ProfileError::Encode(format!("profiling task: {e}")))?
}

fn sample(ask: Ask) -> Result<Vec<u8>, ProfileError> {
    // Unwinding inside these libraries from a signal handler can deadlock.
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    std::thread::sleep(Duration::from_secs(ask.seconds));
    let report = guard.report().build()?;
    drop(guard);
    let mut body = Vec::new();
    match ask.format {
        Format::Proto => {
            use pprof::protos::Message as _;
            report
                .pprof()?
                .encode(&mut body)
                .map_err(|e| ProfileError::Encode(e.to_string()))?;
        }
        Format::Svg => {
            report.flamegraph(&mut body)?;
            if body.is_empty() {
                // inferno writes nothing without samples: an idle node.
                body = NO_SAMPLES_SVG.as_bytes().to_vec();
            }
        }
    }
    Ok(body)
}

const NO_SAMPLES_SVG: &str = concat!(
    r#"<?xml version="1.0" standalone="no"?>"#,
    "\n",
    r#"<svg version="1.1" width="400" height="40" xmlns="http://www.w3.org/2000/svg">"#,
    r#"<text x="10" y="25">no CPU samples: the node was idle</text></svg>"#,
    "\n"
);

/// `GET /debug/pprof/profile`: (status, content type, body).
pub async fn serve(request: &Request, admin_token: Option<&str>) -> (u16, &'static str, Vec<u8>) {
    if let Some((status, body)) = crate::admin::access(request, admin_token).refusal() {
        return (status, "text/plain", body.into());
    }
    if request.method != "GET" {
        return (405, "text/plain", b"GET only\n".to_vec());
    }
    let result = match parse(request) {
        Ok(ask) => take(ask).await.map(|body| (ask.format, body)),
        Err(e) => Err(e),
    };
    match result {
        Ok((format, body)) => (200, format.content_type(), body),
        Err(e) => {
            if e.status() == 500 {
                tracing::warn!("profile: {e}");
            }
            (e.status(), "text/plain", format!("{e}\n").into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, accept: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            headers: accept
                .map(|v| vec![("accept".to_owned(), v.to_owned())])
                .unwrap_or_default(),
        }
    }

    fn ask(target: &str, accept: Option<&str>) -> Result<Ask, u16> {
        parse(&request(target, accept)).map_err(|e| e.status())
    }

    #[test]
    fn seconds_are_bounded_and_format_is_chosen() {
        let path = "/debug/pprof/profile";
        assert_eq!(
            ask(path, None),
            Ok(Ask {
                seconds: DEFAULT_SECONDS,
                format: Format::Proto
            })
        );
        assert_eq!(
            ask(&format!("{path}?seconds=2&format=svg"), None),
            Ok(Ask {
                seconds: 2,
                format: Format::Svg
            })
        );
        assert_eq!(
            ask(&format!("{path}?seconds=60"), Some("image/svg+xml")).map(|a| a.format),
            Ok(Format::Svg)
        );
        assert_eq!(
            ask(&format!("{path}?format=proto"), Some("image/svg+xml")).map(|a| a.format),
            Ok(Format::Proto)
        );
        for bad in [
            "seconds=0",
            "seconds=61",
            "seconds=-1",
            "seconds=",
            "seconds=2.5",
        ] {
            assert_eq!(ask(&format!("{path}?{bad}"), None), Err(400), "{bad}");
        }
        assert_eq!(ask(&format!("{path}?format=png"), None), Err(400));
    }

    #[test]
    fn one_profile_at_a_time() {
        let first = Slot::take().unwrap();
        assert!(matches!(Slot::take(), Err(ProfileError::Busy)));
        drop(first);
        drop(Slot::take().unwrap());
    }
}
