//! Apps: who may connect to which app, with which credentials, from which
//! origins, and within which limits.
//!
//! An app is known by its id. A client names it either with a plain public
//! key (`APPS`, the original's scheme) or with a signed token whose `app`
//! claim names it ([`crate::auth`]). The table is built from three sources,
//! merged: `APPS` (`publickey:app_id` pairs), `APP_TOKEN_SECRETS`
//! (`app_id:secret` pairs) and `APPS_FILE`, either the same pairs one per
//! line or, when its name ends in `.toml`, the structured file documented in
//! README ("Apps file"). It is rebuilt from the same sources on SIGHUP.
//!
//! An app's API keys (`APP_API_KEYS`, `api_keys` in the file) open its
//! presence API to backends ([`crate::api`]) and sign its webhooks
//! (`APP_WEBHOOKS`, `webhook` in the file; [`crate::webhooks`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::auth::TokenKeys;

/// The dev app's public key, used when no app is configured.
pub const DEV_PUBLIC_KEY: &str = "dev";
pub const DEV_APP_ID: &str = "dev";

#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("{source_name}: {why}")]
    Invalid { source_name: String, why: String },
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Per-app caps. 0 means unlimited for every field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppLimits {
    /// Open connections of the app on this node.
    pub max_connections: usize,
    /// Open connections of the app on this node from one client IP.
    pub max_connections_per_ip: usize,
    /// Channels of the app on this node.
    pub max_channels: usize,
    /// Members of one channel on this node.
    pub max_members: usize,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            max_channels: 100_000,
            max_members: 10_000,
        }
    }
}

/// One app's settings.
#[derive(Debug)]
pub struct App {
    pub id: Arc<str>,
    /// Plain public keys are refused; only signed tokens connect.
    pub tokens_only: bool,
    pub tokens: TokenKeys,
    /// Allowed `Origin`s (`scheme://host[:port]`, or `*`); empty allows any.
    pub origins: Vec<String>,
    pub limits: AppLimits,
    /// Bearer keys of the app's presence API; none: the API refuses all.
    pub api_keys: Vec<String>,
    /// Where its join/leave webhooks go, signed with its first API key.
    pub webhook: Option<String>,
}

/// Shortest API key accepted: it is a bearer secret.
pub const MIN_API_KEY_LEN: usize = 16;

impl App {
    pub fn new(id: &str, limits: AppLimits) -> App {
        App {
            id: id.into(),
            tokens_only: false,
            tokens: TokenKeys::default(),
            origins: Vec::new(),
            limits,
            api_keys: Vec::new(),
            webhook: None,
        }
    }

    /// Whether `given` is one of the app's API keys, compared in constant
    /// time (per key) so that a guess learns nothing from the timing.
    pub fn api_key_matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.api_keys.iter().fold(false, |ok, key| {
            ok | bool::from(key.as_bytes().ct_eq(given.as_bytes()))
        })
    }

    fn set_webhook(&mut self, url: &str) -> Result<(), String> {
        crate::webhooks::Target::parse(url).map_err(|e| e.to_string())?;
        self.webhook = Some(url.to_owned());
        Ok(())
    }

    fn add_api_key(&mut self, key: &str) -> Result<(), String> {
        if key.len() < MIN_API_KEY_LEN {
            return Err(format!(
                "an API key must have at least {MIN_API_KEY_LEN} characters"
            ));
        }
        self.api_keys.push(key.to_owned());
        Ok(())
    }

    /// Whether a handshake with this `Origin` header (if any) may connect.
    /// A request without one is not from a browser page, which is what the
    /// list guards against (any other client can send whatever it likes).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        self.origins.is_empty()
            || self
                .origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }
}

/// Every app this node serves.
#[derive(Debug, Default, Clone)]
pub struct Apps {
    apps: HashMap<String, Arc<App>>,
    /// Plain public key → app id.
    keys: HashMap<String, String>,
}

impl Apps {
    pub fn get(&self, app: &str) -> Option<&Arc<App>> {
        self.apps.get(app)
    }

