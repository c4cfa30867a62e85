//! SNI: the server name in a TLS ClientHello, read without terminating TLS, and the
//! routes that pick a target by it.
//!
//! Owns the peek parser ([`parse_client_hello`]: the caller peeks at the first bytes
//! of a connection, and peeks again with more while the answer is [`Peek::NeedMore`],
//! never past [`MAX_PEEK_LEN`] bytes) and the route table ([`SniRoutes`]). It does not
//! own the reading, its timeout, nor what happens to a connection without a route.
//!
//! The parser checks what it walks (record type and version, handshake type, every
//! length against its container, no duplicate extension, one host name at most) and
//! answers only once the whole ClientHello is in, across as many records (up to
//! [`MAX_RECORDS`]) and reads as it takes. A name is validated as a DNS host name and
//! lower-cased; a trailing dot is dropped; an IPv4 literal is refused (RFC 6066 forbids
//! it in SNI).
//!
//! Patterns: `example.com` matches that name; `*.example.com` matches exactly one
//! label in place of the `*` (`a.example.com`, not `a.b.example.com` nor
//! `example.com`) — the rule of TLS certificates, so a route and the certificate
//! served behind it agree. An exact name wins over a wildcard. Matching ignores case
//! and a trailing dot. A bare `*` is refused: a catch-all is the listener's default
//! route, not a pattern.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The longest ClientHello accepted, its 4-byte handshake header included.
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// The most TLS records a ClientHello may be spread over.
pub const MAX_RECORDS: usize = 16;
/// With this many bytes the answer is never [`Peek::NeedMore`].
pub const MAX_PEEK_LEN: usize = MAX_HELLO_LEN + MAX_RECORDS * 5;
const MAX_RECORD_LEN: usize = 1 << 14;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;

/// What the first bytes of a connection say about its server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// The ClientHello is not whole yet: read more and peek again.
    NeedMore,
    /// The connection does not start with a TLS handshake record.
    NotTls,
    /// A valid ClientHello without a server name.
    NoSni,
    /// The server name, lower-cased, without a trailing dot.
    Sni(String),
    /// A TLS handshake that breaks the rules; the reason names the rule.
    Malformed(&'static str),
}

impl Peek {
    /// The metric label and log word for an answer that is not a name.
    pub fn reason(&self) -> &'static str {
        match self {
            Peek::NeedMore => "sni_incomplete",
            Peek::NotTls => "sni_not_tls",
            Peek::NoSni => "sni_missing",
            Peek::Sni(_) => "sni",
            Peek::Malformed(_) => "sni_malformed",
        }
    }
}

/// Read the server name from the ClientHello at the start of `buf`.
pub fn parse_client_hello(buf: &[u8]) -> Peek {
    match assemble(buf) {
        Ok(body) => match client_hello_name(&body) {
            Ok(Some(name)) => Peek::Sni(name),
            Ok(None) => Peek::NoSni,
            Err(why) => Peek::Malformed(why),
        },
        Err(peek) => peek,
    }
}

/// The ClientHello's body (after its handshake header), gathered from the records.
fn assemble(buf: &[u8]) -> Result<Cow<'_, [u8]>, Peek> {
    let mut handshake: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut pos = 0;
    let mut record = 0;
    loop {
        if record == MAX_RECORDS {
            return Err(Peek::Malformed("ClientHello spread over too many records"));
        }
        let header = &buf[pos..buf.len().min(pos + 5)];
        let not_handshake =
            header.first().is_some_and(|&t| t != HANDSHAKE) || header.get(1).is_some_and(|&major| major != 3);
        if not_handshake {
            return Err(if record == 0 {
                Peek::NotTls
            } else {
                Peek::Malformed("a record other than handshake inside the ClientHello")
            });
        }
        if header.len() < 5 {
            return Err(Peek::NeedMore);
        }
        if header[2] > 4 {
            return Err(Peek::Malformed("record version is not TLS"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(Peek::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD_LEN {
            return Err(Peek::Malformed("record longer than 2^14 bytes"));
        }
        let start = pos + 5;
        let payload = &buf[start..buf.len().min(start + len)];
        if record == 0 {
            handshake = Cow::Borrowed(payload);
        } else {
            handshake.to_mut().extend_from_slice(payload);
        }
        if let Some(&kind) = handshake.first() {
            if kind != CLIENT_HELLO {
                return Err(Peek::Malformed("first handshake message is not a ClientHello"));
            }
        }
        if handshake.len() >= 4 {
            let body_len = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]);
            let end = 4 + body_len as usize;
            if end > MAX_HELLO_LEN {
                return Err(Peek::Malformed("ClientHello longer than 16 KiB"));
            }
            if handshake.len() >= end {
                return Ok(match handshake {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[4..end]),
                    Cow::Owned(mut v) => {
                        v.truncate(end);
                        v.drain(..4);
                        Cow::Owned(v)
                    }
                });
            }
        }
        if payload.len() < len {
            return Err(Peek::NeedMore);
        }
        pos = start + len;
        record += 1;
    }
}

