//! Node configuration: the settings from the command line and the
//! environment (and `.env`, loaded by `main`), then checked into a [`Config`].
//!
//! [`Settings`] is the one place where each setting, its environment
//! variable and its default are written; `prscd --help` shows them and
//! `tests/settings.rs` holds `env.example` to them. The variable names are
//! the operator-facing contract: the original's `PORT`, `MESH_ID`, `DEBUG`,
//! `CERT_FILE`, `KEY_FILE`, plus the apps ([`crate::apps`]: `APPS`,
//! `APP_TOKEN_SECRETS`, `APPS_FILE`) and the caps of README's "Limits" table.
//! A variable set to blank counts as unset ([`unset_blank_variables`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory as _, Parser};

use crate::apps::{AppLimits, AppSources, Apps, AppsError};
use crate::hub::Limits;
use crate::mesh::MeshSettings;

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

/// Variables read by the tracing set-up ([`crate::telemetry`]) and the
/// OpenTelemetry SDK rather than by these settings; listed in `--help`.
const TRACING_HELP: &str = "\
Tracing and logs (read by the OpenTelemetry set-up, environment only):
  OTEL_EXPORTER_OTLP_ENDPOINT  OTLP/gRPC endpoint for traces (unset: tracing off)
  OTEL_TRACES_SAMPLER          sampler (default: parentbased_traceidratio)
  OTEL_TRACES_SAMPLER_ARG      its argument (default: 0.1)
  OTEL_SERVICE_NAME            service name (default: prscd); also OTEL_RESOURCE_ATTRIBUTES,
                               OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER=none
  REGION                       the traces' region attribute (default: MESH_ID)
  YOMO_TRACE_JAEGER_ENDPOINT   the original's Jaeger URL: mapped to OTLP on port 4317 (deprecated)
  RUST_LOG                     a tracing filter for the logs, over DEBUG

Every setting may also be given in a .env file in the working directory; a
variable set to blank counts as unset. env.example explains each one.";

/// Numbers, addresses and ports: blanks around the value are ignored.
fn trimmed<T>(v: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// On/off settings: `1`, `true`, `yes` or `on` (any case) is on, anything
/// else off.
fn flag(v: &str) -> Result<bool, Infallible> {
    Ok(matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    ))
}

/// Comma-separated zenoh endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(pub Vec<String>);

fn endpoints(v: &str) -> Result<Endpoints, Infallible> {
    Ok(Endpoints(
        v.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect(),
    ))
}

/// Every setting: a long flag, or the environment variable it names.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "prscd",
    version,
    about = "The Presencejs v2 backend: WebTransport and WebSocket presence, meshed over zenoh.",
    long_about = "The Presencejs v2 backend: WebTransport and WebSocket presence, meshed over zenoh.\n\n\
        Every setting is read from its environment variable (or a .env file) unless its flag \
        is given. With no setting at all, the node is a dev node on https://127.0.0.1:8443/v1 \
        with the app whose public key is `dev`.",
    after_help = "More: --help shows the tracing variables; env.example explains each setting.",
    after_long_help = TRACING_HELP
)]
pub struct Settings {
    // --- Listening
    /// Bind address for TCP (WebSocket over TLS, /health) and UDP
    /// (WebTransport). Default 0.0.0.0, or 127.0.0.1 in dev mode (no app
    /// configured).
    #[arg(long, env = "HOST", value_parser = trimmed::<IpAddr>, help_heading = "Listening")]
    pub host: Option<IpAddr>,
    /// One port for both transports and /health; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 8443, value_parser = trimmed::<u16>, help_heading = "Listening")]
    pub port: u16,
    /// Restarts without a gap: bind PORT (and METRICS_PORT) beside a running
    /// node started with REUSE_PORT too (1, true, yes or on).
    #[arg(long, env = "REUSE_PORT", default_value = "false", value_parser = flag, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, help_heading = "Listening")]
    pub reuse_port: bool,

