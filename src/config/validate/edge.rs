//! Validation of the edge keys: a listener's `accept_proxy` / `trusted` / `proxy_timeout`
//! and `routes` / `inspect_timeout`, a backend's `send_proxy` and `health.send_proxy`.

use std::time::Duration;

use super::super::schema::{RawListener, S};
use super::super::{AcceptProxy, ProxyVersion, RouteConfig};
use super::Validator;
use crate::edge::sni::SniRoutes;
use crate::edge::source_rules::Cidr;

/// How long a trusted balancer has to send its PROXY header, unless `proxy_timeout` says.
pub(in crate::config) const PROXY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client has to send its ClientHello, unless `inspect_timeout` says.
pub(in crate::config) const INSPECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A listener's edge settings, validated.
pub(in crate::config) struct ListenerEdge {
    pub(in crate::config) accept_proxy: Option<AcceptProxy>,
    pub(in crate::config) routes: Vec<RouteConfig>,
    pub(in crate::config) inspect_timeout: Duration,
}

impl Validator<'_> {
    pub(super) fn listener_edge(&mut self, name: &str, l: &RawListener, backends: &[&str]) -> ListenerEdge {
        let accept = l.accept_proxy.as_ref().is_some_and(|a| *a.get_ref());
        let mut trusted = Vec::new();
        for c in l.trusted.as_ref().map(|t| t.get_ref().as_slice()).unwrap_or(&[]) {
            match c.get_ref().parse::<Cidr>() {
                Ok(cidr) => trusted.push(cidr),
                Err(e) => self.error(&c.span(), format!("listener {name:?}: trusted: {e}")),
            }
        }
        if accept && l.trusted.as_ref().is_none_or(|t| t.get_ref().is_empty()) {
            let span = l.accept_proxy.as_ref().map(|a| a.span()).unwrap_or(0..0);
            self.error(
                &span,
                format!(
                    "listener {name:?}: accept_proxy = true needs trusted = [\"CIDR\", ...], the addresses of the balancers allowed to send the header"
                ),
            );
        }
        if !accept {
            for (key, span) in [
                ("trusted", l.trusted.as_ref().map(|t| t.span())),
                ("proxy_timeout", l.proxy_timeout.as_ref().map(|t| t.span())),
            ] {
                if let Some(span) = span {
                    self.error(
                        &span,
                        format!("listener {name:?}: {key} applies only with accept_proxy = true"),
                    );
                }
            }
        }
        let proxy_timeout = self.positive_duration("proxy_timeout", &l.proxy_timeout, PROXY_TIMEOUT);
        let accept_proxy = accept.then_some(AcceptProxy {
            trusted,
            timeout: proxy_timeout,
        });

        let mut routes = Vec::new();
        for r in l.routes.as_ref().map(|r| r.get_ref().as_slice()).unwrap_or(&[]) {
            let r = r.get_ref();
            let backend = r.backend.get_ref().clone();
            if !backends.contains(&backend.as_str()) {
                let msg = super::unknown_backend(name, &backend, backends);
                self.error(&r.backend.span(), msg);
            }
            let sni: Vec<String> = r.sni.get_ref().iter().map(|p| p.get_ref().clone()).collect();
            if sni.is_empty() {
                self.error(
                    &r.sni.span(),
                    format!("listener {name:?}: a route's sni is empty; give at least one name"),
                );
            }
            for p in r.sni.get_ref() {
                if let Err(e) = SniRoutes::new([(vec![p.get_ref().clone()], ())]) {
                    self.error(&p.span(), format!("listener {name:?}: {e}"));
                }
            }
            routes.push(RouteConfig { sni, backend });
        }
        if let Err(e @ crate::edge::sni::PatternError::Duplicate { .. }) =
            SniRoutes::new(routes.iter().map(|r| (r.sni.clone(), ())))
        {
            let span = l.routes.as_ref().map(|r| r.span()).unwrap_or(0..0);
            self.error(&span, format!("listener {name:?}: {e}"));
        }
        if routes.is_empty() {
            if let Some(t) = &l.inspect_timeout {
                self.error(
                    &t.span(),
                    format!("listener {name:?}: inspect_timeout applies only with routes"),
                );
            }
        }
        let inspect_timeout = self.positive_duration("inspect_timeout", &l.inspect_timeout, INSPECT_TIMEOUT);
        ListenerEdge {
            accept_proxy,
            routes,
            inspect_timeout,
        }
    }

    /// `health.send_proxy = true` sends the backend's version; without one it is an error.
    pub(super) fn health_send_proxy(
        &mut self,
        backend: &str,
        flag: &Option<S<bool>>,
        version: Option<ProxyVersion>,
    ) -> Option<ProxyVersion> {
        let flag = flag.as_ref()?;
        if !*flag.get_ref() {
            return None;
        }
        if version.is_none() {
            self.error(
                &flag.span(),
                format!(
                    "backend {backend:?}: health send_proxy = true needs the backend's send_proxy = \"v1\" or \"v2\""
                ),
            );
        }
        version
    }
}
