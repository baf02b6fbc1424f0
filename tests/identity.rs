//! Who is who (README "Signed tokens", "Limits", "Apps file"): signed
//! tokens in `publickey` with their statuses, channel and state claims,
//! state pinned to its sender, origin allow-lists, reliable transports
//! slowed instead of dropped, caps with clear statuses, SIGHUP reloads, and
//! `/metrics` kept off the public port. Each on both transports where the
//! point applies to both.

mod common;

use std::time::Duration;

use common::*;
use rmpv::Value;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(400);

fn token_path(token: &str, id: &str) -> String {
    format!("/v1?publickey={token}&id={id}")
}

/// WebSocket status of a handshake to `target` (101 when accepted).
async fn ws_status(node: &Node, target: &str, headers: &[(&str, &str)]) -> u16 {
    match ws_handshake_with(node.addr(), target, headers).await {
        Ok(_) => 101,
        Err((status, _)) => status,
    }
}

/// Whether a WebTransport session to `path` is accepted.
async fn wt_accepted(node: &Node, path: &str, headers: &[(&str, &str)]) -> bool {
    wt_connect_with(node.port, path, &pki().leaf, headers)
        .await
        .is_ok()
}

async fn rejected(node: &Node, status: &str) -> u64 {
    node.counter(&["handshake_rejected", status]).await
}

/// A `peer_state` whose state claims the id `mallory`.
fn forged_state(room: &str) -> Vec<u8> {
    let state = msg(vec![("id", "mallory".into()), ("name", "M".into())]);
    control("peer_state", room, Some(state))
}

/// The state a relayed `peer_state` carries.
fn state_of(msg: &Value) -> Value {
    let pl = bin(msg, "pl").expect("peer_state with pl");
    rmpv::decode::read_value(&mut &pl[..]).unwrap()
}

#[tokio::test]
async fn hs256_tokens_and_their_statuses_on_both_transports() {
    let node = Node::start();
    let token = |sub: &str, extra| hs256_token(APP1_SECRET, "app1", sub, extra);

    // Valid: both transports, and the app is the token's.
    let good = token("alice", json!({}));
    let (ws, _) = ws_handshake(node.addr(), &token_path(&good, "alice"))
        .await
        .unwrap_or_else(|(s, _)| panic!("valid token refused: {s}"));
    let mut alice = Client::ws("alice", ws);
    alice.join("room").await;
    let conn = wt_connect(node.port, &token_path(&good, "alice"))
        .await
        .unwrap();
    let mut alice_wt = Client::wt("alice", conn, false).await;
    alice_wt.join("room").await;
    let mut bob = node.ws(KEY1, "bob").await;
    bob.join("room").await;
    alice.send(&data("room", "hi", "{}")).await;
    assert_eq!(field(&bob.recv_op("data").await, "p"), Some("alice"));

    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({"app": "app1", "sub": "alice", "exp": unix_now() + 60});
    let cases = [
        (
            "expired",
            token("alice", json!({"exp": unix_now() - 120})),
            401,
        ),
        (
            "not yet valid",
            token("alice", json!({"nbf": unix_now() + 300})),
            401,
        ),
        ("sub is not id", token("mallory", json!({})), 403),
        (
            "bad signature",
            hs256_token(
                "another-secret-another-secret-xx",
                "app1",
                "alice",
                json!({}),
            ),
            403,
        ),
        (
            "unknown app",
            hs256_token(APP1_SECRET, "app9", "alice", json!({})),
            403,
        ),
        (
            "alg none",
            format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims.clone())),
            403,
        ),
        (
            "an algorithm the app has no key for",
            format!("{}.{}.c2ln", b64(json!({"alg": "ES256"})), b64(claims)),
            403,
        ),
    ];
    for (why, token, status) in cases {
        let before = rejected(&node, &status.to_string()).await;
        assert_eq!(
            ws_status(&node, &token_path(&token, "alice"), &[]).await,
            status,
            "websocket: {why}"
        );
        // wtransport answers only 403/404/429 on the wire: the count is exact.
        assert!(
            !wt_accepted(&node, &token_path(&token, "alice"), &[]).await,
            "webtransport: {why}"
        );
        assert_eq!(
            rejected(&node, &status.to_string()).await,
            before + 2,
            "counted twice: {why}"
        );
    }
    // Refusals killed nothing: the valid sessions still talk.
    alice_wt.send(&data("room", "still", "{}")).await;
    assert_eq!(field(&bob.recv_op("data").await, "p"), Some("alice"));
}

