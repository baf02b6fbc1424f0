//! Connections ending (close, reset, idle, protocol error, slow reader) and
//! the node ending (drain on SIGTERM), plus the inspection signals. Each
//! ending must yield exactly one `peer_offline` to the others.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

async fn expect_offline(watcher: &mut Client, id: &str) {
    let off = watcher.recv_op("peer_offline").await;
    assert_eq!(field(&off, "p"), Some(id));
    watcher.expect_silence(QUIET).await; // exactly one
}

#[tokio::test]
async fn close_yields_peer_offline_on_every_transport() {
    let node = Node::start();
    let mut watcher = node.ws(KEY1, "watcher").await;
    watcher.join("c").await;
    for via in ALL_VIA {
        let mut leaver = node.connect(via, KEY1, "leaver").await;
        leaver.join("c").await;
        leaver.close().await;
        expect_offline(&mut watcher, "leaver").await;
    }
}

#[tokio::test]
async fn tcp_reset_yields_peer_offline() {
    let node = Node::start();
    let mut watcher = node.ws(KEY1, "watcher").await;
    watcher.join("c").await;
    let mut victim = node.ws(KEY1, "victim").await;
    victim.join("c").await;
    let tcp = victim.ws_mut().get_ref().get_ref().0;
    tcp.set_zero_linger().unwrap();
    drop(victim); // RST, no close frame
    expect_offline(&mut watcher, "victim").await;
}

#[tokio::test]
async fn websocket_keepalive_pings_and_idle_reaping() {
    let node = Node::start_with(&[
        ("KEEPALIVE_INTERVAL_MS", "300"),
        ("IDLE_TIMEOUT_MS", "1500"),
    ]);
    let mut watcher = node.ws(KEY1, "watcher").await;
    watcher.join("c").await;

    // The server pings with the 8-byte big-endian Unix time in ms.
    let mut live = node.ws(KEY1, "live").await;
    live.join("c").await;
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Ping(p))) = live.ws_mut().next().await {
                return p;
            }
        }
    })
    .await
    .expect("a ping");
    let sent = u64::from_be_bytes(ping.as_ref().try_into().expect("8 bytes"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now.abs_diff(sent) < 5_000,
        "ping carries the time: {sent} vs {now}"
    );

    // The live peer keeps reading (so its client answers pings) throughout.
    let reader = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(4000);
        while Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(100), live.ws_mut().next()).await;
        }
        live
    });

    // A peer that stops answering (reads nothing, so sends no Pong) is reaped.
    let mut dead = node.ws(KEY1, "dead").await;
    dead.join("c").await;
    let started = Instant::now();
    let off = watcher.recv_op("peer_offline").await;
    assert_eq!(field(&off, "p"), Some("dead"));
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "reaped too early"
    );

    // The live peer outlives two idle timeouts: the watcher hears nothing more.
    watcher.expect_silence(Duration::from_millis(2000)).await;
    let live = reader.await.unwrap();
    assert!(started.elapsed() > Duration::from_millis(3000));
    drop(live);
    node.wait_log("rtt_ms").await;
    drop(dead);
}

