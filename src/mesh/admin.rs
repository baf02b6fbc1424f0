//! What the presence API and the webhooks ask of the mesh: every node's
//! users of an app, a backend's message into a channel on every node,
//! closing a user's connections on every node, and which nodes are live for
//! posting webhooks. [`MeshAdmin`] asks; [`serve`] answers for this node.
//! Keys: [`super::keys`] (`@presence`, `@disconnect`, `@live`).
//!
//! A message goes out as a backend's would (no sid, no MESH_ID), so the
//! other nodes accept it as data and never as presence.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, warn};
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Subscriber;
use zenoh::query::{ConsolidationMode, QueryTarget, Queryable};
use zenoh::sample::{Locality, SampleKind};
use zenoh::Session;

use super::keys;
use crate::console::NodeSummary;
use crate::hub::Hub;
use crate::occupancy::NodePresence;

/// How long a presence query waits for the other nodes' answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("zenoh: {0}")]
    Zenoh(String),
}

fn zenoh_error(e: impl std::fmt::Display) -> AdminError {
    AdminError::Zenoh(e.to_string())
}

/// Asks the other nodes; cheap to clone.
#[derive(Clone)]
pub struct MeshAdmin {
    session: Session,
    /// The other nodes whose liveness token lives.
    live: Arc<Mutex<BTreeSet<String>>>,
    /// This node's liveness token, once declared ([`MeshAdmin::declare_live`]).
    token: Arc<Mutex<Option<LivelinessToken>>>,
    mesh_id: String,
}

impl MeshAdmin {
    /// Every other node's users of `app`, as they answer within
    /// [`QUERY_TIMEOUT`] (a node cut off from this one is missing).
    pub async fn presence(&self, app: &str) -> Result<Vec<NodePresence>, AdminError> {
        let replies = self
            .session
            .get(keys::presence_of_app(app))
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .allowed_destination(Locality::Remote)
            .timeout(QUERY_TIMEOUT)
            .await
            .map_err(zenoh_error)?;
        let mut nodes = Vec::new();
        while let Ok(reply) = replies.recv_async().await {
            let Ok(sample) = reply.result() else { continue };
            let key = sample.key_expr().as_str();
            let bytes = sample.payload().to_bytes();
            match (
                keys::parse_presence_key(key),
                serde_json::from_slice::<NodePresence>(&bytes),
            ) {
                (Some((mesh_id, answered)), Ok(node))
                    if answered == app && node.mesh_id == mesh_id =>
                {
                    nodes.push(node)
                }
                _ => debug!(%key, "mesh: invalid presence answer dropped"),
            }
        }
        Ok(nodes)
    }