#[tokio::test]
async fn es256_and_eddsa_keys_and_tokens_only_apps() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let dir = scratch_dir("keys");
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_jwks_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.join("es.pem"), es.public_key_pem()).unwrap();
    let raw = es.public_key_raw(); // 0x04 || X || Y
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "es-1", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-2", "x": b64(ed_jwks_key.public_key_raw())},
    ]});
    std::fs::write(dir.join("keys.jwks"), jwks.to_string()).unwrap();
    let apps = tempfile(
        &dir,
        "apps.toml",
        &format!(
            r#"
[apps.docs]
tokens_only = true
token_public_keys = ["es.pem", """{}"""]
jwks_file = "keys.jwks"
"#,
            ed.public_key_pem()
        ),
    );
    let node = Node::start_with(&[
        ("APPS_FILE", apps.to_str().unwrap()),
        ("APPS", "pk-docs:docs"),
    ]);
    let sign = |alg, kid: Option<&str>, key: &jsonwebtoken::EncodingKey, sub: &str| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let claims = json!({"app": "docs", "sub": sub, "exp": unix_now() + 60});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let es_key = jsonwebtoken::EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap();
    let ed_key = jsonwebtoken::EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let ed2_key =
        jsonwebtoken::EncodingKey::from_ed_pem(ed_jwks_key.serialize_pem().as_bytes()).unwrap();
    let es_token = sign(jsonwebtoken::Algorithm::ES256, None, &es_key, "u1");
    let ed_token = sign(jsonwebtoken::Algorithm::EdDSA, None, &ed_key, "u2");
    let jwks_token = sign(jsonwebtoken::Algorithm::EdDSA, Some("ed-2"), &ed2_key, "u3");
    for (token, id) in [(&es_token, "u1"), (&ed_token, "u2"), (&jwks_token, "u3")] {
        assert_eq!(
            ws_status(&node, &token_path(token, id), &[]).await,
            101,
            "{id}"
        );
        assert!(
            wt_accepted(&node, &token_path(token, id), &[]).await,
            "{id}"
        );
    }
    // A plain key of a tokens-only app is refused.
    assert_eq!(
        ws_status(&node, "/v1?publickey=pk-docs&id=u1", &[]).await,
        403
    );
    // HS256 "signed" with the app's public key as the secret: the classic
    // confusion attack, refused because the app has no HS256 secret.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"app": "docs", "sub": "u1", "exp": unix_now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(es.public_key_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        ws_status(&node, &token_path(&confused, "u1"), &[]).await,
        403
    );
    assert!(!wt_accepted(&node, &token_path(&confused, "u1"), &[]).await);
}

#[tokio::test]
async fn token_channels_and_state_claims_on_both_transports() {
    let node = Node::start();
    let token = hs256_token(
        APP1_SECRET,
        "app1",
        "alice",
        json!({"channels": ["room-*"], "state": {"name": "Alice", "role": "host"}}),
    );
    for (n, via) in [Via::Ws, Via::Datagram].into_iter().enumerate() {
        let room = format!("room-{n}");
        let mut alice = node.connect(via, &token, "alice").await;
        let before = node.counter(&["dropped", "channel_not_allowed"]).await;
        alice.send(&join("lobby", "alice")).await;
        alice.expect_silence(QUIET).await;
        node.wait_counter(&["dropped", "channel_not_allowed"], before + 1)
            .await;
        // The connection lives and may join what the token grants.
        alice.join(&room).await;
        let mut bob = node.ws(KEY1, "bob").await;
        bob.join(&room).await;
        // The server's fields win over what the client claims.
        alice.send(&forged_state(&room)).await;
        let state = state_of(&bob.recv_op("peer_state").await);
        assert_eq!(state["id"].as_str(), Some("alice"), "{via:?}");
        assert_eq!(state["name"].as_str(), Some("Alice"), "{via:?}");
        assert_eq!(state["role"].as_str(), Some("host"), "{via:?}");
    }
}

