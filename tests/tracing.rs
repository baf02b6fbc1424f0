//! Traces across hops, in a real OTLP trace store (Arize Phoenix from PyPI,
//! started by the test; see deploy/observability/): one message sent on one
//! node is one trace holding the spans of all three nodes, parent-child
//! across the zenoh hop; drops are span events with a reason.
//!
//! Needs deploy/observability/install-phoenix.sh (`scripts/test` runs it).
//! Without it the tests say so and pass, unless `PRSCD_REQUIRE_TRACE_BACKEND`
//! is set, as `scripts/test` and CI do.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A Phoenix server on free loopback ports, stopped on drop.
struct Phoenix {
    dir: PathBuf,
    grpc: u16,
    http: u16,
}

impl Phoenix {
    fn start() -> Option<Phoenix> {
        installed_tool(
            "phoenix-venv/bin/phoenix",
            "PRSCD_REQUIRE_TRACE_BACKEND",
            "deploy/observability/install-phoenix.sh",
        )?;
        let phoenix = Phoenix {
            dir: scratch_dir("phoenix"),
            grpc: free_port(),
            http: free_port(),
        };
        let status = Command::new(format!("{ROOT}/deploy/observability/phoenix.sh"))
            .arg("start")
            .args(["--dir", phoenix.dir.to_str().unwrap()])
            .args([
                "--grpc-port",
                &phoenix.grpc.to_string(),
                "--http-port",
                &phoenix.http.to_string(),
            ])
            .status()
            .expect("phoenix.sh");
        assert!(status.success(), "phoenix did not start");
        Some(phoenix)
    }

