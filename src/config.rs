//! Node configuration from the environment (and `.env`, loaded by `main`).
//!
//! Names are the operator-facing contract (see `env.example`): the
//! original's `PORT`, `MESH_ID`, `DEBUG`, `CERT_FILE`, `KEY_FILE`, plus the
//! apps ([`crate::apps`]: `APPS`, `APP_TOKEN_SECRETS`, `APPS_FILE`) and the
//! caps of README's "Limits" table. Reading is
//! separated from the process environment (`Config::from_lookup`) so that it
//! is unit-tested without touching global state.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::apps::{AppLimits, AppSources, Apps, AppsError};
use crate::hub::Limits;
use crate::mesh::MeshSettings;

/// The original's YoMo variables: accepted, meaningless with zenoh.
const DEPRECATED: &[&str] = &[
    "YOMO_ZIPPER",
    "YOMO_SNDR_NAME",
    "YOMO_RCVR_NAME",
    "YOMO_CREDENTIAL",
    "WITH_YOMO_ZIPPER",
    "DOMAIN",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Apps(#[from] AppsError),
    #[error("{0} is set without {1}: give both or neither")]
    HalfPair(&'static str, &'static str),
    #[error("MESH_ID is required when apps are configured (it names this node in the mesh)")]
    MeshIdRequired,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    /// 0 picks a free port (the same number for TCP and UDP).
    pub port: u16,
    pub mesh_id: String,
    pub debug: bool,
    /// PEM certificate chain and key; `None` generates a dev certificate.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub dev_cert_dir: PathBuf,
    pub apps: Apps,
    /// Where `apps` came from, to load them again on SIGHUP.
    pub app_sources: AppSources,
    /// True when no app was configured and the dev app is in use.
    pub dev_app: bool,
    pub max_message_size: usize,
    /// Longest `id` accepted at the handshake, in bytes.
    pub max_id_len: usize,
    pub limits: Limits,
    pub quic: QuicLimits,
    /// Bearer token for `/metrics` on the client port.
    pub metrics_token: Option<String>,
    /// Bearer token of the console and the other admin-only endpoints of
    /// `METRICS_PORT` ([`crate::admin`]); `None`: they answer 404.
    pub admin_token: Option<String>,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_grace: Duration,
    pub drain_timeout: Duration,
    /// How long a user whose last connection in a channel went stays a
    /// member, so that a page reload is no leave and join.
    pub presence_grace: Duration,
    pub pid_file: PathBuf,
    /// Plain-HTTP port for `/metrics` and `/health`, besides the TLS port.
    pub metrics_port: Option<u16>,
    /// `REUSE_PORT`: bind the ports beside a running node, for restarts
    /// without a gap ([`crate::transport::bind`]).
    pub reuse_port: bool,
    pub mesh: MeshSettings,
    /// One line each, printed by `main` once logging is up.
    pub warnings: Vec<String>,
}

/// Bounds on what one WebTransport session may hold.
#[derive(Debug, Clone)]
pub struct QuicLimits {
    /// Bidirectional streams a client may have open at once.
    pub max_streams: u32,
    /// Bytes a client may send on one stream ahead of the node's reading.
    pub stream_window: u32,
    /// ... and on all of a session's streams together.
    pub connection_window: u32,
}

/// `PRESENCE_GRACE_MS` by default: a page reload reconnects well within it.
pub const PRESENCE_GRACE_DEFAULT_MS: u64 = 1_500;

/// Shortest `ADMIN_TOKEN` accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Upper bound for MAX_MESSAGE_SIZE.
const MAX_MESSAGE_SIZE_CAP: usize = 16 << 20;

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();

        let port = parse(&get, "PORT", 8443u16)?;
        let flag = |name: &str| {
            get(name).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            })
        };
        let debug = flag("DEBUG");

        let tls_files = match (get("CERT_FILE"), get("KEY_FILE")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::HalfPair("CERT_FILE", "KEY_FILE")),
            (None, Some(_)) => return Err(ConfigError::HalfPair("KEY_FILE", "CERT_FILE")),
        };

        let app_defaults = AppLimits::default();
        let app_limits = AppLimits {
            max_connections: parse(&get, "APP_MAX_CONNECTIONS", app_defaults.max_connections)?,
            max_connections_per_ip: parse(
                &get,
                "APP_MAX_CONNECTIONS_PER_IP",
                app_defaults.max_connections_per_ip,
            )?,
            max_channels: parse(&get, "APP_MAX_CHANNELS", app_defaults.max_channels)?,
            max_members: parse(&get, "CHANNEL_MAX_MEMBERS", app_defaults.max_members)?,
        };
        let app_sources = AppSources {
            pairs: get("APPS"),
            token_secrets: get("APP_TOKEN_SECRETS"),
            api_keys: get("APP_API_KEYS"),
            webhooks: get("APP_WEBHOOKS"),
            file: get("APPS_FILE").map(PathBuf::from),
            limits: app_limits.clone(),
        };
        let (apps, dev_app) = match app_sources.load()? {
            Some(apps) => (apps, false),
            None => (Apps::dev(app_limits), true),
        };
        // A dev node listens on loopback unless told otherwise.
        let default_host = if dev_app { "127.0.0.1" } else { "0.0.0.0" };
        let host = parse(&get, "HOST", default_host.parse().expect("literal"))?;
        let mesh_id = match get("MESH_ID") {
            Some(id) => id,
            None if dev_app => {
                warnings.push(
                    "MESH_ID is not set: using `dev` (set one per node before meshing)".into(),
                );
                "dev".into()
            }
            None => return Err(ConfigError::MeshIdRequired),
        };
        let endpoints = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        let mesh = MeshSettings {
            config_file: get("ZENOH_CONFIG").map(PathBuf::from),
            listen: endpoints(get("ZENOH_LISTEN")),
            connect: endpoints(get("ZENOH_CONNECT")),
            max_backlog: parse(&get, "MESH_BACKLOG", 10_000usize)?,
            presence_check: Some(parse(&get, "MESH_PRESENCE_CHECK_MS", 1_000u64)?)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            inbound_queue: parse(&get, "MESH_INBOUND_QUEUE", 10_000usize)?,
            allow_unauthenticated: flag("MESH_ALLOW_UNAUTHENTICATED"),
        };

        for name in DEPRECATED {
            if get(name).is_some() {
                warnings.push(format!(
                    "{name} is deprecated and ignored: the mesh is zenoh now"
                ));
            }
        }

        let max_message_size = parse(&get, "MAX_MESSAGE_SIZE", 1usize << 20)?;
        if max_message_size == 0 || max_message_size > MAX_MESSAGE_SIZE_CAP {
            return Err(invalid(
                "MAX_MESSAGE_SIZE",
                &max_message_size.to_string(),
                format!("must be 1..={MAX_MESSAGE_SIZE_CAP}"),
            ));
        }
        let defaults = Limits::default();
        let limits = Limits {
            outbox: parse(&get, "PEER_QUEUE", defaults.outbox)?.max(1),
            outbox_bytes: parse(&get, "PEER_QUEUE_BYTES", defaults.outbox_bytes)?,
            msg_rate: parse(&get, "PEER_MSG_RATE", defaults.msg_rate)?,
            byte_rate: parse(&get, "PEER_BYTE_RATE", defaults.byte_rate)?,
            max_channels: parse(&get, "PEER_MAX_CHANNELS", defaults.max_channels)?.max(1),
        };
        let quic = QuicLimits {
            max_streams: parse(&get, "WT_MAX_STREAMS", 4u32)?,
            stream_window: parse(&get, "QUIC_STREAM_WINDOW", 256u32 << 10)?.max(1 << 10),
            connection_window: parse(&get, "QUIC_CONNECTION_WINDOW", 1u32 << 20)?.max(1 << 10),
        };
        let max_id_len = parse(&get, "MAX_ID_LEN", 256usize)?.max(1);

        let ms = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            parse(&get, name, default).map(Duration::from_millis)
        };
        let keepalive_interval =
            ms("KEEPALIVE_INTERVAL_MS", 10_000)?.max(Duration::from_millis(10));
        let idle_timeout = ms("IDLE_TIMEOUT_MS", 30_000)?;
        if idle_timeout <= keepalive_interval {
            return Err(invalid(
                "IDLE_TIMEOUT_MS",
                &idle_timeout.as_millis().to_string(),
                "must be longer than KEEPALIVE_INTERVAL_MS".into(),
            ));
        }

        let admin_token = get("ADMIN_TOKEN").map(|t| t.trim().to_owned());
        if let Some(token) = &admin_token {
            if token.len() < MIN_ADMIN_TOKEN {
                return Err(invalid(
                    "ADMIN_TOKEN",
                    "(hidden)",
                    format!("must have at least {MIN_ADMIN_TOKEN} characters"),
                ));
            }
            if get("METRICS_PORT").is_none() {
                warnings.push(
                    "ADMIN_TOKEN is set without METRICS_PORT: the console is served only on METRICS_PORT".into(),
                );
            }
        }

        Ok(Config {
            host,
            port,
            mesh_id,
            debug,
            tls_files,
            dev_cert_dir: get("DEV_CERT_DIR")
                .unwrap_or_else(|| ".prscd-dev".into())
                .into(),
            apps,
            app_sources,
            dev_app,
            max_message_size,
            max_id_len,
            limits,
            quic,
            metrics_token: get("METRICS_TOKEN"),
            admin_token,
            keepalive_interval,
            idle_timeout,
            drain_grace: ms("DRAIN_GRACE_MS", 2_000)?,
            drain_timeout: ms("DRAIN_TIMEOUT_MS", 5_000)?,
            presence_grace: ms("PRESENCE_GRACE_MS", PRESENCE_GRACE_DEFAULT_MS)?,
            pid_file: get("PID_FILE").unwrap_or_else(|| "prscd.pid".into()).into(),
            metrics_port: get("METRICS_PORT")
                .map(|v| v.trim().parse())
                .transpose()
                .map_err(|e: std::num::ParseIntError| invalid("METRICS_PORT", "", e.to_string()))?,
            reuse_port: flag("REUSE_PORT"),
            mesh,
            warnings,
        })
    }
}