#[tokio::test]
async fn state_is_pinned_to_its_sender_locally_and_across_the_mesh() {
    let nodes = mesh_of(&["eu", "us"], &[]);
    for node in &nodes {
        node.wait_mesh_state("connected").await;
    }
    for via in [Via::Ws, Via::Datagram, Via::Stream] {
        let room = format!("{via:?}");
        let mut alice = nodes[0].connect(via, KEY1, "alice").await;
        let mut carol = nodes[0].ws(KEY1, "carol").await;
        let mut bob = nodes[1].ws(KEY1, "bob").await;
        alice.join(&room).await;
        carol.join(&room).await;
        bob.join(&room).await;
        nodes[0].wait_remote_members(1).await;
        alice.send(&forged_state(&room)).await;
        for reader in [&mut carol, &mut bob] {
            let msg = reader.recv_op("peer_state").await;
            assert_eq!(field(&msg, "p"), Some("alice"));
            let state = state_of(&msg);
            assert_eq!(
                state["id"].as_str(),
                Some("alice"),
                "{via:?} to {}",
                reader.id
            );
            assert_eq!(state["name"].as_str(), Some("M"));
        }
        // A state that already names its sender passes byte for byte.
        let honest = msg(vec![("id", "alice".into()), ("name", "A".into())]);
        alice
            .send(&control("peer_state", &room, Some(honest.clone())))
            .await;
        assert_eq!(
            bin(&bob.recv_op("peer_state").await, "pl"),
            Some(&honest[..])
        );
        alice.close().await;
        carol.close().await;
        bob.close().await;
    }
}

#[tokio::test]
async fn origin_allow_list_on_both_transports() {
    let dir = scratch_dir("origins");
    let apps = tempfile(
        &dir,
        "apps.toml",
        r#"
[apps.app1]
public_keys = ["pk1"]
origins = ["https://app.example", "http://localhost:5173"]
"#,
    );
    let node = Node::start_with(&[("APPS_FILE", apps.to_str().unwrap()), ("APPS", "pk2:app2")]);
    let path = "/v1?publickey=pk1&id=a";
    for (origin, ok) in [
        ("https://app.example", true),
        ("http://localhost:5173", true),
        ("https://evil.example", false),
        ("https://app.example.evil", false),
    ] {
        let headers = [("Origin", origin)];
        let ws = ws_status(&node, path, &headers).await;
        assert_eq!(ws, if ok { 101 } else { 403 }, "websocket from {origin}");
        let wt = wt_accepted(&node, path, &[("origin", origin)]).await;
        assert_eq!(wt, ok, "webtransport from {origin}");
    }
    // Without an Origin (not a browser page) and for apps without a list.
    assert_eq!(ws_status(&node, path, &[]).await, 101);
    let evil = [("Origin", "https://evil.example")];
    assert_eq!(ws_status(&node, "/v1?publickey=pk2&id=a", &evil).await, 101);
}

