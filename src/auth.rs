//! Signed identities: a compact JWT carried in the `publickey` parameter.
//!
//! The published client puts `publicKey` into the URL as given, so an app's
//! backend can mint a token per user and the page passes it as its key. The
//! node then knows who the user is (`sub` must equal the URL's `id`), which
//! app it belongs to (`app`), until when (`exp`), and optionally which
//! channels it may join and which state fields the server vouches for.
//!
//! Signatures are checked by `jsonwebtoken`; this module only picks the
//! app's keys for the algorithm the token names (HS256 secrets, ES256 and
//! EdDSA public keys) and maps failures to handshake statuses: 401 for a
//! token outside its validity period, 403 for everything else.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use std::sync::Arc;

use crate::apps::{App, Apps};

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;

/// An app's keys for verifying tokens, by family so that a token can never
/// be checked with a key of another kind (no HS/ES confusion).
#[derive(Default)]
pub struct TokenKeys {
    hs256: Vec<DecodingKey>,
    es256: Vec<(Option<String>, DecodingKey)>,
    eddsa: Vec<(Option<String>, DecodingKey)>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenKeys {{ hs256: {}, es256: {}, eddsa: {} }}",
            self.hs256.len(),
            self.es256.len(),
            self.eddsa.len()
        )
    }
}

impl TokenKeys {
    pub fn len(&self) -> usize {
        self.hs256.len() + self.es256.len() + self.eddsa.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An HS256 secret. Short secrets are refused: they can be guessed
    /// offline from any token.
    pub fn add_secret(&mut self, secret: &str) -> Result<(), String> {
        if secret.len() < 16 {
            return Err("a token secret must be at least 16 bytes".into());
        }
        self.hs256.push(DecodingKey::from_secret(secret.as_bytes()));
        Ok(())
    }

    /// An ES256 (P-256) or Ed25519 public key in PEM.
    pub fn add_pem(&mut self, pem: &str) -> Result<(), String> {
        if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            self.es256.push((None, key));
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem.as_bytes()) {
            self.eddsa.push((None, key));
        } else {
            return Err("not a PEM EC P-256 or Ed25519 public key".into());
        }
        Ok(())
    }

    /// The EC P-256 and Ed25519 keys of a JWKS document.
    pub fn add_jwks(&mut self, json: &str) -> Result<(), String> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("JWKS: {e}"))?;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {kid:?}: {e}"))?;
            match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    self.es256.push((kid, key))
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    self.eddsa.push((kid, key))
                }
                _ => return Err(format!("JWKS key {kid:?}: only EC P-256 and Ed25519 keys")),
            }
        }
        Ok(())
    }

    /// The keys to try for `alg` (and `kid`, when the token names one).
    fn candidates<'a>(&'a self, alg: Algorithm, kid: Option<&'a str>) -> Vec<&'a DecodingKey> {
        let by_kid = |keys: &'a [(Option<String>, DecodingKey)]| {
            keys.iter()
                .filter(|(k, _)| kid.is_none() || k.is_none() || k.as_deref() == kid)
                .map(|(_, key)| key)
                .collect()
        };
        match alg {
            Algorithm::HS256 => self.hs256.iter().collect(),
            Algorithm::ES256 => by_kid(&self.es256),
            Algorithm::EdDSA => by_kid(&self.eddsa),
            _ => Vec::new(),
        }
    }
}

/// What a verified token grants beyond the connection itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// Channels the peer may join: exact names, or prefixes (`room-*`).
    /// `None`: any channel.
    pub channels: Option<Vec<String>>,
    /// Fields the node sets in every state the peer sends, as msgpack.
    pub state: Vec<(String, rmpv::Value)>,
}

impl Grant {
    pub fn may_join(&self, channel: &str) -> bool {
        self.channels.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => p == channel,
            })
        })
    }
}

/// Why a token was refused, with its handshake status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.as_str())]
pub enum TokenError {
    Expired,
    NotYetValid,
    Malformed,
    UnknownApp,
    Algorithm,
    Signature,
    Claims,
    Subject,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not valid yet",
            TokenError::Malformed => "token cannot be parsed",
            TokenError::UnknownApp => "token names an unknown app",
            TokenError::Algorithm => "token algorithm is not one the app has a key for",
            TokenError::Signature => "token signature does not verify",
            TokenError::Claims => "token lacks a required claim (app, sub, exp) or has a bad one",
            TokenError::Subject => "token sub is not the id",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            TokenError::Expired | TokenError::NotYetValid => 401,
            _ => 403,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    app: String,
    sub: String,
    #[allow(dead_code)] // checked by jsonwebtoken, required here
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    state: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether a `publickey` value is a compact JWT rather than a plain key.
pub fn is_token(value: &str) -> bool {
    value.starts_with("eyJ") && value.split('.').count() == 3
}

/// Verifies `token` for the client `id`: the app it names and what it grants.
pub fn verify<'a>(
    token: &str,
    id: &str,
    apps: &'a Apps,
) -> Result<(&'a Arc<App>, Grant), TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    // The app is read unverified only to choose its keys; the claims used
    // below are the verified ones.
    let app_id = unverified_app(token).ok_or(TokenError::Claims)?;
    let app = apps.get(&app_id).ok_or(TokenError::UnknownApp)?;
    let keys = app.tokens.candidates(header.alg, header.kid.as_deref());
    if keys.is_empty() {
        return Err(TokenError::Algorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let mut refusal = TokenError::Signature;
    for key in keys {
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => return grant(data.claims, id, app),
            Err(e) => {
                refusal = match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidSignature => TokenError::Signature,
                    ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => TokenError::Claims,
                    _ => TokenError::Malformed,
                };
                // Only a bad signature can be some other key's token.
                if refusal != TokenError::Signature {
                    return Err(refusal);
                }
            }
        }
    }
    Err(refusal)
}