    /// The app a plain public key names.
    pub fn for_public_key(&self, key: &str) -> Option<&Arc<App>> {
        self.keys.get(key).and_then(|id| self.apps.get(id))
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.values()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The dev app: public key `dev`, default limits.
    pub fn dev(limits: AppLimits) -> Apps {
        let mut apps = Apps::default();
        apps.add_key(DEV_PUBLIC_KEY, DEV_APP_ID, &limits, "dev")
            .expect("one key");
        apps
    }

    fn app_mut(&mut self, id: &str, limits: &AppLimits) -> &mut App {
        let app = self
            .apps
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(App::new(id, limits.clone())));
        Arc::get_mut(app).expect("not shared while the table is built")
    }

    fn add_key(
        &mut self,
        key: &str,
        app: &str,
        limits: &AppLimits,
        source: &str,
    ) -> Result<(), AppsError> {
        if let Some(previous) = self.keys.get(key) {
            if previous != app {
                return Err(invalid(
                    source,
                    format!("public key `{key}` maps to both `{previous}` and `{app}`"),
                ));
            }
        }
        self.keys.insert(key.to_owned(), app.to_owned());
        self.app_mut(app, limits);
        Ok(())
    }
}

/// Where the app table comes from, kept so that SIGHUP can build it again.
#[derive(Debug, Clone, Default)]
pub struct AppSources {
    /// `APPS`: `publickey:app_id` pairs.
    pub pairs: Option<String>,
    /// `APP_TOKEN_SECRETS`: `app_id:secret` pairs (HS256).
    pub token_secrets: Option<String>,
    /// `APP_API_KEYS`: `app_id:key` pairs.
    pub api_keys: Option<String>,
    /// `APP_WEBHOOKS`: `app_id:URL` pairs.
    pub webhooks: Option<String>,
    /// `APPS_FILE`.
    pub file: Option<PathBuf>,
    /// Limits of apps that don't set their own.
    pub limits: AppLimits,
}

impl AppSources {
    /// Builds the table. `Ok(None)` when no source names any app (dev mode).
    pub fn load(&self) -> Result<Option<Apps>, AppsError> {
        let mut apps = Apps::default();
        if let Some(text) = &self.pairs {
            for (key, app) in pairs(text, "APPS")? {
                apps.add_key(&key, &app, &self.limits, "APPS")?;
            }
        }
        if let Some(text) = &self.token_secrets {
            for (app, secret) in pairs(text, "APP_TOKEN_SECRETS")? {
                apps.app_mut(&app, &self.limits)
                    .tokens
                    .add_secret(&secret)
                    .map_err(|why| invalid("APP_TOKEN_SECRETS", why))?;
            }
        }
        if let Some(text) = &self.api_keys {
            for (app, key) in pairs(text, "APP_API_KEYS")? {
                apps.app_mut(&app, &self.limits)
                    .add_api_key(&key)
                    .map_err(|why| invalid("APP_API_KEYS", why))?;
            }
        }
        if let Some(text) = &self.webhooks {
            for (app, url) in pairs(text, "APP_WEBHOOKS")? {
                apps.app_mut(&app, &self.limits)
                    .set_webhook(&url)
                    .map_err(|why| invalid("APP_WEBHOOKS", why))?;
            }
        }
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| AppsError::Read {
                path: path.clone(),
                source,
            })?;
            let name = format!("APPS_FILE {}", path.display());
            if path.extension().is_some_and(|e| e == "toml") {
                let base = path.parent().unwrap_or(Path::new("."));
                load_toml(&mut apps, &text, base, &self.limits, &name)?;
            } else {
                for (key, app) in pairs(&text, &name)? {
                    apps.add_key(&key, &app, &self.limits, &name)?;
                }
            }
        }
        if let Some(app) = apps
            .apps
            .values()
            .find(|a| a.webhook.is_some() && a.api_keys.is_empty())
        {
            let why = format!(
                "app `{}` has a webhook but no API key to sign it with (APP_API_KEYS or api_keys)",
                app.id
            );
            return Err(invalid("APP_WEBHOOKS", why));
        }
        Ok((!apps.is_empty()).then_some(apps))
    }
}

