//! The console's HTTP routes on the admin port (`METRICS_PORT`): the page's
//! embedded assets, the JSON endpoints and the event stream. Routing and
//! writing only; the data comes from [`super`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /console` | the page (static, holds no data) |
//! | `GET /console/console.js`, `/console/console.css` | its script and style |
//! | `GET /console/api/snapshot` | the mesh, the apps, counters, errors (JSON) |
//! | `GET /console/api/events` | the snapshot about once a second (`text/event-stream`) |
//! | `GET /console/api/channels?app=&q=&offset=&limit=` | an app's channels on this node |
//! | `GET /console/api/channel?app=&name=&q=&offset=&limit=&payloads=1` | one channel's users and sampled messages |
//!
//! Every `/console/api/*` needs `Authorization: Bearer <ADMIN_TOKEN or an
//! app's API key>`; the token is never taken from the URL, so it stays out
//! of logs and history. Without `ADMIN_TOKEN` every `/console` path is 404.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Console, Page, Viewer};
use crate::apps::Apps;
use crate::transport::http::{respond, Request};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// How often the event stream sends a snapshot.
pub const TICK: Duration = Duration::from_secs(1);

/// Headers on every console answer: nothing cached, nothing framed, no
/// referrer (the page's URL never holds the token, but be sure), and
/// scripts only from the node itself.
fn headers() -> Vec<(&'static str, String)> {
    vec![
        ("Cache-Control", "no-store".into()),
        ("X-Content-Type-Options", "nosniff".into()),
        ("X-Frame-Options", "DENY".into()),
        ("Referrer-Policy", "no-referrer".into()),
        (
            "Content-Security-Policy",
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
                .into(),
        ),
    ]
}

/// Whether a request is for the console.
pub fn is_console(request: &Request) -> bool {
    let path = request.path();
    path == "/console" || path.starts_with("/console/")
}

/// What a console request asks for, before the data is gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Asset(&'static str, &'static str),
    Snapshot,
    Events,
    Channels {
        app: Option<String>,
        page: Page,
    },
    Channel {
        app: Option<String>,
        name: String,
        page: Page,
        payloads: bool,
    },
}

/// An answer that is not data: (status, body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub u16, pub &'static str);

/// Routes a request: assets need no token, data needs a viewer.
pub fn route(method: &str, target: &str) -> Result<Route, Refusal> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" {
        return Err(Refusal(405, "use GET"));
    }
    let q = params(query);
    let page = || {
        let num = |k: &str| q.get(k).and_then(|v| v.parse().ok());
        Page::new(num("offset"), num("limit"), q.get("q").cloned())
    };
    Ok(match path {
        "/console" | "/console/" => Route::Asset("text/html; charset=utf-8", PAGE),
        "/console/console.js" => Route::Asset("text/javascript; charset=utf-8", SCRIPT),
        "/console/console.css" => Route::Asset("text/css; charset=utf-8", STYLE),
        "/console/api/snapshot" => Route::Snapshot,
        "/console/api/events" => Route::Events,
        "/console/api/channels" => Route::Channels {
            app: q.get("app").cloned(),
            page: page(),
        },
        "/console/api/channel" => Route::Channel {
            app: q.get("app").cloned(),
            name: q
                .get("name")
                .cloned()
                .ok_or(Refusal(400, "name is required"))?,
            page: page(),
            payloads: q.get("payloads").is_some_and(|v| v == "1" || v == "true"),
        },
        _ => return Err(Refusal(404, "not found")),
    })
}

/// `a=1&b=x%20y` → map (bad escapes dropped).
fn params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((crate::percent::decode(k)?, crate::percent::decode(v)?))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// The app a data request is about: the one asked for, which the viewer
/// must see; an app's key may leave it out.
fn app_for(viewer: &Viewer, asked: Option<String>) -> Result<String, Refusal> {
    match (viewer, asked) {
        (viewer, Some(app)) if viewer.sees(&app) => Ok(app),
        // Another app's name: as if it did not exist.
        (_, Some(_)) => Err(Refusal(404, "no such app")),
        (Viewer::App(app), None) => Ok(app.clone()),
        (Viewer::Admin, None) => Err(Refusal(400, "app is required")),
    }
}

/// Serves one console request on `stream` and ends it.
pub async fn serve<S>(stream: &mut S, request: &Request, console: &Console, apps: &Apps)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answer = answer(stream, request, console, apps).await;
    let (status, content_type, body) = match answer {
        Ok(Some(answer)) => answer,
        Ok(None) => return, // streamed
        Err(Refusal(status, why)) => (
            status,
            "application/json",
            json!({ "error": why }).to_string(),
        ),
    };
    let _ = respond(stream, status, &headers(), content_type, &body).await;
}

