//! The admin token (`ADMIN_TOKEN`): what guards the operator-only endpoints
//! of the admin port (`METRICS_PORT`), such as live profiles. One check,
//! shared by every such endpoint, so that they all refuse alike.
//!
//! Without a token set these endpoints do not exist (404): a node never
//! serves a profile of itself to whoever reaches the port.

use crate::transport::http::Request;

/// What an admin-only endpoint does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// 401: no `Authorization: Bearer <ADMIN_TOKEN>`, or another token.
    Unauthorized,
    /// 404: no `ADMIN_TOKEN` is configured.
    Off,
}

impl Access {
    /// The refusal's status and body, `None` when granted.
    pub fn refusal(self) -> Option<(u16, &'static str)> {
        match self {
            Access::Granted => None,
            Access::Unauthorized => Some((401, "admin bearer token required\n")),
            Access::Off => Some((404, "not found (set ADMIN_TOKEN to enable)\n")),
        }
    }
}

/// Whether `request` carries `Authorization: Bearer <token>`; always false
/// without a token.
#[cfg(test)]
pub fn authorized(request: &Request, token: Option<&str>) -> bool {
    access(request, token) == Access::Granted
}

pub fn access(request: &Request, token: Option<&str>) -> Access {
    let Some(token) = token else {
        return Access::Off;
    };
    let given = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given, token) => Access::Granted,
        _ => Access::Unauthorized,
    }
}

/// Compares secrets without an early exit that would time their prefix.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            target: "/debug/pprof/profile".into(),
            headers: auth
                .map(|v| vec![("authorization".to_owned(), v.to_owned())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn bearer_token_or_nothing() {
        let token = Some("0123456789abcdef");
        assert_eq!(
            access(&request(Some("Bearer 0123456789abcdef")), token),
            Access::Granted
        );
        assert!(authorized(&request(Some("Bearer 0123456789abcdef")), token));
        for wrong in [
            None,
            Some("Bearer 0123456789abcdeX"),
            Some("0123456789abcdef"),
        ] {
            assert_eq!(access(&request(wrong), token), Access::Unauthorized);
        }
        assert_eq!(
            access(&request(Some("Bearer 0123456789abcdef")), None),
            Access::Off
        );
        assert!(!authorized(&request(None), None));
    }
}
