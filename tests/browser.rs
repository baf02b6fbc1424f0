//! End to end with a real browser: headless Chromium runs the published
//! `@yomo/presence` client against a dev node (generated certificate, dev
//! app), over native WebTransport and over the client's WebSocket polyfill.
//! The browser side lives in `tests/browser/` (see its README).
//!
//! Needs Debian's `chromium` and `npm ci` in `tests/browser` (`scripts/test`
//! installs both). Without them the test says so and passes, unless
//! `PRSCD_REQUIRE_BROWSER` is set, as `scripts/test` and CI do.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Chromium and the npm packages, or why the test is skipped.
fn browser_ready() -> Option<(&'static Path, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && root
            .join("tests/browser/node_modules/@yomo/presence")
            .exists();
    if !ready {
        assert!(
            std::env::var_os("PRSCD_REQUIRE_BROWSER").is_none(),
            "chromium or tests/browser/node_modules missing: run ./scripts/test"
        );
        eprintln!("SKIPPED: chromium or tests/browser/node_modules missing (run ./scripts/test)");
        return None;
    }
    Some((root, chromium))
}

/// A dev node (generated certificate, dev app) and its Chromium SPKI hash.
fn dev_node(extra: &[(&str, &str)]) -> (Node, String) {
    let mut env = vec![
        ("CERT_FILE", ""),
        ("KEY_FILE", ""),
        ("APPS", ""),
        ("APP_TOKEN_SECRETS", ""),
    ];
    env.extend_from_slice(extra);
    let node = Node::start_with(&env);
    let line = node.wait_log_blocking("dev certificate sha256=", Duration::from_secs(5));
    let spki = line.split("spki=").nth(1).unwrap().trim().to_owned();
    (node, spki)
}

/// Runs `tests/browser/run.mjs` and fails with its output unless it passed.
fn run_browser(root: &Path, chromium: &str, args: &[&str], nodes: &[&Node]) -> String {
    // One browser run at a time: the runner bundles into one dist/ folder.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .args(args)
        .env("CHROMIUM", chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let logs: Vec<String> = nodes.iter().map(|n| n.logs().join("\n")).collect();
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\nnode logs:\n{}",
        logs.join("\n----\n")
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    stdout
}

#[test]
fn published_client_over_webtransport_and_websocket() {
    let Some((root, chromium)) = browser_ready() else {
        return;
    };

    let (node, spki) = dev_node(&[("MESH_ID", "browser-node")]);
    let url = format!("https://127.0.0.1:{}/v1", node.port);
    run_browser(
        root,
        &chromium,
        &[
            "--url",
            &url,
            "--spki",
            &spki,
            "--publickey",
            "dev",
            "--case",
            "all",
        ],
        &[&node],
    );
    // Both transports were used by the browsers.
    assert!(node
        .logs()
        .iter()
        .any(|l| l.contains("transport=\"webtransport\"")));
    assert!(node
        .logs()
        .iter()
        .any(|l| l.contains("transport=\"websocket\"")));
}

/// The published client with a signed token per user in `publicKey`, over
/// both transports: the node verifies it, and the token's state claim
/// (a server-vouched name) is what the other page sees.
#[test]
fn published_client_with_signed_tokens() {
    let Some((root, chromium)) = browser_ready() else {
        return;
    };
    let secrets = format!("app1:{APP1_SECRET}");
    let (node, spki) = dev_node(&[("MESH_ID", "token-node"), ("APP_TOKEN_SECRETS", &secrets)]);
    let url = format!("https://127.0.0.1:{}/v1", node.port);
    run_browser(
        root,
        &chromium,
        &[
            "--url",
            &url,
            "--spki",
            &spki,
            "--token-secret",
            APP1_SECRET,
            "--token-app",
            "app1",
            "--case",
            "wt-ws",
        ],
        &[&node],
    );
    assert!(!node.logs().iter().any(|l| l.contains("DEV MODE")));
}

/// Four tabs join one room one after the other (two on native
/// WebTransport, two on the polyfill): each sees every other with its state,
/// although the node sends a repeated state only to those who lack it.
#[test]
fn published_client_in_four_tabs_of_one_room() {
    let Some((root, chromium)) = browser_ready() else {
        return;
    };
    let (node, spki) = dev_node(&[("MESH_ID", "room-node")]);
    let url = format!("https://127.0.0.1:{}/v1", node.port);
    run_browser(
        root,
        &chromium,
        &["--url", &url, "--spki", &spki, "--case", "room"],
        &[&node],
    );
}

/// One user in two tabs (one on native WebTransport, one on the polyfill)
/// and another user: closing one tab leaves the user in the other's list;
/// closing the last sends one `peer_offline`.
#[test]
fn published_client_one_user_in_two_tabs() {
    let Some((root, chromium)) = browser_ready() else {
        return;
    };
    let (node, spki) = dev_node(&[("MESH_ID", "tabs-node")]);
    let url = format!("https://127.0.0.1:{}/v1", node.port);
    run_browser(
        root,
        &chromium,
        &["--url", &url, "--spki", &spki, "--case", "tabs"],
        &[&node],
    );
}

#[test]
fn two_browsers_on_two_meshed_nodes_and_one_node_killed() {
    let Some((root, chromium)) = browser_ready() else {
        return;
    };
    let zport = free_port();
    let (eu, spki1) = dev_node(&[
        ("MESH_ID", "eu"),
        ("ZENOH_LISTEN", &format!("tcp/127.0.0.1:{zport}")),
        ("DEV_CERT_DIR", "eu-cert"),
    ]);
    let (us, spki2) = dev_node(&[
        ("MESH_ID", "us"),
        ("ZENOH_CONNECT", &format!("tcp/127.0.0.1:{zport}")),
        ("DEV_CERT_DIR", "us-cert"),
    ]);
    eu.wait_log_blocking("mesh: connected", Duration::from_secs(10));
    us.wait_log_blocking("mesh: connected", Duration::from_secs(10));
    let (url1, url2) = (
        format!("https://127.0.0.1:{}/v1", eu.port),
        format!("https://127.0.0.1:{}/v1", us.port),
    );
    let pid = us.pid().to_string();
    // Both pages join at the same moment: presence must still converge.
    let stdout = run_browser(
        root,
        &chromium,
        &[
            "--case",
            "mesh",
            "--url",
            &url1,
            "--spki",
            &spki1,
            "--url2",
            &url2,
            "--spki2",
            &spki2,
            "--kill-pid",
            &pid,
            "--mesh1",
            "eu",
            "--mesh2",
            "us",
            "--mesh-join",
            "together",
        ],
        &[&eu, &us],
    );
    assert!(stdout.contains("A sees B offline after"), "{stdout}");
}