/// The structured apps file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    #[serde(default)]
    apps: HashMap<String, AppEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    #[serde(default)]
    public_keys: Vec<String>,
    #[serde(default)]
    tokens_only: bool,
    /// HS256 secrets.
    #[serde(default)]
    token_secrets: Vec<String>,
    /// ES256 or EdDSA public keys: PEM text, or a path to a PEM file.
    #[serde(default)]
    token_public_keys: Vec<String>,
    /// A JWKS file (`{"keys": [...]}`) of EC P-256 and Ed25519 public keys.
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    limits: Option<PartialLimits>,
    /// Bearer keys of the presence API.
    #[serde(default)]
    api_keys: Vec<String>,
    /// Where join/leave webhooks go.
    #[serde(default)]
    webhook: Option<String>,
}

/// Limits in the file: each field falls back to the node's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLimits {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_channels: Option<usize>,
    max_members: Option<usize>,
}

fn load_toml(
    apps: &mut Apps,
    text: &str,
    base: &Path,
    defaults: &AppLimits,
    name: &str,
) -> Result<(), AppsError> {
    let file: AppsFile = toml::from_str(text).map_err(|e| invalid(name, e.to_string()))?;
    for (id, entry) in file.apps {
        if id.is_empty() {
            return Err(invalid(name, "an app id is empty".into()));
        }
        for key in &entry.public_keys {
            apps.add_key(key, &id, defaults, name)?;
        }
        let app = apps.app_mut(&id, defaults);
        let at = |why: String| invalid(name, format!("app `{id}`: {why}"));
        app.tokens_only = entry.tokens_only;
        for secret in &entry.token_secrets {
            app.tokens.add_secret(secret).map_err(at)?;
        }
        for key in &entry.token_public_keys {
            let pem = if key.contains("-----BEGIN") {
                key.clone()
            } else {
                let path = base.join(key);
                std::fs::read_to_string(&path)
                    .map_err(|e| at(format!("{}: {e}", path.display())))?
            };
            app.tokens.add_pem(&pem).map_err(at)?;
        }
        if let Some(jwks) = &entry.jwks_file {
            let path = base.join(jwks);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| at(format!("{}: {e}", path.display())))?;
            app.tokens.add_jwks(&text).map_err(at)?;
        }
        for origin in &entry.origins {
            if origin != "*" && !origin.contains("://") {
                return Err(at(format!(
                    "origin `{origin}` is not scheme://host[:port] or *"
                )));
            }
            app.origins.push(origin.trim_end_matches('/').to_owned());
        }
        if let Some(l) = entry.limits {
            let d = defaults;
            app.limits = AppLimits {
                max_connections: l.max_connections.unwrap_or(d.max_connections),
                max_connections_per_ip: l
                    .max_connections_per_ip
                    .unwrap_or(d.max_connections_per_ip),
                max_channels: l.max_channels.unwrap_or(d.max_channels),
                max_members: l.max_members.unwrap_or(d.max_members),
            };
        }
        for key in &entry.api_keys {
            app.add_api_key(key).map_err(at)?;
        }
        if let Some(url) = &entry.webhook {
            app.set_webhook(url).map_err(at)?;
        }
        if app.tokens_only && app.tokens.is_empty() {
            return Err(at("tokens_only is set but it has no token key".into()));
        }
    }
    Ok(())
}

/// `a:b` pairs separated by commas or newlines; blank lines and `#`
/// comments are ignored.
fn pairs(text: &str, source: &str) -> Result<Vec<(String, String)>, AppsError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for pair in line.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = pair
                .split_once(':')
                .map(|(a, b)| (a.trim(), b.trim()))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| invalid(source, format!("`{pair}` is not a `name:value` pair")))?;
            out.push((a.to_owned(), b.to_owned()));
        }
    }
    Ok(out)
}

