//! Opening a TCP connection to an address: the one primitive that both the data path
//! (`connect`, for clients) and the health checks (`health`) use, and the typed error
//! both act on. It knows nothing of servers, passive health or retries, and sets no
//! timeout: each caller bounds the wait as its own rules say.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Why a connect to a server failed. Passive health and metrics act on the kind.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(io::Error),
    #[error("{0}")]
    Other(io::Error),
    /// Gatehouse's own failure (EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL), with
    /// its index in [`crate::metrics::LOCAL_ERROR_REASONS`]: not the server's fault.
    #[error("local failure, not the server's: {0}")]
    Local(io::Error, usize),
}

impl ConnectError {
    /// The `reason` label of `gatehouse_connect_errors_total`; indexes
    /// [`crate::metrics::CONNECT_ERROR_REASONS`].
    pub fn reason_index(&self) -> usize {
        match self {
            ConnectError::Refused => 0,
            ConnectError::Timeout(_) => 1,
            ConnectError::Unreachable(_) => 2,
            ConnectError::Other(_) | ConnectError::Local(..) => 3,
        }
    }

    /// An error of gatehouse itself, or one from the socket calls of a connect.
    pub fn from_io(e: io::Error) -> Self {
        if let Some(reason) = crate::metrics::local_reason(&e) {
            return ConnectError::Local(e, reason);
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => ConnectError::Unreachable(e),
            _ => match e.raw_os_error() {
                Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => ConnectError::Unreachable(e),
                _ => ConnectError::Other(e),
            },
        }
    }
}

/// Connects to `addr`; `nodelay` for a connection that will carry small writes both
/// ways (a client's), not for a check that connects and closes.
pub async fn dial(addr: SocketAddr, nodelay: bool) -> Result<TcpStream, ConnectError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectError::from_io)?;
    if nodelay {
        socket.set_nodelay(true).map_err(ConnectError::from_io)?;
    }
    socket.connect(addr).await.map_err(ConnectError::from_io)
}