    // --- Identity
    /// This node's name in the mesh (X-Prscd-MeshID, `mesh` in messages);
    /// unique per node, required with apps. Unset in dev mode: `dev`, with a
    /// warning.
    #[arg(long, env = "MESH_ID", help_heading = "Identity")]
    pub mesh_id: Option<String>,
    /// Debug logs for prscd (1, true, yes or on); RUST_LOG overrides it.
    #[arg(long, env = "DEBUG", default_value = "false", value_parser = flag, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, help_heading = "Identity")]
    pub debug: bool,

    // --- Mesh
    /// A zenoh JSON5 config file instead of the embedded default (peer mode,
    /// no multicast, 2 s lease, listening nowhere).
    #[arg(long, env = "ZENOH_CONFIG", help_heading = "Mesh (zenoh)")]
    pub zenoh_config: Option<PathBuf>,
    /// Comma-separated zenoh endpoints to listen on, over the file's.
    #[arg(long, env = "ZENOH_LISTEN", value_parser = endpoints, help_heading = "Mesh (zenoh)")]
    pub zenoh_listen: Option<Endpoints>,
    /// Comma-separated zenoh endpoints to connect to, over the file's.
    #[arg(long, env = "ZENOH_CONNECT", value_parser = endpoints, help_heading = "Mesh (zenoh)")]
    pub zenoh_connect: Option<Endpoints>,
    /// Start even though zenoh would accept links from beyond loopback
    /// without mTLS or user/password (1, true, yes or on; logs a warning).
    #[arg(long, env = "MESH_ALLOW_UNAUTHENTICATED", default_value = "false", value_parser = flag, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, help_heading = "Mesh (zenoh)")]
    pub mesh_allow_unauthenticated: bool,
    /// Publishes waiting for zenoh before new ones are dropped (mesh_backlog).
    #[arg(long, env = "MESH_BACKLOG", default_value_t = 10_000, value_parser = trimmed::<usize>, help_heading = "Mesh (zenoh)")]
    pub mesh_backlog: usize,
    /// Milliseconds after which a silent new remote member is announced
    /// locally (peer_online); 0 turns it off.
    #[arg(long, env = "MESH_PRESENCE_CHECK_MS", default_value_t = 1_000, value_parser = trimmed::<u64>, help_heading = "Mesh (zenoh)")]
    pub mesh_presence_check_ms: u64,
    /// Samples, rosters and roster queries from zenoh waiting for the bridge
    /// before new ones are dropped (mesh_inbound_full).
    #[arg(long, env = "MESH_INBOUND_QUEUE", default_value_t = 10_000, value_parser = trimmed::<usize>, help_heading = "Mesh (zenoh)")]
    pub mesh_inbound_queue: usize,