fn grant<'a>(
    claims: Claims,
    id: &str,
    app: &'a Arc<App>,
) -> Result<(&'a Arc<App>, Grant), TokenError> {
    if claims.app != *app.id {
        return Err(TokenError::Claims);
    }
    if claims.sub != id {
        return Err(TokenError::Subject);
    }
    if claims.iat.is_some_and(|iat| iat > unix_now() + LEEWAY_SECS) {
        return Err(TokenError::NotYetValid);
    }
    let state = claims
        .state
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "id")
        .map(|(k, v)| (k, json_to_msgpack(v)))
        .collect();
    Ok((
        app,
        Grant {
            channels: claims.channels,
            state,
        },
    ))
}

fn unverified_app(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct AppOnly {
        app: String,
    }
    serde_json::from_slice::<AppOnly>(&bytes)
        .ok()
        .map(|c| c.app)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_to_msgpack(v: serde_json::Value) -> rmpv::Value {
    use serde_json::Value as J;
    match v {
        J::Null => rmpv::Value::Nil,
        J::Bool(b) => b.into(),
        J::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.into(),
            (_, Some(i), _) => i.into(),
            (_, _, f) => f.unwrap_or(0.0).into(),
        },
        J::String(s) => s.into(),
        J::Array(a) => rmpv::Value::Array(a.into_iter().map(json_to_msgpack).collect()),
        J::Object(o) => rmpv::Value::Map(
            o.into_iter()
                .map(|(k, v)| (k.into(), json_to_msgpack(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppSources;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-secret-of-32-bytes-for-tests!!";

    fn apps() -> Apps {
        AppSources {
            pairs: Some("pk1:app1".into()),
            token_secrets: Some(format!("app1:{SECRET}")),
            ..AppSources::default()
        }
        .load()
        .unwrap()
        .unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        unix_now()
    }

    #[test]
    fn valid_token_grants_channels_and_state() {
        let apps = apps();
        let t = hs(json!({"app": "app1", "sub": "alice", "exp": now() + 60,
            "channels": ["lobby", "room-*"], "state": {"name": "Alice", "id": "x"}}));
        assert!(is_token(&t));
        let (app, grant) = verify(&t, "alice", &apps).unwrap();
        assert_eq!(&*app.id, "app1");
        assert!(grant.may_join("lobby") && grant.may_join("room-7"));
        assert!(!grant.may_join("lobby2") && !grant.may_join("roo"));
        assert_eq!(grant.state, vec![("name".to_owned(), "Alice".into())]);
    }

    #[test]
    fn refusals_and_their_statuses() {
        let apps = apps();
        let check = |t: &str| verify(t, "alice", &apps).map(|_| ()).unwrap_err();
        let t = hs(json!({"app": "app1", "sub": "alice", "exp": now() - 120}));
        assert_eq!(check(&t), TokenError::Expired);
        assert_eq!(check(&t).status(), 401);
        let t = hs(json!({"app": "app1", "sub": "alice", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(check(&t), TokenError::NotYetValid);
        let t = hs(json!({"app": "app1", "sub": "alice", "exp": now() + 600, "iat": now() + 300}));
        assert_eq!(check(&t), TokenError::NotYetValid);
        let t = hs(json!({"app": "app1", "sub": "mallory", "exp": now() + 60}));
        assert_eq!(check(&t), TokenError::Subject);
        assert_eq!(check(&t).status(), 403);
        let t = hs(json!({"app": "app9", "sub": "alice", "exp": now() + 60}));
        assert_eq!(check(&t), TokenError::UnknownApp);
        let t = hs(json!({"app": "app1", "sub": "alice"}));
        assert_eq!(check(&t), TokenError::Claims);
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"app": "app1", "sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-another-secret!!!"),
        )
        .unwrap();
        assert_eq!(check(&other), TokenError::Signature);
        // alg: none, with the payload of a valid token.
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"app": "app1", "sub": "alice", "exp": now() + 60}))
        );
        assert!(is_token(&none));
        assert_eq!(check(&none).status(), 403);
        // An ES256 header on an app that only has an HS256 secret.
        let es = format!(
            "{}.{}.c2ln",
            b64(json!({"alg": "ES256", "typ": "JWT"})),
            b64(json!({"app": "app1", "sub": "alice", "exp": now() + 60}))
        );
        assert_eq!(check(&es), TokenError::Algorithm);
        assert!(!is_token("pk1"));
    }
}