/// A cursor over a message whose every read is checked against what is left.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, why: &'static str) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err(why);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, why: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, why)?[0])
    }

    fn u16(&mut self, why: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, why)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, why: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u8(why)?;
        self.take(usize::from(n), why)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, why: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(why)?;
        self.take(usize::from(n), why)
    }
}

fn client_hello_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader { rest: body };
    let version = r.u16("ClientHello cut short")?;
    if version >> 8 != 3 {
        return Err("ClientHello version is not TLS");
    }
    r.take(32, "ClientHello random cut short")?;
    if r.vec8("session id overruns the ClientHello")?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16("cipher suites overrun the ClientHello")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("cipher suite list empty or of odd length");
    }
    if r.vec8("compression methods overrun the ClientHello")?.is_empty() {
        return Err("no compression method");
    }
    if r.rest.is_empty() {
        return Ok(None);
    }
    let extensions = r.vec16("extensions overrun the ClientHello")?;
    if !r.rest.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut r = Reader { rest: extensions };
    let mut seen = Vec::new();
    let mut name = None;
    while !r.rest.is_empty() {
        let kind = r.u16("extension header cut short")?;
        let data = r.vec16("extension overruns the extension list")?;
        seen.push(kind);
        if kind == SERVER_NAME {
            name = server_name(data)?;
        }
    }
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err("an extension appears twice");
    }
    Ok(name)
}

fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut outer = Reader { rest: data };
    let list = outer.vec16("server name list overruns its extension")?;
    if !outer.rest.is_empty() || list.is_empty() {
        return Err("server name extension is not one non-empty list");
    }
    let mut r = Reader { rest: list };
    let mut host = None;
    while !r.rest.is_empty() {
        let kind = r.u8("server name entry cut short")?;
        let name = r.vec16("server name overruns its list")?;
        if kind != 0 {
            continue; // Not host_name: no other type is defined; ignored like rustls.
        }
        if host.is_some() {
            return Err("two host names in the server name list");
        }
        host = Some(normalize_host_name(name)?);
    }
    Ok(host)
}

/// A DNS host name, lower-cased, without its trailing dot: labels of 1 to 63 letters,
/// digits, `-` (not first or last) or `_`, 253 bytes in all; not an IPv4 literal.
pub fn normalize_host_name(name: &[u8]) -> Result<String, &'static str> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err("empty host name");
    }
    if name.len() > 253 {
        return Err("host name longer than 253 bytes");
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err("host name has an empty label");
        }
        if label.len() > 63 {
            return Err("host name label longer than 63 bytes");
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("host name has a character other than letters, digits, '-' and '_'");
        }
        if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return Err("host name label starts or ends with '-'");
        }
    }
    // Only ASCII letters, digits, '-', '_' and '.' remain.
    let text: String = name.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect();
    if text.parse::<Ipv4Addr>().is_ok() {
        return Err("server name is an IP address, not a host name");
    }
    Ok(text)
}

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("SNI pattern {pattern:?}: {why}")]
    Invalid { pattern: String, why: &'static str },
    #[error("SNI pattern {pattern:?} is given twice")]
    Duplicate { pattern: String },
}

/// Targets by server name: exact names first, then `*.` wildcards of one label.
#[derive(Debug, Clone)]
pub struct SniRoutes<T> {
    exact: HashMap<String, usize>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, usize>,
    targets: Vec<T>,
}

impl<T> Default for SniRoutes<T> {
    fn default() -> Self {
        SniRoutes {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            targets: Vec::new(),
        }
    }
}

impl<T> SniRoutes<T> {
    /// Routes from `(patterns, target)` pairs; every pattern is validated and unique.
    pub fn new(routes: impl IntoIterator<Item = (Vec<String>, T)>) -> Result<Self, PatternError> {
        let mut table = SniRoutes::default();
        for (patterns, target) in routes {
            let index = table.targets.len();
            table.targets.push(target);
            for pattern in patterns {
                let invalid = |why| PatternError::Invalid {
                    pattern: pattern.clone(),
                    why,
                };
                let (map, name) = match pattern.strip_prefix("*.") {
                    Some(rest) => (&mut table.wildcard, rest),
                    None => (&mut table.exact, pattern.as_str()),
                };
                if name.contains('*') {
                    return Err(invalid("'*' may only be the whole first label, as in *.example.com"));
                }
                let key = normalize_host_name(name.as_bytes()).map_err(invalid)?;
                if map.insert(key, index).is_some() {
                    return Err(PatternError::Duplicate { pattern });
                }
            }
        }
        Ok(table)
    }

    /// The target for `name` (any case, trailing dot or not), if a pattern matches.
    pub fn route(&self, name: &str) -> Option<&T> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        let index = self.exact.get(name.as_ref()).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })?;
        self.targets.get(*index)
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, in the order their routes were given.
    pub fn targets(&self) -> &[T] {
        &self.targets
    }
}

#[cfg(test)]
#[path = "sni_tests.rs"]
mod tests;