    // --- TLS
    /// PEM certificate chain (leaf first); with KEY_FILE. Both unset: a
    /// generated self-signed dev certificate.
    #[arg(long, env = "CERT_FILE", help_heading = "TLS")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of CERT_FILE.
    #[arg(long, env = "KEY_FILE", help_heading = "TLS")]
    pub key_file: Option<PathBuf>,
    /// Where the dev certificate is kept.
    #[arg(
        long,
        env = "DEV_CERT_DIR",
        default_value = ".prscd-dev",
        help_heading = "TLS"
    )]
    pub dev_cert_dir: PathBuf,

    // --- Apps
    /// `publickey:app_id` pairs, comma-separated.
    #[arg(long, env = "APPS", help_heading = "Apps")]
    pub apps: Option<String>,
    /// `app_id:secret` pairs: HS256 secrets (at least 16 bytes) of signed
    /// tokens.
    #[arg(
        long,
        env = "APP_TOKEN_SECRETS",
        hide_env_values = true,
        help_heading = "Apps"
    )]
    pub app_token_secrets: Option<String>,
    /// `app_id:key` pairs: bearer keys (at least 16 characters) of the
    /// presence API; the first signs the app's webhooks.
    #[arg(
        long,
        env = "APP_API_KEYS",
        hide_env_values = true,
        help_heading = "Apps"
    )]
    pub app_api_keys: Option<String>,
    /// `app_id:URL` pairs: where the app's join/leave webhooks go.
    #[arg(long, env = "APP_WEBHOOKS", help_heading = "Apps")]
    pub app_webhooks: Option<String>,
    /// A file of `publickey:app_id` pairs, or (named *.toml) the apps file;
    /// merged with the above, reloaded on SIGHUP.
    #[arg(long, env = "APPS_FILE", help_heading = "Apps")]
    pub apps_file: Option<PathBuf>,

    // --- Limits
    /// Connections of one app on this node (0: unlimited).
    #[arg(long, env = "APP_MAX_CONNECTIONS", default_value_t = AppLimits::default().max_connections, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub app_max_connections: usize,
    /// Connections of one app from one client IP (0: unlimited).
    #[arg(long, env = "APP_MAX_CONNECTIONS_PER_IP", default_value_t = AppLimits::default().max_connections_per_ip, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub app_max_connections_per_ip: usize,
    /// Channels of one app on this node (0: unlimited).
    #[arg(long, env = "APP_MAX_CHANNELS", default_value_t = AppLimits::default().max_channels, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub app_max_channels: usize,
    /// Members of one channel on this node (0: unlimited).
    #[arg(long, env = "CHANNEL_MAX_MEMBERS", default_value_t = AppLimits::default().max_members, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub channel_max_members: usize,
    /// Longest client id, in bytes (at least 1).
    #[arg(long, env = "MAX_ID_LEN", default_value_t = 256, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub max_id_len: usize,
    /// Largest message accepted, in bytes (1 to 16777216).
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = 1 << 20, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub max_message_size: usize,
    /// Outgoing queue per connection, in messages (at least 1).
    #[arg(long, env = "PEER_QUEUE", default_value_t = Limits::default().outbox, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub peer_queue: usize,
    /// Outgoing queue per connection, in bytes.
    #[arg(long, env = "PEER_QUEUE_BYTES", default_value_t = Limits::default().outbox_bytes, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub peer_queue_bytes: usize,
    /// Messages per second one connection may send (0: unlimited).
    #[arg(long, env = "PEER_MSG_RATE", default_value_t = Limits::default().msg_rate, value_parser = trimmed::<u32>, help_heading = "Limits")]
    pub peer_msg_rate: u32,
    /// Bytes per second one connection may send (0: unlimited).
    #[arg(long, env = "PEER_BYTE_RATE", default_value_t = Limits::default().byte_rate, value_parser = trimmed::<u32>, help_heading = "Limits")]
    pub peer_byte_rate: u32,
    /// Channels one connection may join (at least 1).
    #[arg(long, env = "PEER_MAX_CHANNELS", default_value_t = Limits::default().max_channels, value_parser = trimmed::<usize>, help_heading = "Limits")]
    pub peer_max_channels: usize,
    /// WebTransport: bidirectional streams open at once per session.
    #[arg(long, env = "WT_MAX_STREAMS", default_value_t = 4, value_parser = trimmed::<u32>, help_heading = "Limits")]
    pub wt_max_streams: u32,
    /// QUIC flow-control window per stream, in bytes (at least 1024).
    #[arg(long, env = "QUIC_STREAM_WINDOW", default_value_t = 256 << 10, value_parser = trimmed::<u32>, help_heading = "Limits")]
    pub quic_stream_window: u32,
    /// QUIC flow-control window per session, in bytes (at least 1024).
    #[arg(long, env = "QUIC_CONNECTION_WINDOW", default_value_t = 1 << 20, value_parser = trimmed::<u32>, help_heading = "Limits")]
    pub quic_connection_window: u32,

    // --- Keep-alive, presence, shutdown
    /// WebSocket Ping and QUIC keep-alive interval, in ms (at least 10).
    #[arg(long, env = "KEEPALIVE_INTERVAL_MS", default_value_t = 10_000, value_parser = trimmed::<u64>, help_heading = "Timing")]
    pub keepalive_interval_ms: u64,
    /// Silence after which a connection is closed, in ms (longer than
    /// KEEPALIVE_INTERVAL_MS).
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 30_000, value_parser = trimmed::<u64>, help_heading = "Timing")]
    pub idle_timeout_ms: u64,
    /// How long a user whose last connection in a channel went stays a
    /// member, in ms, so that a reload is no leave plus join (0: at once).
    #[arg(long, env = "PRESENCE_GRACE_MS", default_value_t = PRESENCE_GRACE_DEFAULT_MS, value_parser = trimmed::<u64>, help_heading = "Timing")]
    pub presence_grace_ms: u64,
    /// On SIGTERM: time serving with /health 503 before closing, in ms.
    #[arg(long, env = "DRAIN_GRACE_MS", default_value_t = 2_000, value_parser = trimmed::<u64>, help_heading = "Timing")]
    pub drain_grace_ms: u64,
    /// On SIGTERM: longest wait for connections to close, in ms.
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 5_000, value_parser = trimmed::<u64>, help_heading = "Timing")]
    pub drain_timeout_ms: u64,
    /// Where the pid is written (removed on exit).
    #[arg(
        long,
        env = "PID_FILE",
        default_value = "prscd.pid",
        help_heading = "Timing"
    )]
    pub pid_file: PathBuf,

    // --- Observability
    /// Plain-HTTP port for /metrics, /health and the console, on HOST; keep
    /// it private (unset: off).
    #[arg(long, env = "METRICS_PORT", value_parser = trimmed::<u16>, help_heading = "Observability")]
    pub metrics_port: Option<u16>,
    /// Bearer token that opens /metrics on the public TLS port (unset: 404
    /// there).
    #[arg(
        long,
        env = "METRICS_TOKEN",
        hide_env_values = true,
        help_heading = "Observability"
    )]
    pub metrics_token: Option<String>,
    /// Bearer token (at least 16 characters) of the console and the live
    /// profiles on METRICS_PORT (unset: 404).
    #[arg(
        long,
        env = "ADMIN_TOKEN",
        hide_env_values = true,
        help_heading = "Observability"
    )]
    pub admin_token: Option<String>,

    // --- Deprecated: the original's YoMo mesh; accepted and ignored with a warning.
    /// Ignored: the mesh is zenoh now.
    #[arg(
        long,
        env = "YOMO_ZIPPER",
        help_heading = "Deprecated (ignored with a warning)"
    )]
    pub yomo_zipper: Option<String>,
    /// Ignored: the mesh is zenoh now.
    #[arg(
        long,
        env = "YOMO_SNDR_NAME",
        help_heading = "Deprecated (ignored with a warning)"
    )]
    pub yomo_sndr_name: Option<String>,
    /// Ignored: the mesh is zenoh now.
    #[arg(
        long,
        env = "YOMO_RCVR_NAME",
        help_heading = "Deprecated (ignored with a warning)"
    )]
    pub yomo_rcvr_name: Option<String>,
    /// Ignored: the mesh is zenoh now.
    #[arg(
        long,
        env = "YOMO_CREDENTIAL",
        hide_env_values = true,
        help_heading = "Deprecated (ignored with a warning)"
    )]
    pub yomo_credential: Option<String>,
    /// Ignored: the mesh is zenoh now.
    #[arg(
        long,
        env = "WITH_YOMO_ZIPPER",
        help_heading = "Deprecated (ignored with a warning)"
    )]
    pub with_yomo_zipper: Option<String>,
    /// Ignored: the mesh is zenoh now.
    #[arg(
        long,
        env = "DOMAIN",
        help_heading = "Deprecated (ignored with a warning)"
    )]
    pub domain: Option<String>,
}

