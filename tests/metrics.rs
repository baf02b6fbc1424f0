//! `GET /metrics` (Prometheus text format) on the TLS port and on
//! `METRICS_PORT`: the counters move with traffic, drops, handshake
//! failures and the mesh hop.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// `name{labels}` → value, from the exposition text.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(node: &Node) -> HashMap<String, f64> {
    let auth = format!("Bearer {METRICS_TOKEN}");
    let (status, headers, body) = node.get_with("/metrics", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/plain")));
    parse(&body)
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

#[tokio::test]
async fn counters_move_with_traffic_drops_and_refusals() {
    let metrics_port = free_port();
    let node = Node::start_with(&[("METRICS_PORT", &metrics_port.to_string())]);
    let before = scrape(&node).await;
    assert_eq!(
        value(
            &before,
            r#"prscd_messages_in_total{op="data",transport="websocket"}"#
        ),
        0.0
    );

    let mut a = node.ws(KEY1, "alice").await;
    let mut b = node.wt(KEY1, "bob", false).await;
    let _c = node.ws(KEY2, "carol").await;
    a.join("room").await;
    b.join("room").await;
    let frame = data("room", "e", "{}");
    for _ in 0..3 {
        a.send(&frame).await;
        b.recv_op("data").await;
    }
    b.send(&[0xc1]).await;
    node.wait_counter(&["dropped", "malformed"], 1).await;
    assert_eq!(
        ws_handshake(node.addr(), "/v1?publickey=nope&id=x")
            .await
            .err()
            .map(|e| e.0),
        Some(403)
    );

    let m = scrape(&node).await;
    assert_eq!(
        value(
            &m,
            r#"prscd_messages_in_total{op="data",transport="websocket"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            r#"prscd_bytes_in_total{op="data",transport="websocket"}"#
        ),
        3.0 * frame.len() as f64
    );
    assert_eq!(
        value(
            &m,
            r#"prscd_messages_out_total{op="data",transport="webtransport"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            r#"prscd_messages_in_total{op="channel_join",transport="webtransport"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"prscd_messages_in_total{op="invalid",transport="webtransport"}"#
        ),
        1.0
    );
    assert_eq!(value(&m, r#"prscd_dropped_total{reason="malformed"}"#), 1.0);
    assert_eq!(
        value(&m, r#"prscd_handshake_failures_total{status="403"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"prscd_connections{app="app1",transport="websocket"}"#),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"prscd_connections{app="app1",transport="webtransport"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&m, r#"prscd_connections{app="app2",transport="websocket"}"#),
        1.0
    );
    assert_eq!(value(&m, "prscd_channels"), 1.0);
    assert_eq!(value(&m, "prscd_mesh_state"), 1.0, "alone");

    // The same on the plain-HTTP metrics port.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        value(&parse(body), r#"prscd_dropped_total{reason="malformed"}"#),
        1.0
    );
}

#[tokio::test]
async fn slow_reader_disconnects_and_the_mesh_hop_are_measured() {
    let nodes = mesh_of(
        &["eu", "us"],
        &[
            ("PEER_QUEUE", "8"),
            ("PEER_MSG_RATE", "0"),
            ("PEER_BYTE_RATE", "0"),
        ],
    );
    for node in &nodes {
        node.wait_mesh_state("connected").await;
    }
    let mut a = nodes[0].ws(KEY1, "alice").await;
    let mut b = nodes[1].ws(KEY1, "bob").await;
    let mut slow = nodes[1].ws(KEY1, "slow").await;
    a.join("room").await;
    b.join("room").await;
    slow.join("room").await;
    nodes[0].wait_remote_members(2).await;
    // bob reads, slow never does: 500 KB messages overflow slow's queue.
    let blob = "x".repeat(500_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while nodes[1].counter(&["dropped", "slow_reader"]).await == 0 {
        assert!(Instant::now() < deadline, "slow reader never dropped");
        a.send(&data("room", "big", &blob)).await;
        sent += 1;
        b.recv_op("data").await;
    }
    let m = scrape(&nodes[1]).await;
    assert_eq!(value(&m, "prscd_slow_reader_disconnects_total"), 1.0);
    assert!(value(&m, "prscd_mesh_received_total") >= sent as f64);
    assert!(value(&m, "prscd_mesh_hop_seconds_count") >= sent as f64);
    assert!(value(&m, r#"prscd_mesh_hop_seconds_bucket{le="+Inf"}"#) >= sent as f64);
    assert_eq!(value(&m, r#"prscd_mesh_neighbours{kind="peer"}"#), 1.0);
    let published = value(&scrape(&nodes[0]).await, "prscd_mesh_published_total");
    assert!(published >= sent as f64);
}