    fn otlp_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.grpc),
            ),
            ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]
    }

    /// Every span stored so far.
    fn spans(&self) -> Vec<Value> {
        let out = Command::new("python3")
            .arg(format!("{ROOT}/deploy/observability/query_spans.py"))
            .args(["--http", &format!("http://127.0.0.1:{}", self.http)])
            .output()
            .expect("query_spans.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    /// Polls until `ready` holds for the stored spans.
    async fn wait_for(&self, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if ready(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "phoenix: no {what}; spans:\n{spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/deploy/observability/phoenix.sh"))
            .args(["stop", "--dir", self.dir.to_str().unwrap()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// A numeric attribute, whichever JSON form the store gives it.
fn num(span: &Value, key: &str) -> Option<u64> {
    let v = attr(span, key);
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[tokio::test]
async fn one_message_is_one_trace_across_three_nodes() {
    let Some(phoenix) = Phoenix::start() else {
        return;
    };
    let env = phoenix.otlp_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let nodes = mesh_of(&["eu", "us", "ap"], &env);
    for node in &nodes {
        node.wait_mesh_state("connected").await;
    }
    let mut a = nodes[0].ws(KEY1, "alice").await;
    let mut b = nodes[1].ws(KEY1, "bob").await;
    let mut c = nodes[2].wt(KEY1, "carol", false).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join("traced").await;
    }
    for node in &nodes {
        node.wait_remote_members(2).await;
    }
    let frame = data("traced", "cursor", r#"{"x":1}"#);
    a.send(&frame).await;
    b.recv_op("data").await;
    c.recv_op("data").await;

    let spans = phoenix
        .wait_for("trace with both mesh.receive spans", |spans| {
            let Some(msg) = spans.iter().find(|s| {
                s["name"] == "message" && attr(s, "op") == "data" && attr(s, "mesh_id") == "eu"
            }) else {
                return false;
            };
            let trace: Vec<_> = spans
                .iter()
                .filter(|s| s["trace_id"] == msg["trace_id"])
                .cloned()
                .collect();
            named(&trace, "mesh.receive").len() == 2 && named(&trace, "deliver").len() == 3
        })
        .await;
    let msg = spans
        .iter()
        .find(|s| s["name"] == "message" && attr(s, "op") == "data" && attr(s, "mesh_id") == "eu")
        .unwrap();
    let trace: Vec<Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == msg["trace_id"])
        .cloned()
        .collect();
    println!("one trace, {} spans:", trace.len());
    for s in &trace {
        println!(
            "  {} mesh_id={} parent={}",
            s["name"],
            attr(s, "mesh_id"),
            s["parent_id"]
        );
    }

    // Entry on eu: a root span with the message's attributes.
    assert!(msg["parent_id"].is_null(), "the message span is the root");
    assert_eq!(attr(msg, "app"), "app1");
    assert_eq!(attr(msg, "channel"), "traced");
    assert_eq!(attr(msg, "peer"), "alice");
    assert_eq!(attr(msg, "transport"), "websocket");
    assert_eq!(num(msg, "bytes"), Some(frame.len() as u64), "{msg}");

    // Its publish into zenoh, child of the message.
    let publish = named(&trace, "mesh.publish");
    assert_eq!(publish.len(), 1);
    assert_eq!(publish[0]["parent_id"], msg["span_id"]);
    assert_eq!(attr(publish[0], "key"), "prscd/app1/traced");

    // Its arrival on us and ap: children of the publish, across the hop.
    let receives = named(&trace, "mesh.receive");
    let mut where_: Vec<&str> = receives
        .iter()
        .map(|s| attr(s, "mesh_id").as_str().unwrap())
        .collect();
    where_.sort();
    assert_eq!(where_, ["ap", "us"]);
    for r in &receives {
        assert_eq!(
            r["parent_id"], publish[0]["span_id"],
            "parent-child across the zenoh hop"
        );
        assert_eq!(attr(r, "peer"), "alice");
        assert_eq!(attr(r, "origin_mesh"), "eu");
        assert_eq!(attr(r, "op"), "data");
        assert!(num(r, "hop_us").is_some(), "{r}");
        // And the local delivery there: one peer each.
        let deliver: Vec<_> = named(&trace, "deliver")
            .into_iter()
            .filter(|d| d["parent_id"] == r["span_id"])
            .collect();
        assert_eq!(deliver.len(), 1);
        assert_eq!(num(deliver[0], "delivered"), Some(1));
        assert_eq!(num(deliver[0], "dropped_slow"), Some(0));
    }
    // On eu itself, nobody else was in the channel.
    let local: Vec<_> = named(&trace, "deliver")
        .into_iter()
        .filter(|d| d["parent_id"] == msg["span_id"])
        .collect();
    assert_eq!(num(local[0], "delivered"), Some(0));

    // The connections are traced too, apart from the messages.
    assert!(spans
        .iter()
        .all(|s| s["name"] != "connection" || s["trace_id"] != msg["trace_id"]));
}

#[tokio::test]
async fn drops_are_span_events_with_a_reason() {
    let Some(phoenix) = Phoenix::start() else {
        return;
    };
    let env = phoenix.otlp_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("MESH_ID", "solo"));
    let node = Node::start_with(&env);
    let mut a = node.ws(KEY1, "alice").await;
    a.join("room").await;
    a.send(&data("elsewhere", "x", "{}")).await; // not joined
    a.send(&[0xc1]).await; // malformed
    node.wait_counter(&["dropped", "malformed"], 1).await;

    let reasons = |spans: &[Value]| -> Vec<String> {
        let mut r: Vec<String> = spans
            .iter()
            .filter(|s| s["name"] == "message")
            .flat_map(|s| s["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["name"] == "dropped")
            .filter_map(|e| e["attributes"]["reason"].as_str().map(str::to_owned))
            .collect();
        r.sort();
        r
    };
    let spans = phoenix
        .wait_for("both drop events", |spans| reasons(spans).len() >= 2)
        .await;
    assert_eq!(reasons(&spans), ["malformed", "not_joined"]);
    let not_joined = spans
        .iter()
        .find(|s| s["name"] == "message" && attr(s, "channel") == "elsewhere")
        .expect("the dropped message's span");
    assert_eq!(attr(not_joined, "peer"), "alice");
}