/// The environment variables of [`Settings`].
pub fn variables() -> Vec<String> {
    Settings::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// Unsets each settings variable whose value is blank (`PORT=` in an env
/// file), so that it means "unset" as it always has. Call before the
/// settings are parsed, while the process has one thread.
pub fn unset_blank_variables() {
    for name in variables() {
        if std::env::var_os(&name).is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
            std::env::remove_var(&name);
        }
    }
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
    /// Checks the settings and loads the apps they name.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();

        let tls_files = match (s.cert_file, s.key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::HalfPair("CERT_FILE", "KEY_FILE")),
            (None, Some(_)) => return Err(ConfigError::HalfPair("KEY_FILE", "CERT_FILE")),
        };

        let app_limits = AppLimits {
            max_connections: s.app_max_connections,
            max_connections_per_ip: s.app_max_connections_per_ip,
            max_channels: s.app_max_channels,
            max_members: s.channel_max_members,
        };
        let app_sources = AppSources {
            pairs: s.apps,
            token_secrets: s.app_token_secrets,
            api_keys: s.app_api_keys,
            webhooks: s.app_webhooks,
            file: s.apps_file,
            limits: app_limits.clone(),
        };
        let (apps, dev_app) = match app_sources.load()? {
            Some(apps) => (apps, false),
            None => (Apps::dev(app_limits), true),
        };
        // A dev node listens on loopback unless told otherwise.
        let host = s.host.unwrap_or(if dev_app {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0, 0, 0, 0])
        });
        let mesh_id = match s.mesh_id {
            Some(id) => id,
            None if dev_app => {
                warnings.push(
                    "MESH_ID is not set: using `dev` (set one per node before meshing)".into(),
                );
                "dev".into()
            }
            None => return Err(ConfigError::MeshIdRequired),
        };
        let mesh = MeshSettings {
            config_file: s.zenoh_config,
            listen: s.zenoh_listen.unwrap_or_default().0,
            connect: s.zenoh_connect.unwrap_or_default().0,
            max_backlog: s.mesh_backlog,
            presence_check: Some(s.mesh_presence_check_ms)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            inbound_queue: s.mesh_inbound_queue,
            allow_unauthenticated: s.mesh_allow_unauthenticated,
        };

        for (name, value) in [
            ("YOMO_ZIPPER", &s.yomo_zipper),
            ("YOMO_SNDR_NAME", &s.yomo_sndr_name),
            ("YOMO_RCVR_NAME", &s.yomo_rcvr_name),
            ("YOMO_CREDENTIAL", &s.yomo_credential),
            ("WITH_YOMO_ZIPPER", &s.with_yomo_zipper),
            ("DOMAIN", &s.domain),
        ] {
            if value.is_some() {
                warnings.push(format!(
                    "{name} is deprecated and ignored: the mesh is zenoh now"
                ));
            }
        }

        let max_message_size = s.max_message_size;
        if max_message_size == 0 || max_message_size > MAX_MESSAGE_SIZE_CAP {
            return Err(invalid(
                "MAX_MESSAGE_SIZE",
                &max_message_size.to_string(),
                format!("must be 1..={MAX_MESSAGE_SIZE_CAP}"),
            ));
        }
        let limits = Limits {
            outbox: s.peer_queue.max(1),
            outbox_bytes: s.peer_queue_bytes,
            msg_rate: s.peer_msg_rate,
            byte_rate: s.peer_byte_rate,
            max_channels: s.peer_max_channels.max(1),
        };
        let quic = QuicLimits {
            max_streams: s.wt_max_streams,
            stream_window: s.quic_stream_window.max(1 << 10),
            connection_window: s.quic_connection_window.max(1 << 10),
        };

        let keepalive_interval =
            Duration::from_millis(s.keepalive_interval_ms).max(Duration::from_millis(10));
        let idle_timeout = Duration::from_millis(s.idle_timeout_ms);
        if idle_timeout <= keepalive_interval {
            return Err(invalid(
                "IDLE_TIMEOUT_MS",
                &s.idle_timeout_ms.to_string(),
                "must be longer than KEEPALIVE_INTERVAL_MS".into(),
            ));
        }

        let admin_token = s.admin_token.map(|t| t.trim().to_owned());
        if let Some(token) = &admin_token {
            if token.len() < MIN_ADMIN_TOKEN {
                return Err(invalid(
                    "ADMIN_TOKEN",
                    "(hidden)",
                    format!("must have at least {MIN_ADMIN_TOKEN} characters"),
                ));
            }
            if s.metrics_port.is_none() {
                warnings.push(
                    "ADMIN_TOKEN is set without METRICS_PORT: the console is served only on METRICS_PORT".into(),
                );
            }
        }

        Ok(Config {
            host,
            port: s.port,
            mesh_id,
            debug: s.debug,
            tls_files,
            dev_cert_dir: s.dev_cert_dir,
            apps,
            app_sources,
            dev_app,
            max_message_size,
            max_id_len: s.max_id_len.max(1),
            limits,
            quic,
            metrics_token: s.metrics_token,
            admin_token,
            keepalive_interval,
            idle_timeout,
            drain_grace: Duration::from_millis(s.drain_grace_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            presence_grace: Duration::from_millis(s.presence_grace_ms),
            pid_file: s.pid_file,
            metrics_port: s.metrics_port,
            reuse_port: s.reuse_port,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches as _;
    use std::path::Path;

    /// The settings `vars` give, as if they were the environment: each
    /// becomes its long flag, and the process's own environment is not read.
    fn settings(vars: &[(&str, &str)]) -> Result<Settings, clap::Error> {
        let cmd = Settings::command();
        let mut argv = vec!["prscd".to_owned()];
        for (name, value) in vars {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == *name))
                .unwrap_or_else(|| panic!("{name} is not a setting"));
            argv.push(format!("--{}={value}", arg.get_long().expect("long flag")));
        }
        let cmd = cmd.mut_args(|a| a.env(None));
        Settings::from_arg_matches(&cmd.try_get_matches_from(argv)?)
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        let settings = settings(vars).map_err(|e| e.to_string())?;
        Config::from_settings(settings).map_err(|e| e.to_string())
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
        assert!(config(&[("APPS", "k1:a")])
            .unwrap_err()
            .contains("MESH_ID is required"));
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

    #[test]
    fn numbers_are_trimmed_and_flags_read_as_before() {
        let c = config(&[
            ("PORT", " 9000 "),
            ("METRICS_PORT", "9464 "),
            ("HOST", " ::1"),
        ])
        .unwrap();
        assert_eq!((c.port, c.metrics_port), (9000, Some(9464)));
        assert_eq!(c.host.to_string(), "::1");
        for on in ["1", "true", "TRUE", "yes", "On"] {
            let c = config(&[("DEBUG", on), ("REUSE_PORT", on)]).unwrap();
            assert!(c.debug && c.reuse_port, "{on}");
        }
        for off in ["0", "false", "no", "off", "banana"] {
            let c = config(&[("DEBUG", off), ("MESH_ALLOW_UNAUTHENTICATED", off)]).unwrap();
            assert!(!c.debug && !c.mesh.allow_unauthenticated, "{off}");
        }
        // A bare flag on the command line is on.
        let on = Settings::try_parse_from(["prscd", "--debug", "--reuse-port"]).unwrap();
        assert!(on.debug && on.reuse_port);
    }

    #[test]
    fn durations_are_ms_and_zero_turns_the_presence_check_off() {
        let c = config(&[
            ("KEEPALIVE_INTERVAL_MS", "1"),
            ("IDLE_TIMEOUT_MS", "11"),
            ("PRESENCE_GRACE_MS", "0"),
            ("MESH_PRESENCE_CHECK_MS", "0"),
        ])
        .unwrap();
        assert_eq!(
            c.keepalive_interval,
            Duration::from_millis(10),
            "at least 10 ms"
        );
        assert_eq!(c.idle_timeout, Duration::from_millis(11));
        assert_eq!(c.presence_grace, Duration::ZERO);
        assert_eq!(c.mesh.presence_check, None);
        let c = config(&[]).unwrap();
        assert_eq!(c.mesh.presence_check, Some(Duration::from_secs(1)));
        assert_eq!(
            c.presence_grace,
            Duration::from_millis(PRESENCE_GRACE_DEFAULT_MS)
        );
        assert_eq!(
            (c.drain_grace, c.drain_timeout, c.idle_timeout),
            (
                Duration::from_secs(2),
                Duration::from_secs(5),
                Duration::from_secs(30)
            )
        );
        let c = config(&[
            ("PEER_QUEUE", "0"),
            ("QUIC_STREAM_WINDOW", "1"),
            ("MAX_ID_LEN", "0"),
        ])
        .unwrap();
        assert_eq!(
            (c.limits.outbox, c.quic.stream_window, c.max_id_len),
            (1, 1024, 1)
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("PORT", "http"),
            ("METRICS_PORT", "70000"),
            ("HOST", "localhost"),
            ("PEER_MSG_RATE", "-1"),
            ("IDLE_TIMEOUT_MS", "30s"),
        ] {
            let e = config(&[(name, value)]).unwrap_err();
            assert!(e.contains(name) && e.contains(value), "{name}: {e}");
        }
        let e = config(&[("MAX_MESSAGE_SIZE", "0")]).unwrap_err();
        assert!(e.contains("MAX_MESSAGE_SIZE"), "{e}");
    }
}
