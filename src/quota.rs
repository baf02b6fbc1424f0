//! Connection caps per app and per client IP, checked at the handshake.
//!
//! A connection takes a [`Slot`] before its upgrade is answered and holds it
//! for its life; the count goes down when the slot is dropped, however the
//! connection ended. Over a cap, the handshake is answered 429.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::apps::App;

#[derive(Debug, Default)]
pub struct Quotas {
    apps: Mutex<HashMap<Arc<str>, AppCount>>,
}

#[derive(Debug, Default)]
struct AppCount {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    App,
    Ip,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::App => "too many connections for this app",
            Refused::Ip => "too many connections for this app from this address",
        }
    }
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct Slot {
    quotas: Arc<Quotas>,
    app: Arc<str>,
    ip: IpAddr,
}

impl Quotas {
    /// Counts a connection of `app` from `ip`, within the app's caps.
    pub fn acquire(self: &Arc<Self>, app: &App, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = ip.to_canonical();
        let limits = &app.limits;
        let mut apps = self.lock();
        let count = apps.entry(app.id.clone()).or_default();
        if limits.max_connections != 0 && count.total >= limits.max_connections {
            return Err(Refused::App);
        }
        let from_ip = count.per_ip.entry(ip).or_default();
        if limits.max_connections_per_ip != 0 && *from_ip >= limits.max_connections_per_ip {
            return Err(Refused::Ip);
        }
        *from_ip += 1;
        count.total += 1;
        Ok(Slot {
            quotas: self.clone(),
            app: app.id.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, AppCount>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut apps = self.quotas.lock();
        let Some(count) = apps.get_mut(&self.app) else {
            return;
        };
        count.total -= 1;
        if let Some(n) = count.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                count.per_ip.remove(&self.ip);
            }
        }
        if count.total == 0 {
            apps.remove(&self.app);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppLimits;

    #[test]
    fn caps_per_app_and_per_ip_and_release_on_drop() {
        let quotas = Arc::new(Quotas::default());
        let app = App::new(
            "a",
            AppLimits {
                max_connections: 3,
                max_connections_per_ip: 2,
                ..AppLimits::default()
            },
        );
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let s1 = quotas.acquire(&app, ip1).unwrap();
        let _s2 = quotas.acquire(&app, ip1).unwrap();
        assert_eq!(quotas.acquire(&app, ip1).unwrap_err(), Refused::Ip);
        let _s3 = quotas.acquire(&app, ip2).unwrap();
        assert_eq!(
            quotas
                .acquire(&app, "10.0.0.2".parse().unwrap())
                .unwrap_err(),
            Refused::App
        );
        drop(s1);
        let _s4 = quotas.acquire(&app, ip1).unwrap();
        let other = App::new("b", AppLimits::default());
        let _s5 = quotas.acquire(&other, ip1).unwrap();
    }
}
