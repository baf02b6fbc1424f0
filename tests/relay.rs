//! PROTOCOL.md §3 on every transport (WebSocket, WebTransport datagrams,
//! WebTransport streams): join ack, relay of every op, no echo, server-set
//! `p`, no `sid`/`app`, payload byte for byte, per-sender order, app
//! isolation, and bad input dropped and counted with the connection alive.

mod common;

use std::time::Duration;

use common::*;
use rmpv::Value;

const QUIET: Duration = Duration::from_millis(300);

/// Every ordered pair of transports, so each one is both sender and receiver.
fn pairs() -> Vec<(Via, Via)> {
    ALL_VIA
        .iter()
        .flat_map(|a| ALL_VIA.iter().map(move |b| (*a, *b)))
        .collect()
}

#[tokio::test]
async fn section_3_rows_on_every_transport_pair() {
    let node = Node::start();
    for (via_a, via_b) in pairs() {
        let channel = format!("room-{via_a:?}-{via_b:?}");
        let mut a = node.connect(via_a, KEY1, "alice").await;
        let mut b = node.connect(via_b, KEY1, "bob").await;

        // Join: ack to the joiner only, with the node's mesh id.
        let ack = a.join(&channel).await;
        assert_eq!(field(&ack, "t"), Some("control"));
        assert_eq!(field(&ack, "mesh"), Some("test-node"));
        assert_eq!(field(&ack, "p"), Some(""));
        b.join(&channel).await;
        a.expect_silence(QUIET).await;

        // peer_online, peer_state, data: relayed to the other, never echoed,
        // `p` set by the server even when the client lies, payload intact.
        let st = state("bob");
        let sent = [
            control("peer_online", &channel, None),
            msg(vec![
                ("t", Value::from("control")),
                ("op", Value::from("peer_state")),
                ("c", Value::from(channel.as_str())),
                ("p", Value::from("mallory")),
                ("sid", Value::from("forged-sid")),
                ("app", Value::from("app2")),
                ("pl", Value::Binary(st.clone())),
            ]),
            data(&channel, "cursor", r#"{"x":1,"y":2}"#),
        ];
        for frame in &sent {
            b.send(frame).await;
        }
        for (frame, op) in sent.iter().zip(["peer_online", "peer_state", "data"]) {
            let got = a.recv().await;
            let expected = decode(frame);
            assert_eq!(
                field(&got, "t"),
                field(&expected, "t"),
                "{via_a:?}<-{via_b:?} {op}"
            );
            assert_eq!(field(&got, "op"), field(&expected, "op"));
            assert_eq!(field(&got, "c"), Some(channel.as_str()));
            assert_eq!(field(&got, "p"), Some("bob"), "server sets p");
            assert_eq!(field(&got, "mesh"), Some("test-node"));
            assert!(!has_key(&got, "sid") && !has_key(&got, "app"), "{got}");
            assert_eq!(
                bin(&got, "pl"),
                bin(&expected, "pl"),
                "payload byte for byte"
            );
        }
        b.expect_silence(QUIET).await;

        // peer_offline from the client: relayed, then b is out of the channel.
        b.send(&control("peer_offline", &channel, None)).await;
        let off = a.recv_op("peer_offline").await;
        assert_eq!(field(&off, "p"), Some("bob"));
        b.send(&data(&channel, "late", "{}")).await;
        a.expect_silence(QUIET).await;

        a.close().await;
        b.close().await;
    }
}

#[tokio::test]
async fn per_sender_order_and_byte_exact_payloads() {
    let node = Node::start_with(&[("PEER_MSG_RATE", "0"), ("PEER_BYTE_RATE", "0")]);
    for via in ALL_VIA {
        let mut rx = node.ws(KEY1, "rx").await;
        let mut tx = node.connect(via, KEY1, "tx").await;
        rx.join("order").await;
        tx.join("order").await;
        let n = 300;
        for i in 0..n {
            // Binary payloads with every byte value, varying sizes.
            let pl: Vec<u8> = (0..(i % 200)).map(|j| (i + j) as u8).collect();
            tx.send(&msg(vec![
                ("t", Value::from("data")),
                ("c", Value::from("order")),
                ("pl", Value::Binary(pl)),
            ]))
            .await;
            if via == Via::Datagram && i % 25 == 0 {
                // Datagrams are unreliable: pace them on loopback.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        for i in 0..n {
            let got = rx.recv_op("data").await;
            let pl: Vec<u8> = (0..(i % 200)).map(|j| (i + j) as u8).collect();
            assert_eq!(bin(&got, "pl"), Some(pl.as_slice()), "{via:?} message {i}");
        }
        rx.close().await;
        tx.close().await;
    }
}

#[tokio::test]
async fn apps_are_isolated() {
    let node = Node::start();
    let mut a1 = node.ws(KEY1, "same-id").await;
    let mut a2 = node.wt(KEY2, "same-id", false).await;
    let mut b2 = node.ws(KEY2, "other").await;
    a1.join("shared-name").await;
    a2.join("shared-name").await;
    b2.join("shared-name").await;
    a1.send(&data("shared-name", "e", "{}")).await;
    a2.expect_silence(QUIET).await;
    b2.expect_silence(QUIET).await;
    b2.send(&data("shared-name", "e", "{}")).await;
    assert_eq!(field(&a2.recv().await, "p"), Some("other"));
    a1.expect_silence(QUIET).await;
}

#[tokio::test]
async fn bad_input_is_dropped_counted_and_the_connection_lives() {
    let node = Node::start();
    for via in ALL_VIA {
        let mut bad = node.connect(via, KEY1, "bad").await;
        let mut good = node.ws(KEY1, "good").await;
        bad.join("c").await;
        good.join("c").await;

        let malformed = node.counter(&["dropped", "malformed"]).await;
        let unknown = node.counter(&["dropped", "unknown_type"]).await;
        let not_joined = node.counter(&["dropped", "not_joined"]).await;

        // Undecodable bytes (streams: a complete but non-map value, since a
        // broken stream cannot be re-split), a non-map, two values in one frame.
        if via != Via::Stream {
            bad.send(&[0xc1]).await;
            let mut two = data("c", "x", "{}");
            two.extend(data("c", "y", "{}"));
            bad.send(&two).await;
        }
        bad.send(&[0x93, 1, 2, 3]).await;
        bad.send(&msg(vec![("c", Value::from("c"))])).await;
        // Unknown t and op.
        bad.send(&msg(vec![
            ("t", Value::from("telemetry")),
            ("c", Value::from("c")),
        ]))
        .await;
        bad.send(&control("kick_everyone", "c", None)).await;
        // A channel not joined: dropped, and no peer_offline relayed anywhere.
        bad.send(&data("elsewhere", "x", "{}")).await;
        bad.send(&control("peer_offline", "elsewhere", None)).await;

        let extra = if via == Via::Stream { 0 } else { 2 };
        node.wait_counter(&["dropped", "malformed"], malformed + 2 + extra)
            .await;
        node.wait_counter(&["dropped", "unknown_type"], unknown + 2)
            .await;
        node.wait_counter(&["dropped", "not_joined"], not_joined + 2)
            .await;
        good.expect_silence(QUIET).await;

        // Still connected and relaying.
        bad.send(&data("c", "after", "{}")).await;
        assert_eq!(field(&good.recv().await, "p"), Some("bad"), "{via:?}");
        good.close().await;
        bad.close().await;
    }
}

#[tokio::test]
async fn a_broken_stream_is_stopped_but_the_session_lives() {
    let node = Node::start();
    let mut good = node.ws(KEY1, "good").await;
    good.join("c").await;
    let conn = wt_connect(node.port, "/v1?publickey=pk1&id=wt")
        .await
        .unwrap();
    let mut wt = Client::wt("wt", conn.clone(), false).await;
    wt.join("c").await;
    let before = node.counter(&["dropped", "malformed"]).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap().await.unwrap();
    send.write_all(&[0xc1, 0xc1]).await.unwrap();
    node.wait_counter(&["dropped", "malformed"], before + 1)
        .await;
    wt.send(&data("c", "still-here", "{}")).await;
    assert_eq!(field(&good.recv().await, "p"), Some("wt"));
}

#[tokio::test]
async fn a_peer_can_be_in_several_channels() {
    let node = Node::start();
    let mut a = node.ws(KEY1, "a").await;
    let mut b = node.ws(KEY1, "b").await;
    for c in ["one", "two"] {
        a.join(c).await;
        b.join(c).await;
    }
    a.send(&data("two", "e", "{}")).await;
    assert_eq!(field(&b.recv().await, "c"), Some("two"));
    // Closing a leaves both channels: b gets one peer_offline per channel.
    a.close().await;
    let mut channels = vec![
        field(&b.recv_op("peer_offline").await, "c")
            .unwrap()
            .to_owned(),
        field(&b.recv_op("peer_offline").await, "c")
            .unwrap()
            .to_owned(),
    ];
    channels.sort();
    assert_eq!(channels, ["one", "two"]);
}