/// Sends `n` numbered data messages back to back while `reader` reads, and
/// checks that it gets them all, in order.
async fn burst_arrives_whole(sender: &mut Client, reader: &mut Client, room: &str, n: usize) {
    let send = async {
        for i in 0..n {
            sender.send(&data(room, &i.to_string(), "{}")).await;
        }
    };
    let receive = async {
        for i in 0..n {
            let msg = reader.recv_op("data").await;
            let pl = bin(&msg, "pl").unwrap();
            let pl = rmpv::decode::read_value(&mut &pl[..]).unwrap();
            assert_eq!(
                pl["event"].as_str(),
                Some(i.to_string().as_str()),
                "message {i} of {n}"
            );
        }
    };
    tokio::join!(send, receive);
}

#[tokio::test]
async fn reliable_transports_are_slowed_not_dropped() {
    // The reader's queue holds the whole burst: this is about the sender,
    // and a reader starved of CPU would otherwise be dropped as slow.
    let node = Node::start_with(&[
        ("PEER_MSG_RATE", "500"),
        ("PEER_BYTE_RATE", "0"),
        ("PEER_QUEUE", "4096"),
    ]);
    for via in [Via::Ws, Via::Stream] {
        let room = format!("{via:?}");
        let mut sender = node.connect(via, KEY1, "sender").await;
        let mut reader = node.ws(KEY1, "reader").await;
        sender.join(&room).await;
        reader.join(&room).await;
        burst_arrives_whole(&mut sender, &mut reader, &room, 2_000).await;
        // The sender was slowed down, and is still served.
        reader.send(&data(&room, "back", "{}")).await;
        assert_eq!(field(&sender.recv_op("data").await, "p"), Some("reader"));
    }
    assert_eq!(node.counter(&["dropped", "rate_limited"]).await, 0);
    assert!(node.counter(&["throttled"]).await > 0, "reading was paused");

    // Bytes count too: 64 KiB messages at 256 KiB/s still arrive whole.
    let node = Node::start_with(&[("PEER_MSG_RATE", "0"), ("PEER_BYTE_RATE", "262144")]);
    let mut sender = node.ws(KEY1, "sender").await;
    let mut reader = node.ws(KEY1, "reader").await;
    sender.join("big").await;
    reader.join("big").await;
    let blob = "x".repeat(64 << 10);
    let send = async {
        for _ in 0..12 {
            sender.send(&data("big", "blob", &blob)).await;
        }
    };
    let receive = async {
        for _ in 0..12 {
            reader.recv_op("data").await;
        }
    };
    tokio::join!(send, receive);
    assert_eq!(node.counter(&["dropped", "rate_limited"]).await, 0);
}

#[tokio::test]
async fn datagrams_over_budget_are_dropped_and_counted() {
    let node = Node::start_with(&[("PEER_MSG_RATE", "20")]);
    let mut sender = node.wt(KEY1, "sender", false).await;
    let mut reader = node.ws(KEY1, "reader").await;
    sender.join("d").await;
    reader.join("d").await;
    for i in 0..200 {
        sender.send(&data("d", &i.to_string(), "{}")).await;
    }
    let dropped = node.wait_counter(&["dropped", "rate_limited"], 100).await;
    let got = reader.drain(QUIET).await;
    assert!(
        got < 200 && got as u64 + dropped <= 200,
        "got {got}, dropped {dropped}"
    );
}

#[tokio::test]
async fn connection_caps_answer_429_and_ids_400() {
    let node = Node::start_with(&[("APP_MAX_CONNECTIONS_PER_IP", "2"), ("MAX_ID_LEN", "8")]);
    // Per client IP: 429 on both transports, and the slot comes back.
    let a = node.ws(KEY1, "a").await;
    let _b = node.wt(KEY1, "b", false).await;
    assert_eq!(ws_status(&node, "/v1?publickey=pk1&id=c", &[]).await, 429);
    assert!(!wt_accepted(&node, "/v1?publickey=pk1&id=c", &[]).await);
    assert_eq!(rejected(&node, "429").await, 2);
    // Another app has its own count.
    let _other = node.ws(KEY2, "x").await;
    a.close().await;
    let deadline = std::time::Instant::now() + WAIT;
    while ws_status(&node, "/v1?publickey=pk1&id=c", &[]).await != 101 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // id length: 400 (WebTransport answers 403, counted 400).
    assert_eq!(
        ws_status(&node, "/v1?publickey=pk2&id=123456789", &[]).await,
        400
    );
    assert!(!wt_accepted(&node, "/v1?publickey=pk2&id=123456789", &[]).await);
    assert_eq!(rejected(&node, "400").await, 2);

    // The app-wide cap, whatever the address.
    let node = Node::start_with(&[("APP_MAX_CONNECTIONS", "1")]);
    let _a = node.wt(KEY1, "a", true).await;
    assert_eq!(ws_status(&node, "/v1?publickey=pk1&id=b", &[]).await, 429);
    assert!(!wt_accepted(&node, "/v1?publickey=pk1&id=b", &[]).await);
}

