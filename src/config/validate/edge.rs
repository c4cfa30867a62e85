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

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Diagnostic, ProxyVersion};

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        Config::parse(text, "test.toml").map_err(|e| match e {
            ConfigError::Invalid(d) => d,
            other => panic!("unexpected {other}"),
        })
    }

    fn with_listener(keys: &str, backend_keys: &str) -> String {
        format!(
            r#"
[[listener]]
name = "https"
bind = "127.0.0.1:443"
backend = "ingress"
{keys}

[backend.ingress]
servers = ["127.0.4.20:443"]
{backend_keys}

[backend.control-plane]
servers = ["127.0.4.11:6443"]
"#
        )
    }

    fn one_error(text: &str) -> Diagnostic {
        let errors = parse(text).expect_err("should be refused");
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn edge_keys_read_into_typed_values() {
        let c = parse(&with_listener(
            r#"accept_proxy = true
trusted = ["192.168.4.1/32", "fd00::/8"]
proxy_timeout = "1s"
routes = [{ sni = ["k8s.example.com", "*.k8s.example.com"], backend = "control-plane" }]
inspect_timeout = "2s""#,
            r#"send_proxy = "v2"
health = { check = "tcp", send_proxy = true }"#,
        ))
        .unwrap();
        let l = &c.listeners[0];
        let a = l.accept_proxy.as_ref().unwrap();
        assert_eq!(a.trusted.len(), 2);
        assert_eq!(a.timeout.as_secs(), 1);
        assert_eq!(l.routes[0].backend, "control-plane");
        assert_eq!(l.routes[0].sni, ["k8s.example.com", "*.k8s.example.com"]);
        assert_eq!(l.inspect_timeout.as_secs(), 2);
        let b = c.backend("ingress").unwrap();
        assert_eq!(b.send_proxy, Some(ProxyVersion::V2));
        assert_eq!(b.health.send_proxy, Some(ProxyVersion::V2));
        assert_eq!(c.backend("control-plane").unwrap().send_proxy, None);
    }

    #[test]
    fn without_edge_keys_nothing_is_inspected() {
        let c = parse(&with_listener("", "")).unwrap();
        let l = &c.listeners[0];
        assert!(l.accept_proxy.is_none() && l.routes.is_empty());
        assert_eq!(l.inspect_timeout, super::INSPECT_TIMEOUT);
    }

    #[test]
    fn accept_proxy_without_trusted_sources_is_refused() {
        let e = one_error(&with_listener("accept_proxy = true", ""));
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("needs trusted"), "{e}");
    }

    #[test]
    fn trusted_without_accept_proxy_is_refused() {
        let e = one_error(&with_listener(r#"trusted = ["10.0.0.0/8"]"#, ""));
        assert!(e.message.contains("only with accept_proxy"), "{e}");
    }

    #[test]
    fn a_trusted_block_with_host_bits_suggests_the_network() {
        let e = one_error(&with_listener(
            "accept_proxy = true\ntrusted = [\"192.168.4.1/24\"]",
            "",
        ));
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("did you mean 192.168.4.0/24"), "{e}");
    }

    #[test]
    fn a_route_to_an_unknown_backend_suggests_the_closest() {
        let e = one_error(&with_listener(
            r#"routes = [{ sni = ["k8s.example.com"], backend = "control-plain" }]"#,
            "",
        ));
        assert!(e.message.contains("did you mean \"control-plane\""), "{e}");
    }

    #[test]
    fn bad_and_duplicate_sni_patterns_are_refused() {
        let e = one_error(&with_listener(
            r#"routes = [{ sni = ["a.*.example.com"], backend = "control-plane" }]"#,
            "",
        ));
        assert!(e.message.contains("a.*.example.com"), "{e}");
        let e = one_error(&with_listener(
            r#"routes = [{ sni = ["*"], backend = "control-plane" }]"#,
            "",
        ));
        assert!(e.message.contains("\"*\""), "{e}");
        let e = one_error(&with_listener(
            r#"routes = [{ sni = ["k8s.example.com"], backend = "control-plane" }, { sni = ["K8S.example.com"], backend = "ingress" }]"#,
            "",
        ));
        assert!(e.message.contains("given twice"), "{e}");
        let e = one_error(&with_listener(r#"routes = [{ sni = [], backend = "ingress" }]"#, ""));
        assert!(e.message.contains("sni is empty"), "{e}");
    }

    #[test]
    fn inspect_timeout_without_routes_is_refused() {
        let e = one_error(&with_listener(r#"inspect_timeout = "1s""#, ""));
        assert!(e.message.contains("only with routes"), "{e}");
    }

    #[test]
    fn send_proxy_takes_v1_or_v2_only() {
        let errors = parse(&with_listener("", r#"send_proxy = "v3""#)).expect_err("v3");
        assert!(
            errors[0].message.contains("v1") && errors[0].message.contains("v2"),
            "{errors:?}"
        );
    }

    #[test]
    fn health_send_proxy_needs_the_backend_to_send_it() {
        let e = one_error(&with_listener("", "health = { check = \"tcp\", send_proxy = true }"));
        assert!(e.message.contains("needs the backend's send_proxy"), "{e}");
    }
}
