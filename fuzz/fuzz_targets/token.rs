//! The signed-token path of the handshake. Two inputs in one: raw bytes as
//! a `publickey` (headers, base64, JSON and signatures as an attacker writes
//! them), and, when the input splits at a NUL into two JSON objects, a
//! header and claims signed with the app's real secret, so the fuzzer also
//! reaches the claims checks behind a valid signature. Oracle: no panic;
//! every refusal is 401 or 403; a granted token names the app it was signed
//! for and the id it was presented with.
#![no_main]
use std::sync::OnceLock;

use jsonwebtoken::{EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use prscd::fuzzing::apps::{AppSources, Apps};
use prscd::fuzzing::auth;

const SECRET: &str = "fuzz-secret-0123456789";

fn apps() -> &'static Apps {
    static APPS: OnceLock<Apps> = OnceLock::new();
    APPS.get_or_init(|| {
        AppSources {
            pairs: Some("k1:app1".into()),
            token_secrets: Some(format!("app1:{SECRET},app2:other-secret-0123456789")),
            ..AppSources::default()
        }
        .load()
        .expect("apps")
        .expect("apps named")
    })
}

fn check(token: &str, id: &str) {
    match auth::verify(token, id, apps()) {
        Ok((app, grant)) => {
            assert!(&*app.id == "app1" || &*app.id == "app2");
            let _ = grant.may_join("room");
        }
        Err(e) => assert!(matches!(e.status(), 401 | 403), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        check(raw, "alice");
    }
    let Some(cut) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Header>(&data[..cut]),
        serde_json::from_slice::<serde_json::Value>(&data[cut + 1..]),
    ) else {
        return;
    };
    if let Ok(token) = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    ) {
        let id = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or("alice");
        check(&token, id);
    }
});
