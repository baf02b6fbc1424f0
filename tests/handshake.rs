//! PROTOCOL.md §1 on both transports: statuses, headers, `/health`, the
//! certificate checks at start-up, and the dev defaults.

mod common;

use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn websocket_handshake_rows_and_headers() {
    let node = Node::start();
    let addr = node.addr();
    let rows = [
        ("/v2?publickey=pk1&id=a", 404),
        ("/?publickey=pk1&id=a", 404),
        ("/v1?publickey=pk1", 401),
        ("/v1?publickey=pk1&id=", 401),
        ("/v1?id=a", 401),
        ("/v1?id=a&publickey=", 401),
        ("/v1?id=a&publickey=nope", 403),
        ("/v1?id=a%zz&publickey=pk1", 400),
    ];
    for (target, status) in rows {
        let Err((got, headers)) = ws_handshake(addr, target).await else {
            panic!("{target} was accepted");
        };
        assert_eq!(got, status, "{target}");
        assert_eq!(
            header(&headers, "x-prscd-meshid"),
            Some("test-node"),
            "{target}"
        );
        assert!(header(&headers, "x-prscd-version").is_some(), "{target}");
    }
    let (_ws, headers) = ws_handshake(addr, "/v1?publickey=pk1&id=alice")
        .await
        .unwrap();
    assert_eq!(header(&headers, "x-prscd-meshid"), Some("test-node"));
    assert_eq!(
        header(&headers, "x-prscd-version"),
        Some(env!("CARGO_PKG_VERSION"))
    );

    // A plain GET on /v1 is told to upgrade.
    let (status, headers, _) = node.get("/v1?publickey=pk1&id=a").await;
    assert_eq!(status, 426);
    assert_eq!(header(&headers, "x-prscd-meshid"), Some("test-node"));

    let (_, health) = node.health().await;
    let rejected = &health["handshake_rejected"];
    assert_eq!(
        (rejected["404"].as_u64(), rejected["401"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(
        (rejected["403"].as_u64(), rejected["400"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(rejected["426"], 1);
}

#[tokio::test]
async fn webtransport_handshake_rows() {
    let node = Node::start();
    // wtransport answers 404 and 403 (400/401 are answered 403: see the
    // transport's docs); the client sees a rejection, the server counts the
    // precise status.
    let rows = [
        ("/v2?publickey=pk1&id=a", "404"),
        ("/v1?publickey=pk1", "401"),
        ("/v1?id=a", "401"),
        ("/v1?id=a&publickey=nope", "403"),
        ("/v1?id=%zz&publickey=pk1", "400"),
    ];
    for (path, status) in rows {
        let before = node.counter(&["handshake_rejected", status]).await;
        let Err(err) = wt_connect(node.port, path).await else {
            panic!("{path} was accepted");
        };
        assert!(
            matches!(err, wtransport::error::ConnectingError::SessionRejected),
            "{path}: {err}"
        );
        assert_eq!(
            node.counter(&["handshake_rejected", status]).await,
            before + 1,
            "{path}"
        );
    }
    let conn = wt_connect(node.port, "/v1?publickey=pk1&id=alice")
        .await
        .unwrap();
    assert!(conn.max_datagram_size().is_some());
    node.wait_counter(&["connections", "webtransport"], 1).await;
}

#[tokio::test]
async fn health_is_json_on_the_tls_port() {
    let node = Node::start();
    let (status, headers, body) = node.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["service"], "prscd");
    assert_eq!(v["mesh_id"], "test-node");
    assert!(std::fs::read_to_string(node.dir.join("prscd.pid"))
        .unwrap()
        .trim()
        .parse::<i32>()
        .is_ok_and(|pid| pid == node.pid()));
}

#[tokio::test]
async fn dev_defaults_generate_a_pinnable_certificate_and_a_dev_app() {
    let node = Node::start_with(&[
        ("CERT_FILE", ""),
        ("KEY_FILE", ""),
        ("APPS", ""),
        ("APP_TOKEN_SECRETS", ""),
        ("MESH_ID", ""),
        ("HOST", ""),
    ]);
    node.wait_log("DEV MODE").await;
    // A dev node listens on loopback unless HOST says otherwise.
    node.wait_log("host=127.0.0.1").await;
    node.wait_log("MESH_ID is not set").await;
    let line = node.wait_log("dev certificate sha256=").await;
    let hex = line
        .split("sha256=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let spki = line.split("spki=").nth(1).unwrap().trim();
    assert_eq!(spki.len(), 44, "base64 of 32 bytes");
    node.wait_log("--ignore-certificate-errors-spki-list=")
        .await;

    // The printed hash is the one a browser pins: a client pinning it connects.
    let pem = std::fs::read(node.dir.join(".prscd-dev/cert.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let printed: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(printed, hex);
    let conn = wt_connect_pinned(node.port, "/v1?publickey=dev&id=a", &der)
        .await
        .unwrap();
    drop(conn);
    // Only the dev key is accepted.
    assert!(wt_connect_pinned(node.port, "/v1?publickey=pk1&id=a", &der)
        .await
        .is_err());
}

/// Starts a node that must refuse to start; returns its last log line.
fn refused(env: &[(&str, &str)]) -> String {
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.push(("APPS".into(), "k:a".into()));
    vars.push(("MESH_ID".into(), "refused".into()));
    refused_exactly(&vars)
}

/// Starts a node with exactly `vars`, which must refuse to start; returns
/// its last log line.
fn refused_exactly(vars: &[(String, String)]) -> String {
    let mut node = Node::spawn(vars);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("should exit");
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(100));
    let logs = node.logs();
    assert!(!logs.iter().any(|l| l.contains("ready:")), "{logs:?}");
    logs.last().cloned().unwrap_or_default()
}

#[test]
fn refuses_bad_certificates_with_a_one_line_reason() {
    crypto();
    let dir = scratch_dir("badcert");
    let now = time::OffsetDateTime::now_utc();
    let write = |name: &str, when: time::OffsetDateTime| {
        let (cert, key) = prscd::fuzzing::tls::generate_dev_pem(when).unwrap();
        let c = tempfile(&dir, &format!("{name}.pem"), &cert);
        let k = tempfile(&dir, &format!("{name}.key"), &key);
        (c.display().to_string(), k.display().to_string())
    };
    let (c, k) = write("expired", now - time::Duration::days(40));
    let line = refused(&[("CERT_FILE", &c), ("KEY_FILE", &k)]);
    assert!(line.contains("expired"), "{line}");
    let (c, k) = write("future", now + time::Duration::days(5));
    let line = refused(&[("CERT_FILE", &c), ("KEY_FILE", &k)]);
    assert!(line.contains("not valid before"), "{line}");
    let line = refused(&[("CERT_FILE", "/nonexistent/cert.pem"), ("KEY_FILE", &k)]);
    assert!(line.contains("cannot read /nonexistent/cert.pem"), "{line}");
    let line = refused(&[("CERT_FILE", &c)]);
    assert!(line.contains("KEY_FILE"), "{line}");
    let line = refused(&[("PORT", "eighty")]);
    assert!(line.contains("PORT"), "{line}");
}

#[test]
fn mesh_id_is_required_outside_dev_mode() {
    let line = refused_exactly(&[("APPS".into(), "k:a".into())]);
    assert!(line.contains("MESH_ID is required"), "{line}");
}

#[tokio::test]
async fn deprecated_yomo_variables_only_warn() {
    let node = Node::start_with(&[("YOMO_ZIPPER", "localhost:9000"), ("YOMO_SNDR_NAME", "x")]);
    node.wait_log("YOMO_ZIPPER is deprecated").await;
    node.wait_log("YOMO_SNDR_NAME is deprecated").await;
    assert_eq!(node.health().await.0, 200);
}

#[tokio::test]
async fn apps_file_is_read() {
    let dir = scratch_dir("appsfile");
    let file = tempfile(&dir, "apps", "# key:app\nfilekey:fileapp\n");
    let node = Node::start_with(&[("APPS", ""), ("APPS_FILE", file.to_str().unwrap())]);
    let mut a = node.ws("filekey", "a").await;
    a.join("c").await;
    assert_eq!(
        ws_handshake(node.addr(), "/v1?publickey=pk1&id=b")
            .await
            .err()
            .map(|e| e.0),
        Some(403)
    );
}
