//! Reading what a client sends before its stream proper, on the socket: the PROXY header
//! of a trusted balancer in front (consumed, exactly its length) and the server name of
//! a TLS ClientHello (peeked: it stays in the socket for the server).
//!
//! Both peek (`MSG_PEEK`) until the pure parsers ([`proxy_protocol::parse`],
//! [`sni::parse_client_hello`]) answer, waiting for readiness between peeks and never
//! past their size limits; the caller bounds the wait with its timeout. This module
//! owns no decision about trust or routes: it reports what it read, or why not.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use super::proxy_protocol::{self, ParseError, Parsed, V2_MAX_LEN};
use super::sni::{self, Peek, MAX_PEEK_LEN};

/// The addresses a PROXY header carried; `None` where it carried none (LOCAL, UNKNOWN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub source: Option<SocketAddr>,
    pub dest: Option<SocketAddr>,
}

/// Why a connection that had to start with a PROXY header is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyRefusal {
    #[error("not a trusted source of PROXY headers")]
    Untrusted,
    #[error("no whole PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("closed before sending a PROXY header")]
    Missing,
    #[error("closed in the middle of its PROXY header ({0} bytes)")]
    Truncated(usize),
    #[error("{0}")]
    Invalid(ParseError),
    #[error("reading the PROXY header: {0}")]
    Io(io::Error),
}

impl ProxyRefusal {
    /// The `reason` label of `gatehouse_connections_rejected_total` and the log word.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "proxy_untrusted",
            ProxyRefusal::Timeout(_) => "proxy_timeout",
            ProxyRefusal::Missing => "proxy_header_missing",
            ProxyRefusal::Truncated(_) => "proxy_header_truncated",
            ProxyRefusal::Invalid(e) => e.reason(),
            ProxyRefusal::Io(_) => "proxy_read_error",
        }
    }
}

/// Every value [`ProxyRefusal::reason`] can take, for metric handles made up front.
pub const PROXY_REFUSAL_REASONS: [&str; 8] = [
    "proxy_untrusted",
    "proxy_timeout",
    "proxy_header_missing",
    "proxy_header_truncated",
    "proxy_header_malformed",
    "proxy_header_too_long",
    "proxy_header_version",
    "proxy_read_error",
];

/// Reads the PROXY header at the start of `stream` within `timeout`, consuming exactly
/// its bytes: what follows is the client's, left for the server.
pub async fn read_proxy_header(stream: &mut TcpStream, timeout: Duration) -> Result<Carried, ProxyRefusal> {
    match tokio::time::timeout(timeout, read_proxy_header_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyRefusal::Timeout(timeout)),
    }
}

async fn read_proxy_header_inner(stream: &mut TcpStream) -> Result<Carried, ProxyRefusal> {
    let mut buf = vec![0u8; V2_MAX_LEN];
    let mut seen = 0;
    loop {
        let n = peek_more(stream, &mut buf, seen).await.map_err(ProxyRefusal::Io)?;
        match proxy_protocol::parse(&buf[..n]) {
            Ok(Parsed::Header { len, source, dest, .. }) => {
                stream.read_exact(&mut buf[..len]).await.map_err(ProxyRefusal::Io)?;
                return Ok(Carried { source, dest });
            }
            Ok(Parsed::Incomplete) if n == seen => {
                // Nothing more will come: the client closed (or the limit is reached,
                // which the parser reports as too long before this).
                return Err(match n {
                    0 => ProxyRefusal::Missing,
                    n => ProxyRefusal::Truncated(n),
                });
            }
            Ok(Parsed::Incomplete) => seen = n,
            Err(e) => return Err(ProxyRefusal::Invalid(e)),
        }
    }
}

/// What a peek at the ClientHello found, when it found no name: the connection goes to
/// the listener's default backend, and this says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoName {
    /// `Peek::reason` of a ClientHello without a name, a non-TLS stream or a
    /// malformed handshake.
    Parsed(&'static str),
    /// No whole ClientHello within the inspect timeout.
    Timeout,
    /// The client closed its side first.
    Closed,
    /// The peek failed (the connection is likely gone).
    Error,
}

/// Why a client of an SNI-routed listener went to its default backend, as
/// `gatehouse_sni_default_total{reason}` and the close line's `sni_default` name it.
pub const SNI_DEFAULT_REASONS: [&str; 6] = ["not_tls", "no_sni", "malformed", "timeout", "closed", "no_route"];

impl NoName {
    /// Its reason among [`SNI_DEFAULT_REASONS`] (`no_route` is for a name no route
    /// matches, which is not a `NoName`).
    pub fn default_reason(self) -> &'static str {
        match self {
            NoName::Parsed("sni_not_tls") => "not_tls",
            NoName::Parsed("sni_missing") => "no_sni",
            NoName::Parsed(_) => "malformed",
            NoName::Timeout => "timeout",
            NoName::Closed | NoName::Error => "closed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NoName::Parsed(r) => r,
            NoName::Timeout => "sni_timeout",
            NoName::Closed => "sni_closed",
            NoName::Error => "sni_error",
        }
    }
}

/// Peeks at the ClientHello for its server name, within `timeout`; nothing is consumed.
pub async fn peek_server_name(stream: &TcpStream, timeout: Duration) -> Result<String, NoName> {
    match tokio::time::timeout(timeout, peek_server_name_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(NoName::Timeout),
    }
}

async fn peek_server_name_inner(stream: &TcpStream) -> Result<String, NoName> {
    let mut buf = vec![0u8; MAX_PEEK_LEN];
    let mut seen = 0;
    loop {
        let n = peek_more(stream, &mut buf, seen).await.map_err(|_| NoName::Error)?;
        match sni::parse_client_hello(&buf[..n]) {
            Peek::Sni(name) => return Ok(name),
            Peek::NeedMore if n == seen => return Err(NoName::Closed),
            Peek::NeedMore => seen = n,
            other => return Err(NoName::Parsed(other.reason())),
        }
    }
}

/// Waits until more than `seen` bytes can be peeked into `buf`, and peeks them; returns
/// `seen` itself only when no more will come (the client closed its side, or `buf` is
/// full).
///
/// A peek leaves the bytes in the socket, so the socket stays readable: waiting on
/// readiness alone would spin. A peek that finds nothing new answers `WouldBlock` inside
/// `try_io`, which clears the readiness it saw, so the next wait lasts until new bytes
/// arrive (a closed read side stays ready: tokio never clears it).
async fn peek_more(stream: &TcpStream, buf: &mut [u8], seen: usize) -> io::Result<usize> {
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let closed = ready.is_read_closed();
        let full = buf.len();
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = peek(stream, buf)?;
            if n > seen || closed || n == full {
                Ok(n)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match peeked {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One non-blocking `recv(MSG_PEEK)`.
fn peek(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, writable for its whole length; the
    // descriptor belongs to `stream`, alive for the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