    /// The other nodes running now, as their liveness tokens say (a node
    /// cut off or dead goes within the zenoh lease).
    pub fn live_nodes(&self) -> BTreeSet<String> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Declares this node live for the webhooks (it may now lead): once its
    /// own view of the mesh is complete, so that a node (re)starting never
    /// takes the lead with a partial view.
    pub async fn declare_live(&self) -> Result<(), AdminError> {
        let token = self
            .session
            .liveliness()
            .declare_token(keys::live_key(&self.mesh_id))
            .await
            .map_err(zenoh_error)?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    /// Publishes `msg` (a data message, encoded) into `app/channel` for
    /// the other nodes' members.
    pub async fn publish(&self, app: &str, channel: &str, msg: Vec<u8>) -> Result<(), AdminError> {
        self.session
            .put(keys::channel_key(app, channel), msg)
            .allowed_destination(Locality::Remote)
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .map_err(zenoh_error)
    }

    /// Every other node's console summary, with the time its answer took,
    /// as they answer within `within` (a node cut off is missing).
    pub async fn summaries(
        &self,
        within: Duration,
    ) -> Result<Vec<(NodeSummary, Duration)>, AdminError> {
        let asked = std::time::Instant::now();
        let replies = self
            .session
            .get(keys::console_nodes())
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .allowed_destination(Locality::Remote)
            .timeout(within)
            .await
            .map_err(zenoh_error)?;
        let mut nodes = Vec::new();
        while let Ok(reply) = replies.recv_async().await {
            let took = asked.elapsed();
            let Ok(sample) = reply.result() else { continue };
            let key = sample.key_expr().as_str();
            let bytes = sample.payload().to_bytes();
            match (
                keys::parse_console_key(key),
                serde_json::from_slice::<NodeSummary>(&bytes),
            ) {
                (Some(mesh_id), Ok(node)) if node.mesh_id == mesh_id => nodes.push((node, took)),
                _ => debug!(%key, "mesh: invalid console summary dropped"),
            }
        }
        Ok(nodes)
    }

    /// This node's zenoh id.
    pub fn zid(&self) -> String {
        self.session.zid().to_string()
    }

    /// The zenoh ids of the peers and of the routers this node is linked to.
    pub async fn neighbours(&self) -> (Vec<String>, Vec<String>) {
        let info = self.session.info();
        let peers = info.peers_zid().await.map(|z| z.to_string()).collect();
        let routers = info.routers_zid().await.map(|z| z.to_string()).collect();
        (peers, routers)
    }

    /// Asks the other nodes to close user `id`'s connections in `app`.
    pub async fn disconnect(&self, app: &str, id: &str) -> Result<(), AdminError> {
        self.session
            .put(keys::disconnect_key(app, id), Vec::<u8>::new())
            .allowed_destination(Locality::Remote)
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .map_err(zenoh_error)
    }
}

/// This node's side: answers presence queries and follows disconnect
/// requests for as long as the returned declarations live.
pub struct Served {
    _presence: Queryable<()>,
    _disconnects: Subscriber<()>,
    _live_nodes: Subscriber<()>,
    _console: Queryable<()>,
    pub admin: MeshAdmin,
}

pub async fn serve(session: &Session, hub: Arc<Hub>) -> zenoh::Result<Served> {
    let mesh_id = hub.mesh_id().to_owned();
    let mesh_id_of_hub = mesh_id.clone();
    let runtime = tokio::runtime::Handle::current();
    let answering = hub.clone();
    let (summarizing, zid) = (hub.clone(), session.zid().to_string());
    let console_runtime = runtime.clone();
    let console = session
        .declare_queryable(keys::console_key(&mesh_id))
        .callback(move |query| {
            let summary = NodeSummary::of(&summarizing, &zid);
            let key = keys::console_key(summarizing.mesh_id());
            let body = serde_json::to_vec(&summary).expect("plain data");
            console_runtime.spawn(async move {
                if let Err(e) = query.reply(key, body).await {
                    debug!(error = %e, "mesh: console summary answer failed");
                }
            });
        })
        .await?;
    let presence = session
        .declare_queryable(keys::presence_of_node(&mesh_id))
        .callback(move |query| {
            let Some(app) = app_of(query.key_expr().as_str()) else {
                return;
            };
            let node = NodePresence::from_hosted(&mesh_id, answering.hosted(&app));
            let key = keys::presence_key(&mesh_id, &app);
            let body = serde_json::to_vec(&node).expect("plain data");
            runtime.spawn(async move {
                if let Err(e) = query.reply(key, body).await {
                    debug!(error = %e, "mesh: presence answer failed");
                }
            });
        })
        .await?;
    let disconnects = session
        .declare_subscriber(keys::disconnects())
        .allowed_origin(Locality::Remote)
        .callback(
            move |sample| match keys::parse_disconnect_key(sample.key_expr().as_str()) {
                Some((app, id)) => {
                    hub.disconnect_user(&app, &id);
                }
                None => warn!(key = %sample.key_expr(), "mesh: invalid disconnect request"),
            },
        )
        .await?;
    let live = Arc::new(Mutex::new(BTreeSet::new()));
    let (seen, me) = (live.clone(), mesh_id_of_hub.clone());
    let live_nodes = session
        .liveliness()
        .declare_subscriber(keys::live_nodes())
        .history(true)
        .callback(move |sample| {
            let Some(node) = keys::parse_live_key(sample.key_expr().as_str()) else {
                return;
            };
            if node == me {
                return;
            }
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if sample.kind() == SampleKind::Put {
                seen.insert(node);
            } else {
                seen.remove(&node);
            }
        })
        .await?;
    Ok(Served {
        _presence: presence,
        _disconnects: disconnects,
        _live_nodes: live_nodes,
        _console: console,
        admin: MeshAdmin {
            session: session.clone(),
            live,
            token: Arc::default(),
            mesh_id: mesh_id_of_hub,
        },
    })
}

/// The app a presence query names (its last chunk; the node chunk is `*`).
fn app_of(selector: &str) -> Option<String> {
    let chunk = selector.rsplit('/').next()?;
    (!chunk.contains(['*', '$']))
        .then(|| keys::decode_chunk(chunk))
        .flatten()
}