fn invalid(name: &'static str, value: &str, why: String) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        why,
    }
}

fn parse<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e: T::Err| invalid(name, &v, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_are_a_dev_node() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8443);
        assert_eq!(c.host.to_string(), "127.0.0.1", "dev binds loopback");
        assert!(c.dev_app);
        assert_eq!(&*c.apps.for_public_key("dev").unwrap().id, "dev");
        assert_eq!(c.max_message_size, 1 << 20);
        assert!(c.tls_files.is_none());
        assert!(c.warnings.iter().any(|w| w.contains("MESH_ID")));
        assert!(c.admin_token.is_none() && !c.reuse_port);
        let c = config(&[("HOST", "0.0.0.0")]).unwrap();
        assert_eq!(c.host.to_string(), "0.0.0.0");
        let c = config(&[("APPS", "k:a"), ("MESH_ID", "eu")]).unwrap();
        assert_eq!(c.host.to_string(), "0.0.0.0");
    }

    #[test]
    fn apps_and_caps_from_env() {
        let c = config(&[
            ("APPS", "k1:app1"),
            ("APP_TOKEN_SECRETS", "app2:0123456789abcdef0123"),
            ("APP_MAX_CONNECTIONS_PER_IP", "7"),
            ("MESH_ID", "eu"),
        ])
        .unwrap();
        assert!(!c.dev_app);
        assert_eq!(c.apps.len(), 2);
        assert_eq!(c.apps.get("app2").unwrap().limits.max_connections_per_ip, 7);
        assert!(c.apps.for_public_key("dev").is_none());
        assert!(matches!(
            config(&[("APPS", "k1:a")]),
            Err(ConfigError::MeshIdRequired)
        ));
        assert!(config(&[("APPS", "k1:a,k1:b"), ("MESH_ID", "eu")]).is_err());
        assert!(config(&[("APP_TOKEN_SECRETS", "a:short"), ("MESH_ID", "eu")]).is_err());
        assert!(config(&[("APPS_FILE", "/nonexistent/apps")]).is_err());
    }

    #[test]
    fn zenoh_endpoints_are_comma_separated() {
        let c = config(&[
            ("ZENOH_CONNECT", "tcp/127.0.0.2:7447, tcp/127.0.0.3:7447"),
            ("ZENOH_LISTEN", "tcp/127.0.0.1:7447"),
            ("ZENOH_CONFIG", "mesh/p2p/node.json5"),
        ])
        .unwrap();
        assert_eq!(c.mesh.connect, ["tcp/127.0.0.2:7447", "tcp/127.0.0.3:7447"]);
        assert_eq!(c.mesh.listen, ["tcp/127.0.0.1:7447"]);
        assert_eq!(
            c.mesh.config_file.as_deref(),
            Some(Path::new("mesh/p2p/node.json5"))
        );
    }

    #[test]
    fn deprecated_names_warn_and_bad_values_fail() {
        let c = config(&[("YOMO_ZIPPER", "localhost:9000"), ("MESH_ID", "eu")]).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("YOMO_ZIPPER"));
        assert!(config(&[("PORT", "http")]).is_err());
        assert!(config(&[("CERT_FILE", "a.pem")]).is_err());
        assert!(config(&[("MAX_MESSAGE_SIZE", "0")]).is_err());
        assert!(config(&[("ADMIN_TOKEN", "short")]).is_err());
        let c = config(&[("ADMIN_TOKEN", "a-long-enough-admin-token")]).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("a-long-enough-admin-token"));
        assert!(c.warnings.iter().any(|w| w.contains("METRICS_PORT")));
        assert!(config(&[
            ("KEEPALIVE_INTERVAL_MS", "5000"),
            ("IDLE_TIMEOUT_MS", "100")
        ])
        .is_err());
    }
}
