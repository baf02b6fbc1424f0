//! What a signed token costs at the handshake: `transport::admit` of a
//! target carrying an HS256 token against one carrying a plain key, in a
//! loop (README, "Signed tokens"; BENCHMARKS.md).
//!
//!     cargo run --release --example authbench

fn main() {
    let apps = prscd::fuzzing::apps::AppSources {
        pairs: Some("k:bench".into()),
        token_secrets: Some("bench:bench-token-secret-0123456789abcdef".into()),
        ..Default::default()
    }
    .load()
    .unwrap()
    .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"app": "bench", "sub": "c1", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"bench-token-secret-0123456789abcdef"),
    )
    .unwrap();
    let n = 100_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let r = prscd::fuzzing::transport::admit(
            &format!("/v1?publickey={token}&id=c1"),
            None,
            &apps,
            256,
        )
        .unwrap();
        std::hint::black_box(r);
    }
    let tok = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let r =
            prscd::fuzzing::transport::admit("/v1?publickey=k&id=c1", None, &apps, 256).unwrap();
        std::hint::black_box(r);
    }
    let plain = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("admit with token: {tok:.2} us, plain key: {plain:.2} us");
}
