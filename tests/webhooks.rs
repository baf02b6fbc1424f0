//! Join and leave webhooks on three real nodes meshed over zenoh, posted to a
//! real HTTP receiver (a TCP listener here that checks every signature):
//! every event arrives exactly once through two tabs on two nodes, a join, a
//! leave, a reload within the grace period, a failed delivery retried, a
//! kill -9 of the posting node while it has members, and its restart.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY_APP1: &str = "app1-api-key-0123456789";

/// Every event received, as "name channel user".
#[derive(Default)]
struct Received {
    events: Vec<String>,
    requests: usize,
    refused: usize,
}

/// Answers 503 to the first `refuse` requests, then 200; records the events
/// of the requests it took. Panics on a bad signature or body.
async fn receiver(refuse: usize) -> (u16, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Received::default()));
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let (head_len, headers) = loop {
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "request cut short");
                buf.extend_from_slice(&chunk[..n]);
                let mut h = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut h);
                if let httparse::Status::Complete(len) = req.parse(&buf).unwrap() {
                    assert_eq!(req.method, Some("POST"));
                    assert_eq!(req.path, Some("/hook"));
                    let headers: BTreeMap<String, String> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (len, headers);
                }
            };
            let len: usize = headers["content-length"].parse().unwrap();
            while buf.len() < head_len + len {
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "body cut short");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = &buf[head_len..head_len + len];
            let sig = headers["x-prscd-signature"]
                .strip_prefix("sha256=")
                .unwrap();
            let sig: Vec<u8> = (0..sig.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&sig[i..i + 2], 16).unwrap())
                .collect();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY_APP1.as_bytes());
            ring::hmac::verify(&key, body, &sig).expect("signature");
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert!(json["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
            let status = {
                let mut got = sink.lock().unwrap();
                got.requests += 1;
                if got.refused < refuse {
                    got.refused += 1;
                    503
                } else {
                    for e in json["events"].as_array().unwrap() {
                        assert_eq!(e["app"], "app1");
                        got.events.push(format!(
                            "{} {} {}",
                            e["name"].as_str().unwrap(),
                            e["channel"].as_str().unwrap(),
                            e["user_id"].as_str().unwrap_or("-")
                        ));
                    }
                    200
                }
            };
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
    });
    (port, got)
}