#[tokio::test]
async fn channel_caps_refuse_the_join_and_keep_the_connection() {
    let node = Node::start_with(&[("APP_MAX_CHANNELS", "2"), ("CHANNEL_MAX_MEMBERS", "2")]);
    // Channels per app: the third gets no ack, is counted, the peer lives.
    let mut b = node.wt(KEY1, "b", false).await;
    b.join("1").await;
    b.join("2").await;
    b.send(&join("3", "b")).await;
    b.expect_silence(QUIET).await;
    node.wait_counter(&["dropped", "app_channel_limit"], 1)
        .await;
    // Members per channel.
    let mut y = node.ws(KEY2, "y").await;
    let mut z = node.ws(KEY2, "z").await;
    let mut w = node.wt(KEY2, "w", true).await;
    y.join("full").await;
    z.join("full").await;
    w.send(&join("full", "w")).await;
    w.expect_silence(QUIET).await;
    node.wait_counter(&["dropped", "channel_full"], 1).await;
    // A channel name over 256 bytes gets no ack either.
    y.send(&join(&"n".repeat(257), "y")).await;
    y.expect_silence(QUIET).await;
    z.send(&data("full", "still", "{}")).await;
    assert_eq!(field(&y.recv_op("data").await, "p"), Some("z"));
    b.send(&data("1", "alive", "{}")).await;
    w.send(&data("full", "not-a-member", "{}")).await;
    z.expect_nothing_from("w", QUIET).await;
}

#[tokio::test]
async fn metrics_stay_off_the_public_port() {
    let node = Node::start_with(&[("METRICS_TOKEN", "")]);
    let (status, _, _) = node.get("/metrics").await;
    assert_eq!(status, 404);
    assert_eq!(node.get("/health").await.0, 200);

    let node = Node::start();
    assert_eq!(node.get("/metrics").await.0, 401);
    let wrong = node
        .get_with("/metrics", &[("Authorization", "Bearer nope")])
        .await;
    assert_eq!(wrong.0, 401);
    assert!(node
        .metrics()
        .await
        .contains("prscd_connections_accepted_total"));
    assert_eq!(node.get("/health").await.0, 200);
}

