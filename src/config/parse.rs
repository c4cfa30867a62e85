//! Value parsers for the configuration: durations, bind and server addresses, names.
//! Each takes text and returns a typed value or a message saying how to write it
//! (CIDRs will join them). No knowledge of where in the file the text came from.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Host;

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn invalid_name_message(what: &str, name: &str) -> String {
    format!("{what} name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'")
}

/// Parses "500ms", "2s", "1m", "1h", "1d" and sums like "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint = "write durations like \"500ms\", \"2s\", \"5m\" or \"1h\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration; {hint}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{text:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(format!("{text:?} has no unit; {hint}")),
            other => return Err(format!("{text:?}: unknown unit {other:?}; {hint}")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// A listener bind address: "0.0.0.0:6443", "[::]:6443", or ":6443" for all IPv4 addresses.
pub(super) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("bind {text:?} is not an IP address with a port, like \"0.0.0.0:6443\" or \"[::]:6443\""))
}

/// A server address: an IP or a host name, with a port.
pub fn parse_host_port(text: &str) -> Result<(Host, u16), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((Host::Ip(addr.ip()), addr.port()));
    }
    let example = "like \"arkveld:6443\" or \"192.168.4.12:6443\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("server address {text:?} has no port; write it {example}"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("server address {text:?}: {port:?} is not a port (1-65535)")),
    };
    if host.parse::<IpAddr>().is_ok() || host.contains(':') {
        return Err(format!(
            "server address {text:?}: write IPv6 addresses in brackets, like \"[fd00::11]:6443\""
        ));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!("server address {text:?}: {host:?} is not a valid host name"));
    }
    Ok((Host::Name(host.to_ascii_lowercase()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_1_to_64_letters_digits_dashes_underscores_or_dots() {
        for good in ["a", "kube-api", "control_plane.v2", &"x".repeat(64)] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in ["", &"x".repeat(65), "kube api", "kube/api", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let message = invalid_name_message("listener", "kube api");
        assert!(
            message.contains("listener name \"kube api\"") && message.contains("1-64 characters"),
            "{message}"
        );
    }

    #[test]
    fn a_host_name_is_labels_of_letters_digits_dashes_and_underscores_up_to_253() {
        let ok = |text: &str| parse_host_port(text).map(|(_, port)| port);
        assert_eq!(ok("api-1.k8s_lab.home.arpa:6443"), Ok(6443));
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(long.len(), 253);
        assert_eq!(ok(&format!("{long}:80")), Ok(80), "253 characters");
        let too_long = format!("{long}e");
        assert!(ok(&format!("{too_long}:80"))
            .unwrap_err()
            .contains("not a valid host name"));
        assert!(ok(":80").unwrap_err().contains("not a valid host name"), "no host");
        assert!(ok("-api:80").is_err() && ok("api-:80").is_err(), "a label's ends");
        // A colon in the host is an IPv6 address without its brackets, even a mistyped one.
        assert!(ok("fe80::zz:80").unwrap_err().contains("brackets"));
    }
}