/// Waits until `event` ("name channel user") has arrived.
async fn wait_event(got: &Mutex<Received>, event: &str) {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if got.lock().unwrap().events.iter().any(|e| e == event) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {event:?}; got {:?}",
            got.lock().unwrap().events
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_meshed(nodes: &[&Node]) {
    for node in nodes {
        node.wait_counter(&["mesh", "peers"], nodes.len() as u64 - 1)
            .await;
        node.wait_mesh_state("connected").await;
    }
}

#[tokio::test]
async fn every_event_is_posted_once_across_the_mesh() {
    let (port, got) = receiver(1).await;
    let hook = format!("app1:http://127.0.0.1:{port}/hook");
    let keys = format!("app1:{KEY_APP1}");
    let env = [
        ("APP_API_KEYS", keys.as_str()),
        ("APP_WEBHOOKS", hook.as_str()),
        ("PRESENCE_GRACE_MS", "3000"),
    ];
    // "ap" has the smallest MESH_ID: it posts, until it is killed.
    let mut nodes = mesh_of(&["eu", "us", "ap"], &env);
    wait_meshed(&nodes.iter().collect::<Vec<_>>()).await;
    nodes[2].wait_log("webhooks: this node posts").await;

    // Two tabs of alice on two nodes: one member, one occupied channel. The
    // receiver refuses the first request: the retry brings it.
    let mut alice_eu = nodes[0].ws(KEY1, "alice").await;
    let mut alice_us = nodes[1].ws(KEY1, "alice").await;
    alice_eu.join("room").await;
    alice_us.join("room").await;
    wait_event(&got, "member_added room alice").await;
    assert!(
        got.lock().unwrap().refused == 1,
        "the first request was refused"
    );

    // A join, a reload onto another node within the grace period (no
    // event), and a leave.
    let mut bob = nodes[0].ws(KEY1, "bob").await;
    bob.join("room").await;
    wait_event(&got, "member_added room bob").await;
    bob.close().await;
    let mut bob = nodes[1].ws(KEY1, "bob").await;
    bob.join("room").await;
    nodes[0]
        .wait_log("presence: user back within the grace period")
        .await;
    bob.close().await;
    wait_event(&got, "member_removed room bob").await;

    // The posting node dies with a member: the next one posts her leave.
    let mut carol = nodes[2].ws(KEY1, "carol").await;
    carol.join("room").await;
    wait_event(&got, "member_added room carol").await;
    let killed = Instant::now();
    nodes[2].kill9();
    wait_event(&got, "member_removed room carol").await;
    println!(
        "kill -9: carol's member_removed after {} ms",
        killed.elapsed().as_millis()
    );
    drop(carol);

    // It comes back, and leads again once its view is whole: what it had
    // not seen before is no news (the counts below would show it twice).
    nodes[2] = nodes[2].restart();
    nodes[2].wait_log("webhooks: this node posts").await;

    // The last user leaves: the channel is vacated.
    alice_eu.close().await;
    alice_us.close().await;
    wait_event(&got, "channel_vacated room -").await;

    // A last join, posted after anything still owed for the above.
    let mut dave = nodes[0].ws(KEY1, "dave").await;
    dave.join("marker").await;
    wait_event(&got, "member_added marker dave").await;

    let events = got.lock().unwrap().events.clone();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *counts.entry(e.as_str()).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = [
        "channel_occupied room -",
        "member_added room alice",
        "member_added room bob",
        "member_removed room bob",
        "member_added room carol",
        "member_removed room carol",
        "member_removed room alice",
        "channel_vacated room -",
        "channel_occupied marker -",
        "member_added marker dave",
    ]
    .into_iter()
    .map(|e| (e, 1))
    .collect();
    assert_eq!(counts, want, "every event exactly once: {events:?}");
    drop(nodes);
}

/// The example receivers (Python and Node) take a node's webhooks and
/// refuse a body whose signature does not match.
#[tokio::test]
async fn the_example_receivers_check_the_signature() {
    use std::io::BufRead;
    for (program, script) in [
        ("python3", "webhook_receiver.py"),
        ("node", "webhook_receiver.mjs"),
    ] {
        let port = free_port();
        let mut child = std::process::Command::new(program)
            .arg(format!("{}/examples/{script}", env!("CARGO_MANIFEST_DIR")))
            .env("API_KEY", KEY_APP1)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let next_line = |what: &str| {
            let line = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("{script}: no {what}"));
            println!("{script}: {line}");
            line
        };
        assert!(next_line("start").contains("listening on"));

        // A forged body is refused.
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let forged = [("X-Prscd-Signature", "sha256=00")];
        let body = br#"{"time_ms":1,"events":[]}"#;
        let (status, _, _) = http_request(&mut tcp, "POST", "/hook", &forged, Some(body)).await;
        assert_eq!(status, 401, "{script}");

        let hook = format!("app1:http://127.0.0.1:{port}/hook");
        let keys = format!("app1:{KEY_APP1}");
        let node = Node::start_with(&[("APP_API_KEYS", &keys), ("APP_WEBHOOKS", &hook)]);
        node.wait_log("webhooks: this node posts").await;
        let mut alice = node.ws(KEY1, "alice").await;
        alice.join("room").await;
        let mut lines = Vec::new();
        for _ in 0..2 {
            lines.push(next_line("event"));
        }
        alice.close().await;
        for _ in 0..2 {
            lines.push(next_line("event"));
        }
        let names: Vec<String> = lines
            .iter()
            .map(|l| {
                let e: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {}",
                    e["name"].as_str().unwrap(),
                    e["user_id"].as_str().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "channel_occupied -",
                "member_added alice",
                "member_removed alice",
                "channel_vacated -"
            ],
            "{script}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
