//! The presence API for backends that don't run zenoh: who is in an app's
//! channels mesh-wide, a message into a channel, and closing a user's
//! connections, per app with `Authorization: Bearer <API key>`
//! (`APP_API_KEYS`, `api_keys` in the apps file). Served on the client port
//! and on `METRICS_PORT`; the contract is `docs/openapi.yaml`.
//!
//! Transport-free: the HTTP layer (`transport::http`) reads the request,
//! [`Api::admit`] routes and authenticates it before any body is read, and
//! [`Api::run`] answers. The other nodes are reached through
//! [`MeshAdmin`], which knows zenoh; this module does not.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::apps::Apps;
use crate::hub::Hub;
use crate::mesh::admin::MeshAdmin;
use crate::occupancy::{self, NodePresence};
use crate::protocol::{self, Kind, Outbound};

/// Path prefix of every API route.
pub const PREFIX: &str = "/v1/apps/";

/// Longest `from` of a posted message, in bytes (as a connection's `id`).
pub const MAX_FROM_LEN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("missing or wrong API key (Authorization: Bearer <key of this app>)")]
    Unauthorized,
    #[error("body over {0} bytes")]
    TooLarge(usize),
    #[error("Content-Length required (no chunked bodies)")]
    LengthRequired,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the mesh did not answer: {0}")]
    Mesh(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Unauthorized => 401,
            ApiError::TooLarge(_) => 413,
            ApiError::LengthRequired => 411,
            ApiError::BadRequest(_) => 400,
            ApiError::Mesh(_) => 503,
        }
    }

    /// `{"error": "..."}`.
    pub fn body(&self) -> String {
        json!({ "error": self.to_string() }).to_string()
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/apps/{app}/channels`
    Channels { app: String },
    /// `GET /v1/apps/{app}/channels/{channel}/users`
    Users { app: String, channel: String },
    /// `POST /v1/apps/{app}/channels/{channel}/messages`
    Message { app: String, channel: String },
    /// `POST /v1/apps/{app}/users/{id}/disconnect`
    Disconnect { app: String, id: String },
}

impl Route {
    fn app(&self) -> &str {
        match self {
            Route::Channels { app }
            | Route::Users { app, .. }
            | Route::Message { app, .. }
            | Route::Disconnect { app, .. } => app,
        }
    }

    /// Whether the route reads a body.
    pub fn has_body(&self) -> bool {
        matches!(self, Route::Message { .. })
    }
}

/// Routes `method path` (path without the query); names are percent-decoded.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let rest = path
        .strip_prefix(PREFIX)
        .ok_or(ApiError::NotFound("path"))?;
    let parts: Vec<String> = rest
        .split('/')
        .map(|p| crate::percent::decode(p).filter(|p| !p.is_empty()))
        .collect::<Option<_>>()
        .ok_or(ApiError::NotFound("path"))?;
    let want = |m: &'static str, route: Route| {
        if method == m {
            Ok(route)
        } else {
            Err(ApiError::MethodNotAllowed(m))
        }
    };
    match parts.as_slice() {
        [app, c] if c == "channels" => want("GET", Route::Channels { app: app.clone() }),
        [app, c, channel, u] if c == "channels" && u == "users" => want(
            "GET",
            Route::Users {
                app: app.clone(),
                channel: channel.clone(),
            },
        ),
        [app, c, channel, m] if c == "channels" && m == "messages" => want(
            "POST",
            Route::Message {
                app: app.clone(),
                channel: channel.clone(),
            },
        ),
        [app, u, id, d] if u == "users" && d == "disconnect" => want(
            "POST",
            Route::Disconnect {
                app: app.clone(),
                id: id.clone(),
            },
        ),
        _ => Err(ApiError::NotFound("path")),
    }
}

/// `POST .../messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostedMessage {
    from: String,
    data: serde_json::Value,
}

pub struct Api {
    hub: Arc<Hub>,
    mesh: OnceLock<MeshAdmin>,
    /// Largest body accepted (`MAX_MESSAGE_SIZE`).
    pub max_body: usize,
}

impl Api {
    pub fn new(hub: Arc<Hub>, max_body: usize) -> Api {
        Api {
            hub,
            mesh: OnceLock::new(),
            max_body,
        }
    }

    /// From now on the API answers for the whole mesh.
    pub fn attach_mesh(&self, mesh: MeshAdmin) {
        let _ = self.mesh.set(mesh);
    }

    /// Routes and authenticates a request, before its body is read: an
    /// unknown app is 404, a key that is not this app's 401.
    pub fn admit(
        &self,
        apps: &Apps,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Route, ApiError> {
        let route = route(method, path)?;
        let app = apps.get(route.app()).ok_or(ApiError::NotFound("app"))?;
        let key = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if !app.api_key_matches(key) {
            return Err(ApiError::Unauthorized);
        }
        Ok(route)
    }

    /// Answers an admitted request: (status, JSON body).
    pub async fn run(&self, route: Route, body: &[u8]) -> Result<(u16, String), ApiError> {
        let span = tracing::info_span!("api", app = route.app(), mesh_id = self.hub.mesh_id());
        let _entered = span.enter();
        match route {
            Route::Channels { app } => {
                let merged = occupancy::merge(&self.everyone(&app).await?);
                let channels = occupancy::occupancy(&merged);
                Ok((200, json!({ "channels": channels }).to_string()))
            }
            Route::Users { app, channel } => {
                let mut merged = occupancy::merge(&self.everyone(&app).await?);
                let users = merged.remove(&channel).unwrap_or_default();
                Ok((200, json!({ "users": users }).to_string()))
            }
            Route::Message { app, channel } => {
                let posted: PostedMessage = serde_json::from_slice(body)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                if posted.from.is_empty() || posted.from.len() > MAX_FROM_LEN {
                    return Err(ApiError::BadRequest(format!(
                        "`from` must have 1 to {MAX_FROM_LEN} bytes"
                    )));
                }
                let msg = data_message(&channel, &posted.from, &posted.data);
                let here = self.hub.relay(&app, &channel, None, &msg, Kind::Data);
                if let Some(mesh) = self.mesh.get() {
                    mesh.publish(&app, &channel, msg.to_vec())
                        .await
                        .map_err(|e| ApiError::Mesh(e.to_string()))?;
                }
                tracing::debug!(%channel, peer = %posted.from, delivered_here = here.sent, "api: message posted");
                Ok((202, json!({ "status": "accepted" }).to_string()))
            }
            Route::Disconnect { app, id } => {
                let here = self.hub.disconnect_user(&app, &id);
                if let Some(mesh) = self.mesh.get() {
                    mesh.disconnect(&app, &id)
                        .await
                        .map_err(|e| ApiError::Mesh(e.to_string()))?;
                }
                tracing::debug!(peer = %id, closed_here = here, "api: disconnect asked");
                Ok((202, json!({ "status": "accepted" }).to_string()))
            }
        }
    }

    /// This node's users of `app` and every other node's.
    async fn everyone(&self, app: &str) -> Result<Vec<NodePresence>, ApiError> {
        let mut nodes = match self.mesh.get() {
            Some(mesh) => mesh
                .presence(app)
                .await
                .map_err(|e| ApiError::Mesh(e.to_string()))?,
            None => Vec::new(),
        };
        nodes.push(NodePresence::from_hosted(
            self.hub.mesh_id(),
            self.hub.hosted(app),
        ));
        Ok(nodes)
    }
}

/// The `data` message every member receives: `p` = `from`, `pl` = the
/// msgpack of `data`, no `mesh` (it entered from no node's member).
pub fn data_message(channel: &str, from: &str, data: &serde_json::Value) -> Bytes {
    let inner = rmp_serde::to_vec_named(data).expect("JSON is msgpack");
    let mut pl = Vec::with_capacity(inner.len() + 5);
    rmp::encode::write_bin(&mut pl, &inner).expect("vec");
    Bytes::from(protocol::encode(&Outbound {
        kind: Kind::Data,
        channel,
        peer: from,
        payload: Some(&pl),
        mesh: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppSources;

    #[test]
    fn routes_and_their_methods() {
        let r = |m, p| route(m, p);
        assert_eq!(
            r("GET", "/v1/apps/app1/channels"),
            Ok(Route::Channels { app: "app1".into() })
        );
        assert_eq!(
            r("GET", "/v1/apps/app1/channels/room%2F1/users"),
            Ok(Route::Users {
                app: "app1".into(),
                channel: "room/1".into()
            })
        );
        assert_eq!(
            r("POST", "/v1/apps/a/channels/r/messages"),
            Ok(Route::Message {
                app: "a".into(),
                channel: "r".into()
            })
        );
        assert_eq!(
            r("POST", "/v1/apps/a/users/al%20ice/disconnect"),
            Ok(Route::Disconnect {
                app: "a".into(),
                id: "al ice".into()
            })
        );
        assert_eq!(
            r("GET", "/v1/apps/a/channels/r/messages"),
            Err(ApiError::MethodNotAllowed("POST"))
        );
        for bad in [
            "/v1/apps/",
            "/v1/apps/a",
            "/v1/apps/a/channels/",
            "/v1/apps//channels",
            "/v1/apps/a/nope",
            "/v1/apps/a/channels/r/users/x",
            "/v1/apps/a/channels/%zz/users",
            "/v2/apps/a/channels",
        ] {
            assert_eq!(r("GET", bad), Err(ApiError::NotFound("path")), "{bad}");
        }
    }

    #[test]
    fn one_apps_key_never_opens_another() {
        let apps = AppSources {
            pairs: Some("k1:app1,k2:app2".into()),
            api_keys: Some("app1:key-of-app1-0123456,app2:key-of-app2-0123456".into()),
            ..AppSources::default()
        }
        .load()
        .unwrap()
        .unwrap();
        let api = Api::new(
            crate::hub::Hub::new("m", Default::default(), Arc::default()),
            1024,
        );
        let admit = |path, auth| api.admit(&apps, "GET", path, auth);
        let ok = Some("Bearer key-of-app1-0123456");
        assert!(admit("/v1/apps/app1/channels", ok).is_ok());
        assert_eq!(
            admit("/v1/apps/app2/channels", ok),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(
            admit("/v1/apps/app1/channels", None),
            Err(ApiError::Unauthorized)
        );
        let basic = Some("Basic key-of-app1-0123456");
        assert_eq!(
            admit("/v1/apps/app1/channels", basic),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(
            admit("/v1/apps/nope/channels", ok),
            Err(ApiError::NotFound("app"))
        );
        assert_eq!(ApiError::Unauthorized.status(), 401);
        assert_eq!(ApiError::TooLarge(1).status(), 413);
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc = include_str!("../docs/openapi.yaml");
        for path in [
            "/v1/apps/{app}/channels:",
            "/v1/apps/{app}/channels/{channel}/users:",
            "/v1/apps/{app}/channels/{channel}/messages:",
            "/v1/apps/{app}/users/{id}/disconnect:",
        ] {
            assert!(doc.contains(path), "{path}");
        }
    }

    #[test]
    fn a_posted_message_is_data_from_the_sender_with_the_data_as_msgpack() {
        let data = json!({"event": "chat", "data": "{\"x\":1}"});
        let msg = data_message("room", "backend", &data);
        let relayed = protocol::decode_relayed(&msg).unwrap();
        assert_eq!(relayed.kind, Kind::Data);
        assert_eq!(
            (relayed.channel, relayed.peer, relayed.mesh),
            ("room", "backend", None)
        );
        let pl = rmpv::decode::read_value(&mut relayed.payload.unwrap()).unwrap();
        let inner = pl.as_slice().expect("bin");
        assert_eq!(
            rmp_serde::from_slice::<serde_json::Value>(inner).unwrap(),
            data
        );
    }
}
