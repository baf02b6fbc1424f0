//! Live profiles (`GET /debug/pprof/profile` on `METRICS_PORT`): a CPU
//! profile of a node under traffic, as pprof protobuf and as a flamegraph,
//! only with the admin token, one at a time, with bounded seconds.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pprof::protos::Message as _;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// `GET path` on the admin port: (status, headers, body bytes).
async fn admin_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    http_request_bytes(
        &mut tcp,
        "GET",
        path,
        headers,
        None,
        Duration::from_secs(60),
    )
    .await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Two clients exchanging messages in a channel until `stop` (at most
/// 100,000 messages), so that the node has work to sample.
async fn traffic(node: &Node, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let mut a = node.ws(KEY1, "alice").await;
    let mut b = node.ws(KEY1, "bob").await;
    a.join("busy").await;
    b.join("busy").await;
    tokio::spawn(async move {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && sent < 100_000 {
            a.send(&data("busy", "tick", "{\"n\":1}")).await;
            b.recv_op("data").await;
            sent += 1;
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profile_under_traffic_with_the_admin_token() {
    let port = free_port();
    let node = Node::start_with(&[
        ("METRICS_PORT", &port.to_string()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        // Unthrottled, so that the traffic keeps the node busy.
        ("PEER_MSG_RATE", "0"),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&node, stop.clone()).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let auth = [("Authorization", auth.as_str())];
    let path = "/debug/pprof/profile";

    let (status, headers, body) = admin_get(port, &format!("{path}?seconds=2"), &auth).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    let profile = pprof::protos::Profile::decode(body.as_slice()).expect("a pprof protobuf");
    let strings = &profile.string_table;
    let sample_types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| strings[t.ty as usize].as_str())
        .collect();
    assert!(sample_types.contains(&"cpu"), "{sample_types:?}");
    assert!(!profile.sample.is_empty(), "no samples under traffic");
    assert!(
        strings.iter().any(|s| s.contains("prscd::")),
        "no prscd function among the symbols"
    );

    let (status, headers, body) =
        admin_get(port, &format!("{path}?seconds=1&format=svg"), &auth).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/svg+xml"));
    let svg = String::from_utf8(body).expect("utf-8 svg");
    assert!(svg.contains("<svg"), "{svg:.200}");
    // Accept chooses the SVG when format is not given.
    let accept = [auth[0], ("Accept", "image/svg+xml")];
    let (status, headers, _) = admin_get(port, &format!("{path}?seconds=1"), &accept).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/svg+xml"));

    // One at a time: of two at once, one is refused while the other runs.
    let two_seconds = format!("{path}?seconds=2");
    let first = admin_get(port, &two_seconds, &auth);
    let second = admin_get(port, &two_seconds, &auth);
    let (first, second) = tokio::join!(first, second);
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);

    stop.store(true, Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);

    for bad in ["seconds=0", "seconds=61", "seconds=abc", "format=png"] {
        let (status, _, body) = admin_get(port, &format!("{path}?{bad}"), &auth).await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, _) = admin_get(port, &format!("{path}?seconds=1"), &[]).await;
    assert_eq!(status, 401);
    let wrong = [("Authorization", "Bearer admin-token-for-tests-01234567XX")];
    let (status, _, _) = admin_get(port, &format!("{path}?seconds=1"), &wrong).await;
    assert_eq!(status, 401);
    // The client port does not serve it.
    let (status, _, _) = node.get_with(path, &auth).await;
    assert_ne!(status, 200);
}

#[tokio::test]
async fn no_admin_token_no_profile_endpoint() {
    let port = free_port();
    let _node = Node::start_with(&[("METRICS_PORT", &port.to_string())]);
    let auth: &[(&str, &str)] = &[("Authorization", "Bearer anything-at-all-0123456789")];
    for headers in [auth, &[]] {
        let (status, _, _) = admin_get(port, "/debug/pprof/profile?seconds=1", headers).await;
        assert_eq!(status, 404);
    }
}