/// The leaf the node presents to a new TLS connection.
async fn served_leaf(node: &Node) -> Vec<u8> {
    let tls = tls_connect(node.addr()).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn expiry_seconds(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("prscd_certificate_expiry_seconds "))
        .expect("prscd_certificate_expiry_seconds")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sighup_reloads_apps_and_certificate_without_dropping_connections() {
    let dir = scratch_dir("reload");
    let ca = &pki().issuer;
    let write_cert = |days: i64| {
        let (leaf, key) = ca.issue("127.0.0.1", days);
        std::fs::write(
            dir.join("chain.pem"),
            format!("{}{}", leaf.pem(), ca.cert.pem()),
        )
        .unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        leaf.der().to_vec()
    };
    // At most 14 days, so that WebTransport clients may pin it.
    let first = write_cert(13);
    let apps = tempfile(&dir, "apps.toml", "[apps.app1]\npublic_keys = [\"pk1\"]\n");
    let node = Node::start_with(&[
        ("APPS", ""),
        ("APP_TOKEN_SECRETS", ""),
        ("APPS_FILE", apps.to_str().unwrap()),
        ("CERT_FILE", dir.join("chain.pem").to_str().unwrap()),
        ("KEY_FILE", dir.join("key.pem").to_str().unwrap()),
    ]);
    assert_eq!(served_leaf(&node).await, first);
    let left = expiry_seconds(&node.metrics().await);
    assert!(
        (12.0 * 86_400.0..=13.0 * 86_400.0).contains(&left),
        "{left} s left"
    );

    // Connections made before the reload: one per transport.
    let mut alice = node.ws("pk1", "alice").await;
    alice.join("room").await;
    let conn = wt_connect_pinned(node.port, "/v1?publickey=pk1&id=dave", &first)
        .await
        .unwrap();
    let mut dave = Client::wt("dave", conn, false).await;
    dave.join("room").await;

    // New key, old key gone, a certificate that expires in 5 days.
    std::fs::write(&apps, "[apps.app1]\npublic_keys = [\"pk9\"]\n").unwrap();
    let second = write_cert(5);
    node.signal(libc::SIGHUP);
    node.wait_log("SIGHUP: reloaded").await;
    node.wait_log("expires soon").await;
    assert_eq!(served_leaf(&node).await, second);
    let metrics = node.metrics().await;
    assert!(expiry_seconds(&metrics) <= 5.0 * 86_400.0);
    assert_eq!(ws_status(&node, "/v1?publickey=pk1&id=x", &[]).await, 403);
    let mut bob = node.ws("pk9", "bob").await;
    bob.join("room").await;
    // alice, admitted before, still talks to bob, admitted after.
    alice.send(&data("room", "hi", "{}")).await;
    assert_eq!(field(&bob.recv_op("data").await, "p"), Some("alice"));
    dave.send(&data("room", "hi", "{}")).await;
    assert_eq!(field(&bob.recv_op("data").await, "p"), Some("dave"));
    assert_eq!(field(&alice.recv_op("data").await, "p"), Some("dave"));
    // New WebTransport sessions get the new certificate.
    let conn = wt_connect_pinned(node.port, "/v1?publickey=pk9&id=erin", &second).await;
    assert!(conn.is_ok(), "webtransport with the reloaded certificate");
    assert!(
        wt_connect_pinned(node.port, "/v1?publickey=pk9&id=erin", &first)
            .await
            .is_err()
    );

    // A broken file: the reload is refused and the running settings stay.
    std::fs::write(&apps, "[apps.app1]\npublic_keys = 7\n").unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("reload failed").await;
    assert_eq!(
        ws_status(&node, "/v1?publickey=pk9&id=carol", &[]).await,
        101
    );
    bob.send(&data("room", "still", "{}")).await;
    assert_eq!(field(&alice.recv_op("data").await, "p"), Some("bob"));
}

#[tokio::test]
async fn webtransport_streams_per_session_are_capped() {
    let node = Node::start_with(&[("WT_MAX_STREAMS", "2")]);
    let conn = wt_connect(node.port, "/v1?publickey=pk1&id=s")
        .await
        .unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let opening = tokio::time::timeout(WAIT, conn.open_bi())
            .await
            .unwrap()
            .unwrap();
        open.push(tokio::time::timeout(WAIT, opening).await.unwrap().unwrap());
    }
    // The third waits for the node to allow more streams, until one closes.
    let third = async { conn.open_bi().await.unwrap().await.unwrap() };
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(QUIET, &mut third).await.is_err(),
        "a third stream opened past WT_MAX_STREAMS=2"
    );
    let (mut send, recv) = open.pop().unwrap();
    send.finish().await.unwrap();
    drop(recv);
    let (mut send, _recv) = tokio::time::timeout(WAIT, third)
        .await
        .expect("a stream slot came back");
    send.write_all(&join("s", "s")).await.unwrap();
}