fn invalid(source: &str, why: String) -> AppsError {
    AppsError::Invalid {
        source_name: source.to_owned(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(pairs: &str) -> AppSources {
        AppSources {
            pairs: Some(pairs.into()),
            ..AppSources::default()
        }
    }

    #[test]
    fn pairs_from_env_and_file() {
        let dir = std::env::temp_dir().join(format!("prscd-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("apps");
        std::fs::write(&file, "# keys\nk2:app2\n\nk3 : app3, k4:app2 # trailing\n").unwrap();
        let apps = AppSources {
            file: Some(file),
            ..sources("k1:app1,k2:app2")
        }
        .load()
        .unwrap()
        .unwrap();
        assert_eq!(apps.len(), 3);
        assert_eq!(&*apps.for_public_key("k3").unwrap().id, "app3");
        assert_eq!(&*apps.for_public_key("k4").unwrap().id, "app2");
        assert!(apps.for_public_key("dev").is_none());
        assert!(sources("k1:a,k1:b").load().is_err());
        assert!(sources("nocolon").load().is_err());
        assert!(AppSources::default().load().unwrap().is_none());
    }

    #[test]
    fn toml_file_with_keys_origins_and_limits() {
        let dir = std::env::temp_dir().join(format!("prscd-apps-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("apps.toml");
        std::fs::write(
            &file,
            r#"
[apps.chat]
public_keys = ["pk-chat"]
token_secrets = ["s3cret-s3cret-s3cret"]
origins = ["https://chat.example.com/"]
limits = { max_members = 50 }

[apps.docs]
tokens_only = true
token_secrets = ["other-other-other-other"]
api_keys = ["docs-api-key-from-the-file"]
"#,
        )
        .unwrap();
        let apps = AppSources {
            file: Some(file.clone()),
            token_secrets: Some("docs:yet-another-long-secret".into()),
            api_keys: Some("docs:docs-api-key-from-env,chat:chat-api-key-0123456".into()),
            ..AppSources::default()
        }
        .load()
        .unwrap()
        .unwrap();
        let chat = apps.for_public_key("pk-chat").unwrap();
        assert_eq!(chat.limits.max_members, 50);
        assert_eq!(chat.limits.max_channels, AppLimits::default().max_channels);
        assert!(chat.origin_allowed(Some("https://chat.example.com")));
        assert!(chat.origin_allowed(None));
        assert!(!chat.origin_allowed(Some("https://evil.example")));
        let docs = apps.get("docs").unwrap();
        assert!(docs.tokens_only);
        assert_eq!(docs.tokens.len(), 2);
        // API keys from both sources; one app's key is not another's.
        assert!(docs.api_key_matches("docs-api-key-from-env"));
        assert!(docs.api_key_matches("docs-api-key-from-the-file"));
        assert!(!docs.api_key_matches("chat-api-key-0123456"));
        assert!(!docs.api_key_matches(""));
        assert!(chat.api_key_matches("chat-api-key-0123456"));
        let short = AppSources {
            api_keys: Some("chat:short".into()),
            ..sources("k:chat")
        };
        assert!(short
            .load()
            .unwrap_err()
            .to_string()
            .contains("APP_API_KEYS"));
        let hooked = AppSources {
            api_keys: Some("chat:chat-api-key-0123456".into()),
            webhooks: Some("chat:http://127.0.0.1:9/hook".into()),
            ..sources("k:chat,k2:other")
        }
        .load()
        .unwrap()
        .unwrap();
        assert_eq!(
            hooked.get("chat").unwrap().webhook.as_deref(),
            Some("http://127.0.0.1:9/hook")
        );
        let unsigned = AppSources {
            webhooks: Some("chat:https://hooks.example.com/x".into()),
            ..sources("k:chat")
        };
        assert!(unsigned.load().unwrap_err().to_string().contains("API key"));
        let bad_url = AppSources {
            api_keys: Some("chat:chat-api-key-0123456".into()),
            webhooks: Some("chat:ftp://x".into()),
            ..sources("k:chat")
        };
        assert!(bad_url.load().is_err());

        std::fs::write(&file, "[apps.x]\nunknown_field = 1\n").unwrap();
        let err = AppSources {
            file: Some(file.clone()),
            ..AppSources::default()
        }
        .load()
        .unwrap_err();
        assert!(err.to_string().contains("unknown_field"), "{err}");
        std::fs::write(&file, "[apps.x]\ntokens_only = true\n").unwrap();
        assert!(AppSources {
            file: Some(file),
            ..AppSources::default()
        }
        .load()
        .is_err());
    }
}