type Answer = Option<(u16, &'static str, String)>;

async fn answer<S>(
    stream: &mut S,
    request: &Request,
    console: &Console,
    apps: &Apps,
) -> Result<Answer, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !console.enabled() {
        return Err(Refusal(404, "the console is off (set ADMIN_TOKEN)"));
    }
    let route = route(&request.method, &request.target)?;
    if let Route::Asset(content_type, body) = route {
        return Ok(Some((200, content_type, body.to_owned())));
    }
    let viewer = console
        .viewer(apps, request.header("authorization"))
        .ok_or(Refusal(
            401,
            "Authorization: Bearer <ADMIN_TOKEN or an app's API key> required",
        ))?;
    let ok = |v: Value| -> Result<Answer, Refusal> {
        Ok(Some((200, "application/json", v.to_string())))
    };
    match route {
        Route::Asset(..) => unreachable!("answered above"),
        Route::Snapshot => ok(console.snapshot(&viewer).await),
        Route::Channels { app, page } => {
            let app = app_for(&viewer, app)?;
            ok(super::channels(console.hub(), &app, &page))
        }
        Route::Channel {
            app,
            name,
            page,
            payloads,
        } => {
            let app = app_for(&viewer, app)?;
            // Watching starts with the first look and lasts while the page looks.
            if console
                .hub()
                .stats()
                .console
                .taps
                .watch(&app, &name, payloads)
                .is_err()
            {
                return Err(Refusal(503, "too many channels watched at once"));
            }
            match super::channel(console.hub(), &app, &name, &page, payloads) {
                Some(v) => ok(v),
                None => ok(json!({
                    "app": app, "name": name, "members_here": 0, "total": 0,
                    "offset": page.offset, "limit": page.limit, "users": [], "samples": [],
                })),
            }
        }
        Route::Events => {
            stream_events(stream, console, &viewer).await;
            Ok(None)
        }
    }
}

/// The event stream: a `snapshot` event at once and every [`TICK`], until
/// the client goes; at most [`super::MAX_STREAMS`] at a time.
async fn stream_events<S>(stream: &mut S, console: &Console, viewer: &Viewer)
where
    S: AsyncWrite + Unpin,
{
    struct Open<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
        }
    }
    if console.streams.fetch_add(1, Relaxed) >= super::MAX_STREAMS {
        console.streams.fetch_sub(1, Relaxed);
        let body = json!({ "error": "too many console streams open" }).to_string();
        let _ = respond(stream, 503, &headers(), "application/json", &body).await;
        return;
    }
    let _open = Open(&console.streams);
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Type: text/event-stream\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = console.snapshot(viewer).await;
        let event = format!("event: snapshot\ndata: {snapshot}\n\n");
        let sent = async {
            stream.write_all(event.as_bytes()).await?;
            stream.flush().await
        };
        // A client that stops reading is let go rather than buffered for.
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("GET", "/console"), Ok(Route::Asset(..))));
        assert_eq!(route("GET", "/console/api/snapshot"), Ok(Route::Snapshot));
        assert_eq!(
            route("POST", "/console/api/snapshot"),
            Err(Refusal(405, "use GET"))
        );
        assert_eq!(
            route("GET", "/console/nope"),
            Err(Refusal(404, "not found"))
        );
        assert_eq!(
            route("GET", "/console/api/channel?app=a"),
            Err(Refusal(400, "name is required"))
        );
        match route(
            "GET",
            "/console/api/channel?app=a&name=room%201&q=Al&limit=5&payloads=1",
        ) {
            Ok(Route::Channel {
                app,
                name,
                page,
                payloads,
            }) => {
                assert_eq!(
                    (app.as_deref(), name.as_str(), payloads),
                    (Some("a"), "room 1", true)
                );
                assert_eq!((page.limit, page.query.as_str()), (5, "al"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_apps_key_cannot_name_another_app() {
        let app1 = Viewer::App("app1".into());
        assert_eq!(app_for(&app1, None), Ok("app1".into()));
        assert_eq!(app_for(&app1, Some("app1".into())), Ok("app1".into()));
        assert_eq!(
            app_for(&app1, Some("app2".into())),
            Err(Refusal(404, "no such app"))
        );
        assert_eq!(
            app_for(&Viewer::Admin, Some("app2".into())),
            Ok("app2".into())
        );
        assert!(app_for(&Viewer::Admin, None).is_err());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in [PAGE, SCRIPT, STYLE] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        assert!(
            !SCRIPT.contains("innerHTML"),
            "data is printed as text only"
        );
        assert!(PAGE.contains("console.js") && PAGE.contains("console.css"));
    }
}
