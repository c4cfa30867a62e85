//! The PROXY protocol, versions 1 and 2: writing the header a server reads, and reading
//! the header a load balancer in front of us sends.
//!
//! Owns the wire format and its strict validation, after the spec
//! (haproxy.org/download/3.0/doc/proxy-protocol.txt) and HAProxy's own parser: one
//! header at the very start of the stream, nothing guessed. Reading is incremental: the
//! caller peeks at what it has, gets [`Parsed::Incomplete`] until the header is whole
//! (never more than [`V1_MAX_LEN`] or [`V2_MAX_LEN`] bytes), and then skips
//! [`Parsed::Header::len`] bytes. It does not own sockets, timeouts or the decision to
//! trust a peer's header (the listener's `accept-proxy` setting).
//!
//! Choices where the spec leaves room: a v2 header for UDP or unix sockets, UNSPEC, the
//! LOCAL command and v1 `UNKNOWN` all give no addresses (the caller keeps the
//! connection's own), as HAProxy does; an address family byte the spec does not list is
//! refused, as the spec says (HAProxy ignores it). v2 TLVs are walked to check they fit
//! in the stated length, then skipped. v1 ports are decimal without leading zeros.
//! When writing for a client and a server of different families, both are written as
//! IPv6 (IPv4 as `::ffff:a.b.c.d`), as HAProxy does, rather than `UNKNOWN`, which would
//! lose the client's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The longest v1 header, CRLF included (the spec's figure).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted, its 16 fixed bytes included. The spec allows 64 KiB
/// of TLVs; nothing we are put behind sends more than a few hundred bytes.
pub const V2_MAX_LEN: usize = 4096;
/// The fixed start of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// What the bytes so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header has begun but is not whole yet: read more and parse again.
    Incomplete,
    /// A whole header of `len` bytes; the stream proper starts after it. The addresses
    /// are `None` for LOCAL, UNKNOWN, UNSPEC, UDP and unix headers.
    Header {
        version: u8,
        len: usize,
        source: Option<SocketAddr>,
        dest: Option<SocketAddr>,
    },
}

/// Why the bytes are not an acceptable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header longer than allowed")]
    TooLong,
    #[error("PROXY protocol v2 header with unsupported version {0}")]
    UnsupportedVersion(u8),
}

impl ParseError {
    /// The metric label and log word for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::NotProxy => "proxy_header_missing",
            ParseError::Malformed(_) => "proxy_header_malformed",
            ParseError::TooLong => "proxy_header_too_long",
            ParseError::UnsupportedVersion(_) => "proxy_header_version",
        }
    }
}

/// Both addresses in one family: IPv4 when both are, else IPv6 with IPv4 mapped.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() && dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// The v1 header announcing a TCP connection from `src` to `dst`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The v2 header announcing (command PROXY) a TCP connection from `src` to `dst`.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// The v2 header of a connection the proxy made itself (command LOCAL), e.g. a health
/// check: the server uses the connection's own addresses.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

/// Read the PROXY header at the start of `buf`, if whole.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let starts = |magic: &[u8]| {
        let n = buf.len().min(magic.len());
        buf[..n] == magic[..n]
    };
    if starts(V1_PREFIX) {
        parse_v1(buf)
    } else if starts(&V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Err(ParseError::NotProxy)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // Refuse early what can never become a header.
        if let Some(cr) = window.iter().position(|&b| b == b'\r') {
            if cr + 1 < window.len() {
                return Err(ParseError::Malformed("CR not followed by LF"));
            }
        }
        if window.iter().any(|&b| b != b'\r' && !(b' '..=b'~').contains(&b)) {
            return Err(ParseError::Malformed("v1 header is not printable ASCII"));
        }
        return if buf.len() >= V1_MAX_LEN {
            Err(ParseError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if window[lf - 1] != b'\r' {
        return Err(ParseError::Malformed("v1 line does not end with CRLF"));
    }
    let line = &window[V1_PREFIX.len().min(lf - 1)..lf - 1];
    if line.iter().any(|b| !(b' '..=b'~').contains(b)) {
        return Err(ParseError::Malformed("v1 header is not printable ASCII"));
    }
    // Printable ASCII is UTF-8.
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Malformed("not ASCII"))?;
    let header = |source, dest| {
        Ok(Parsed::Header {
            version: 1,
            len: lf + 1,
            source,
            dest,
        })
    };
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return header(None, None);
    }
    let mut fields = line.split(' ');
    let v4 = match fields.next() {
        Some("TCP4") => true,
        Some("TCP6") => false,
        _ => return Err(ParseError::Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ParseError::Malformed(
            "v1 header needs exactly: protocol, two addresses, two ports, single spaces",
        ));
    };
    let addr = |text: &str| -> Result<IpAddr, ParseError> {
        if v4 {
            Ipv4Addr::from_str(text).map(IpAddr::V4)
        } else {
            Ipv6Addr::from_str(text).map(IpAddr::V6)
        }
        .map_err(|_| ParseError::Malformed("v1 address is not valid for its protocol"))
    };
    let source = SocketAddr::new(addr(src)?, port(sport)?);
    let dest = SocketAddr::new(addr(dst)?, port(dport)?);
    header(Some(source), Some(dest))
}

fn port(text: &str) -> Result<u16, ParseError> {
    let bad = ParseError::Malformed("v1 port is not a decimal number 0-65535 without leading zeros");
    if text.is_empty()
        || text.len() > 5
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version = buf[12] >> 4;
    if version != 2 {
        return Err(ParseError::UnsupportedVersion(version));
    }
    let command = buf[12] & 0x0f;
    let family = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if len > V2_MAX_LEN {
        return Err(ParseError::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let header = |source, dest| {
        Ok(Parsed::Header {
            version: 2,
            len,
            source,
            dest,
        })
    };
    match command {
        0x0 => return header(None, None),
        0x1 => {}
        _ => return Err(ParseError::Malformed("v2 command is not LOCAL or PROXY")),
    }
    let address_len = match family {
        0x11 => 12,
        0x21 => 36,
        0x12 | 0x22 | 0x31 | 0x32 | 0x00 => {
            // No address we can use: the length says where the stream starts, and the
            // address block's size is not fixed for UNSPEC, so TLVs are not walked.
            return header(None, None);
        }
        _ => return Err(ParseError::Malformed("v2 address family is not one the spec lists")),
    };
    if body.len() < address_len {
        return Err(ParseError::Malformed(
            "v2 length is shorter than the address family needs",
        ));
    }
    let (source, dest) = if family == 0x11 {
        let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]));
        let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
        (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
    } else {
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
        (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
    };
    check_tlvs(&body[address_len..])?;
    header(Some(source), Some(dest))
}

/// TLVs must tile the rest of the header exactly; their contents are not used.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ParseError> {
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(ParseError::Malformed("v2 TLV header cut short"));
        }
        let value_len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        let end = 3 + value_len;
        if tlvs.len() < end {
            return Err(ParseError::Malformed("v2 TLV runs past the header length"));
        }
        tlvs = &tlvs[end..];
    }
    Ok(())
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