/// A UDP relay that can be cut, to make a QUIC peer vanish.
async fn udp_relay(server: SocketAddr, cut: Arc<AtomicBool>) -> u16 {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let port = front.local_addr().unwrap().port();
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, c, k) = (front.clone(), back.clone(), client.clone(), cut.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if !k.load(Ordering::Relaxed) {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    port
}

#[tokio::test]
async fn webtransport_idle_timeout_yields_peer_offline() {
    let node = Node::start_with(&[
        ("KEEPALIVE_INTERVAL_MS", "300"),
        ("IDLE_TIMEOUT_MS", "1500"),
    ]);
    let mut watcher = node.ws(KEY1, "watcher").await;
    watcher.join("c").await;
    let cut = Arc::new(AtomicBool::new(false));
    let relay = udp_relay(node.addr(), cut.clone()).await;
    let conn = wt_connect(relay, "/v1?publickey=pk1&id=vanishing")
        .await
        .unwrap();
    let mut peer = Client::wt("vanishing", conn, false).await;
    peer.join("c").await;
    // Alive through keep-alives for longer than the idle timeout.
    watcher.expect_silence(Duration::from_millis(2000)).await;
    cut.store(true, Ordering::Relaxed);
    let started = Instant::now();
    expect_offline(&mut watcher, "vanishing").await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test]
async fn text_frame_closes_1003_with_peer_offline() {
    let node = Node::start();
    let mut watcher = node.ws(KEY1, "watcher").await;
    watcher.join("c").await;
    let mut texter = node.ws(KEY1, "texter").await;
    texter.join("c").await;
    texter
        .ws_mut()
        .send(Message::Text("hello".into()))
        .await
        .unwrap();
    assert_eq!(texter.closed_with().await, Some(1003));
    expect_offline(&mut watcher, "texter").await;
    assert_eq!(node.counter(&["dropped", "text_frame"]).await, 1);
}

#[tokio::test]
async fn oversize_message_closes_1009_on_websocket_and_streams() {
    let node = Node::start_with(&[("MAX_MESSAGE_SIZE", "4096")]);
    let mut watcher = node.ws(KEY1, "watcher").await;
    watcher.join("c").await;
    for (i, via) in [Via::Ws, Via::Stream].into_iter().enumerate() {
        let mut big = node.connect(via, KEY1, "big").await;
        big.join("c").await;
        // Just under the limit passes.
        let ok = data("c", "fits", &"x".repeat(3000));
        big.send(&ok).await;
        assert_eq!(field(&watcher.recv().await, "p"), Some("big"));
        big.send(&data("c", "huge", &"x".repeat(5000))).await;
        assert_eq!(big.closed_with().await, Some(1009), "{via:?}");
        expect_offline(&mut watcher, "big").await;
        assert_eq!(node.counter(&["dropped", "oversize"]).await, i as u64 + 1);
    }
}

#[tokio::test]
async fn slow_reader_is_dropped_while_the_channel_keeps_flowing() {
    let node = Node::start_with(&[
        ("PEER_QUEUE", "256"),
        ("PEER_MSG_RATE", "0"),
        ("PEER_BYTE_RATE", "0"),
    ]);
    let mut fast = node.ws(KEY1, "fast").await;
    let mut slow = node.ws(KEY1, "slow").await;
    let mut sender = node.ws(KEY1, "sender").await;
    for c in [&mut fast, &mut slow, &mut sender] {
        c.join("c").await;
    }
    // `slow` never reads: its socket buffers fill, then its queue. The
    // sender stays at most 128 messages ahead of `fast`, so `fast` (queue
    // 256) is never the one that is dropped, however busy this machine is.
    let n = 1000;
    let blob = "y".repeat(60_000);
    let received = std::sync::atomic::AtomicUsize::new(0);
    let send = async {
        for i in 0..n {
            while i - received.load(Ordering::Relaxed) > 128 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sender.send(&data("c", &i.to_string(), &blob)).await;
        }
    };
    let receive = async {
        let mut slow_offline = false;
        while received.load(Ordering::Relaxed) < n {
            let v = fast.recv().await;
            match field(&v, "op") {
                Some("peer_offline") => {
                    assert_eq!(field(&v, "p"), Some("slow"));
                    slow_offline = true;
                }
                _ => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        slow_offline || field(&fast.recv_op("peer_offline").await, "p") == Some("slow")
    };
    let ((), offline_seen) = tokio::join!(send, receive);
    assert!(offline_seen, "fast must see slow go offline");
    assert_eq!(node.counter(&["dropped", "slow_reader"]).await, 1);
    // The slow reader's connection is gone: reading it ends.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = slow.ws_mut().next().await {}
    })
    .await;
    assert!(drained.is_ok(), "slow reader's connection must end");
}

#[tokio::test]
async fn datagram_too_large_is_counted_and_streams_still_get_it() {
    let node = Node::start();
    let mut sender = node.ws(KEY1, "sender").await;
    let mut dgram = node.wt(KEY1, "dgram", false).await;
    let mut stream = node.wt(KEY1, "stream", true).await;
    for c in [&mut sender, &mut dgram, &mut stream] {
        c.join("c").await;
    }
    let max = dgram.wt_conn().max_datagram_size().unwrap();
    let big = data("c", "big", &"z".repeat(max + 100));
    sender.send(&big).await;
    assert_eq!(bin(&stream.recv().await, "pl"), bin(&decode(&big), "pl"));
    node.wait_counter(&["dropped", "datagram_too_large"], 1)
        .await;
    dgram.expect_silence(QUIET).await;
    // Small ones still flow to the datagram peer.
    sender.send(&data("c", "small", "{}")).await;
    assert_eq!(field(&dgram.recv().await, "p"), Some("sender"));
}

#[tokio::test]
async fn sigterm_drains() {
    let mut node = Node::start_with(&[("DRAIN_GRACE_MS", "1500"), ("DRAIN_TIMEOUT_MS", "3000")]);
    let mut a = node.ws(KEY1, "a").await;
    let mut b = node.wt(KEY1, "b", false).await;
    a.join("c").await;
    b.join("c").await;
    let started = Instant::now();
    node.signal(libc::SIGTERM);
    node.wait_log("SIGTERM").await;

    // During the grace: health 503, new connections refused, old ones served.
    let (status, health) = node.health().await;
    assert_eq!((status, health["status"].as_str()), (503, Some("draining")));
    let refused = ws_handshake(node.addr(), "/v1?publickey=pk1&id=late")
        .await
        .err()
        .map(|e| e.0);
    assert_eq!(refused, Some(503));
    assert!(wt_connect(node.port, "/v1?publickey=pk1&id=late2")
        .await
        .is_err());
    a.send(&data("c", "still", "{}")).await;
    assert_eq!(field(&b.recv().await, "p"), Some("a"));

    // Then each hears the other go away, and is closed with 1001.
    assert_eq!(field(&a.recv_op("peer_offline").await, "p"), Some("b"));
    assert_eq!(field(&b.recv_op("peer_offline").await, "p"), Some("a"));
    assert_eq!(a.closed_with().await, Some(1001));
    assert_eq!(b.closed_with().await, Some(1001));
    let status = node
        .wait_exit(Duration::from_secs(6))
        .expect("exits after the drain");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(!node.dir.join("prscd.pid").exists(), "pid file removed");
    std::thread::sleep(Duration::from_millis(100));
    let logs = node.logs();
    assert!(
        !logs.iter().any(|l| l.contains("panicked")),
        "{}",
        logs.join("\n")
    );
}

#[tokio::test]
async fn sigusr1_dumps_state_and_sigusr2_counts_connections() {
    let node = Node::start();
    let mut a = node.ws(KEY1, "alice").await;
    let mut b = node.wt(KEY1, "bob", false).await;
    let mut c = node.ws(KEY2, "carol").await;
    a.join("room").await;
    a.join("hall").await;
    b.join("room").await;
    c.join("room").await;
    node.signal(libc::SIGUSR1);
    let line = node.wait_log("dump: app=app1 channel=room members=2").await;
    assert!(
        line.contains("alice") && line.contains("bob") && line.contains("webtransport"),
        "{line}"
    );
    node.wait_log("dump: app=app2 channel=room members=1").await;
    node.signal(libc::SIGUSR2);
    let line = node.wait_log(r#""app_id":"app1""#).await;
    assert!(
        line.contains(r#""conns":2"#),
        "connections, not memberships: {line}"
    );
    node.wait_log("conns: total websocket=2 webtransport=1")
        .await;
}
