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

#[test]
fn published_client_over_webtransport_and_websocket() {
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
        return;
    }

    let node = Node::start_with(&[
        ("CERT_FILE", ""),
        ("KEY_FILE", ""),
        ("APPS", ""),
        ("MESH_ID", "browser-node"),
    ]);
    let line = node.wait_log_blocking("dev certificate sha256=", Duration::from_secs(5));
    let spki = line.split("spki=").nth(1).unwrap().trim().to_owned();

    let output = Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .args(["--url", &format!("https://127.0.0.1:{}/v1", node.port)])
        .args(["--spki", &spki, "--publickey", "dev", "--case", "all"])
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\nnode log:\n{}",
        node.logs().join("\n")
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
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
