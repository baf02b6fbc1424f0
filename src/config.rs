//! Node configuration from the environment (and `.env`, loaded by `main`).
//!
//! Names are the operator-facing contract (see `env.example`): the
//! original's `PORT`, `MESH_ID`, `DEBUG`, `CERT_FILE`, `KEY_FILE`, plus `APPS`
//! / `APPS_FILE` for the public key → app table and a few limits. Reading is
//! separated from the process environment (`Config::from_lookup`) so that it
//! is unit-tested without touching global state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// The dev app's public key, used when no app table is configured.
pub const DEV_PUBLIC_KEY: &str = "dev";
pub const DEV_APP_ID: &str = "dev";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("APPS_FILE {path}: {source}")]
    AppsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is set without {1}: give both or neither")]
    HalfPair(&'static str, &'static str),
    #[error("MESH_ID is required when APPS or APPS_FILE is set (it names this node in the mesh)")]
    MeshIdRequired,
}

/// Public key → app id. Apps are isolated from each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppTable {
    keys: HashMap<String, String>,
}

impl AppTable {
    /// Parses `publickey:app_id` pairs separated by commas or newlines;
    /// blank lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<AppTable, String> {
        let mut keys = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            for pair in line.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (key, app) = pair
                    .split_once(':')
                    .map(|(k, a)| (k.trim(), a.trim()))
                    .filter(|(k, a)| !k.is_empty() && !a.is_empty())
                    .ok_or_else(|| format!("`{pair}` is not publickey:app_id"))?;
                if let Some(previous) = keys.insert(key.to_owned(), app.to_owned()) {
                    if previous != app {
                        return Err(format!(
                            "public key `{key}` maps to both `{previous}` and `{app}`"
                        ));
                    }
                }
            }
        }
        Ok(AppTable { keys })
    }

    pub fn dev() -> AppTable {
        AppTable {
            keys: HashMap::from([(DEV_PUBLIC_KEY.to_owned(), DEV_APP_ID.to_owned())]),
        }
    }

    pub fn app_for(&self, public_key: &str) -> Option<&str> {
        self.keys.get(public_key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn merge(&mut self, other: AppTable) -> Result<(), String> {
        for (key, app) in other.keys {
            match self.keys.get(&key) {
                Some(previous) if *previous != app => {
                    return Err(format!(
                        "public key `{key}` maps to both `{previous}` and `{app}`"
                    ))
                }
                _ => {
                    self.keys.insert(key, app);
                }
            }
        }
        Ok(())
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
    pub apps: AppTable,
    /// True when no app table was given and the dev app is in use.
    pub dev_app: bool,
    pub max_message_size: usize,
    pub limits: Limits,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_grace: Duration,
    pub drain_timeout: Duration,
    pub pid_file: PathBuf,
    /// Plain-HTTP port for `/metrics` and `/health`, besides the TLS port.
    pub metrics_port: Option<u16>,
    pub mesh: MeshSettings,
    /// One line each, printed by `main` once logging is up.
    pub warnings: Vec<String>,
}

/// Upper bound for MAX_MESSAGE_SIZE.
const MAX_MESSAGE_SIZE_CAP: usize = 16 << 20;

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();

        let host = parse(&get, "HOST", "0.0.0.0".parse().expect("literal"))?;
        let port = parse(&get, "PORT", 8443u16)?;
        let debug = get("DEBUG").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });

        let tls_files = match (get("CERT_FILE"), get("KEY_FILE")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::HalfPair("CERT_FILE", "KEY_FILE")),
            (None, Some(_)) => return Err(ConfigError::HalfPair("KEY_FILE", "CERT_FILE")),
        };

        let mut apps = AppTable::default();
        if let Some(text) = get("APPS") {
            let table = AppTable::parse(&text).map_err(|why| invalid("APPS", &text, why))?;
            apps.merge(table)
                .map_err(|why| invalid("APPS", &text, why))?;
        }
        if let Some(path) = get("APPS_FILE") {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::AppsFile {
                path: path.clone(),
                source,
            })?;
            let table = AppTable::parse(&text).map_err(|why| invalid("APPS_FILE", &path, why))?;
            apps.merge(table)
                .map_err(|why| invalid("APPS_FILE", &path, why))?;
        }
        let dev_app = apps.is_empty();
        if dev_app {
            apps = AppTable::dev();
        }
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
            msg_rate: parse(&get, "PEER_MSG_RATE", defaults.msg_rate)?,
            max_channels: parse(&get, "PEER_MAX_CHANNELS", defaults.max_channels)?.max(1),
        };

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
            dev_app,
            max_message_size,
            limits,
            keepalive_interval,
            idle_timeout,
            drain_grace: ms("DRAIN_GRACE_MS", 2_000)?,
            drain_timeout: ms("DRAIN_TIMEOUT_MS", 5_000)?,
            pid_file: get("PID_FILE").unwrap_or_else(|| "prscd.pid".into()).into(),
            metrics_port: get("METRICS_PORT")
                .map(|v| v.trim().parse())
                .transpose()
                .map_err(|e: std::num::ParseIntError| invalid("METRICS_PORT", "", e.to_string()))?,
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
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert!(c.dev_app);
        assert_eq!(c.apps.app_for("dev"), Some("dev"));
        assert_eq!(c.max_message_size, 1 << 20);
        assert!(c.tls_files.is_none());
        assert!(c.warnings.iter().any(|w| w.contains("MESH_ID")));
    }

    #[test]
    fn app_table_from_env_and_file() {
        let dir = std::env::temp_dir().join(format!("prscd-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("apps");
        std::fs::write(&file, "# keys\nk2:app2\n\nk3 : app3, k4:app2 # trailing\n").unwrap();
        let c = config(&[
            ("APPS", "k1:app1,k2:app2"),
            ("APPS_FILE", file.to_str().unwrap()),
            ("MESH_ID", "eu"),
        ])
        .unwrap();
        assert!(!c.dev_app);
        assert_eq!(c.apps.len(), 4);
        assert_eq!(c.apps.app_for("k3"), Some("app3"));
        assert_eq!(c.apps.app_for("dev"), None);
        assert!(matches!(
            config(&[("APPS", "k1:a")]),
            Err(ConfigError::MeshIdRequired)
        ));
        assert!(config(&[("APPS", "k1:a,k1:b")]).is_err());
        assert!(config(&[("APPS", "nocolon")]).is_err());
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
        assert!(config(&[
            ("KEEPALIVE_INTERVAL_MS", "5000"),
            ("IDLE_TIMEOUT_MS", "100")
        ])
        .is_err());
    }
}
