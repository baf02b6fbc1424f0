//! The HTTP request head parser and the handshake's admission checks
//! (PROTOCOL.md §1: path, query, key or token, origin) and the presence
//! API's routing, on any bytes a TCP client can send first. Oracle: no panic; a head that parses is never
//! longer than the input; admission answers with one of its documented
//! statuses.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prscd::fuzzing::api;
use prscd::fuzzing::apps::{AppSources, Apps};
use prscd::fuzzing::transport::{self, http};

fn apps() -> &'static Apps {
    static APPS: OnceLock<Apps> = OnceLock::new();
    APPS.get_or_init(|| {
        AppSources {
            pairs: Some("k1:app1,k2:app2".into()),
            token_secrets: Some("app1:fuzz-secret-0123456789".into()),
            ..AppSources::default()
        }
        .load()
        .expect("apps")
        .expect("apps named")
    })
}

fuzz_target!(|data: &[u8]| {
    match http::parse_head(data) {
        Ok(Some((request, len))) => {
            assert!(len <= data.len());
            let origin = request.header("origin");
            let _ = request.header_has_token("connection", "upgrade");
            if let Err(e) = api::route(&request.method, request.path()) {
                assert!([400, 404, 405].contains(&e.status()), "{e:?}");
            }
            // A posted message's `data` becomes a `data` message members decode.
            if let Ok(data) = serde_json::from_slice::<serde_json::Value>(&data[len..]) {
                let msg = api::data_message("room", "backend", &data);
                let relayed =
                    prscd_wire::protocol::decode_relayed(&msg).expect("posted data decodes");
                assert_eq!(relayed.peer, "backend");
            }
            match transport::admit(&request.target, origin, apps(), 256) {
                Ok(admission) => assert!(!admission.client_id.is_empty()),
                Err(rejection) => {
                    assert!(
                        [400, 401, 403, 404].contains(&rejection.status),
                        "{rejection:?}"
                    )
                }
            }
        }
        Ok(None) => assert!(data.len() <= http::MAX_HEAD),
        Err(_) => {}
    }
});
