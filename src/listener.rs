//! Listening sockets: binding them (socket2), their accept loops, and keeping them
//! across reloads.
//!
//! Sockets are keyed by the bind address as configured. A reload keeps the socket of
//! an address that stays (not one refused connection), binds new addresses, and closes
//! removed ones; connections accepted on a closed socket carry on to their end. Each
//! accept loop reads its listener from an `ArcSwap`, so a reload that points an address
//! at another backend takes effect on the next accept.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::proxy::{self, Connections, Settings};
use crate::runtime::{Listener, Snapshot};

const BACKLOG: i32 = 4096;

/// A bind address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: cannot bind {addr}: {source}")]
pub struct BindError {
    pub listener: String,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

struct Bound {
    listener: Arc<ArcSwap<Listener>>,
    settings: Arc<ArcSwap<Settings>>,
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Duplicates of the listening sockets, to change their options at a reload.
    sockets: Vec<std::net::TcpListener>,
}

/// Options accepted connections inherit from their listening socket (Linux copies
/// TCP_NODELAY, the keepalive settings and TCP_USER_TIMEOUT), so that no accept pays
/// for setting them.
fn set_inherited_options(socket: &std::net::TcpListener, settings: &Settings) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_tcp_nodelay(true);
    #[cfg(target_os = "linux")]
    let _ = s.set_tcp_user_timeout(settings.user_timeout);
    let _ = match settings.keepalive {
        Some(idle) => s.set_tcp_keepalive(&crate::connect::keepalive(idle)),
        None => s.set_keepalive(false),
    };
}

impl Drop for Bound {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every bound address and its accept loops.
#[derive(Default)]
pub struct Listeners {
    bound: HashMap<SocketAddr, Bound>,
    /// Sockets handed over by systemd (socket activation), by local address.
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
    /// Accept loops of addresses removed by the last `apply`, aborted: each closes its
    /// socket when it is gone, which is a moment later, on a worker thread.
    stopped: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// Takes over sockets passed by systemd (`LISTEN_FDS`), to be used for the bind
    /// addresses they match.
    pub fn adopt_inherited(&mut self, sockets: Vec<std::net::TcpListener>) {
        for s in sockets {
            if let Ok(addr) = s.local_addr() {
                tracing::info!(%addr, "using socket passed by systemd");
                self.inherited.insert(addr, s);
            }
        }
    }

    /// Closes passed sockets that no listener binds: clients queued there would wait
    /// for nothing.
    pub fn close_unused_inherited(&mut self) {
        for (addr, _socket) in self.inherited.drain() {
            tracing::warn!(%addr, "socket passed by systemd matches no listener's bind address; closing it");
        }
    }

    /// Brings the bound sockets in line with `snapshot`. Binds everything new first; if
    /// any bind fails nothing changes and the error is returned.
    pub fn apply(
        &mut self,
        snapshot: &Snapshot,
        settings: Settings,
        conns: &Arc<Connections>,
    ) -> Result<(), BindError> {
        let mut fresh: HashMap<SocketAddr, Vec<std::net::TcpListener>> = HashMap::new();
        for l in &snapshot.listeners {
            for addr in &l.config.bind {
                if self.bound.contains_key(addr) || fresh.contains_key(addr) {
                    continue;
                }
                let sockets = match self.inherited.remove(addr) {
                    Some(s) => Ok(vec![s]),
                    None => bind(*addr, accept_sockets(), l.config.freebind),
                };
                match sockets {
                    Ok(s) => {
                        fresh.insert(*addr, s);
                    }
                    Err(source) => {
                        // Nothing was applied: sockets bound so far in this round close here.
                        return Err(BindError {
                            listener: l.name.to_string(),
                            addr: *addr,
                            source,
                        });
                    }
                }
            }
        }
        let wanted: HashMap<SocketAddr, &Arc<Listener>> = snapshot
            .listeners
            .iter()
            .flat_map(|l| l.config.bind.iter().map(move |a| (*a, l)))
            .collect();
        let stopped = &mut self.stopped;
        self.bound.retain(|addr, b| match wanted.get(addr) {
            Some(l) => {
                b.listener.store(Arc::clone(l));
                b.settings.store(Arc::new(settings));
                for s in &b.sockets {
                    set_inherited_options(s, &settings);
                }
                true
            }
            None => {
                tracing::info!(%addr, "stopped listening");
                stopped.extend(b.tasks.drain(..).inspect(JoinHandle::abort));
                false
            }
        });
        for (addr, sockets) in fresh {
            let Some(l) = wanted.get(&addr) else { continue };
            let listener = Arc::new(ArcSwap::from(Arc::clone(l)));
            let settings = Arc::new(ArcSwap::from_pointee(settings));
            let mut local = addr;
            let mut tasks = Vec::new();
            let mut duplicates = Vec::new();
            for s in sockets {
                if let Ok(a) = s.local_addr() {
                    local = a;
                }
                set_inherited_options(&s, &settings.load());
                if let Ok(d) = s.try_clone() {
                    duplicates.push(d);
                }
                match TcpListener::from_std(s) {
                    Ok(tl) => tasks.push(tokio::spawn(accept_loop(
                        tl,
                        listener.clone(),
                        settings.clone(),
                        conns.clone(),
                    ))),
                    Err(e) => tracing::error!(%addr, "cannot register socket: {e}"),
                }
            }
            tracing::info!(listener = %l.name, %local, backend = %l.backend.name, "listening");
            self.bound.insert(
                addr,
                Bound {
                    listener,
                    settings,
                    local,
                    tasks,
                    sockets: duplicates,
                },
            );
        }
        Ok(())
    }

    /// Stops accepting everywhere (at shutdown); established connections go on. The
    /// sockets close only when their accept loops are gone: await the returned handles.
    pub fn close_all(&mut self) -> Vec<JoinHandle<()>> {
        let tasks = self.bound.drain().flat_map(|(_, mut b)| std::mem::take(&mut b.tasks));
        tasks.inspect(JoinHandle::abort).collect()
    }

    /// The accept loops stopped by `apply`: awaiting them waits until their sockets are closed.
    pub fn take_stopped(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.stopped)
    }

    /// (listener name, address actually bound) for every socket, port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<(String, SocketAddr)> = self
            .bound
            .values()
            .map(|b| (b.listener.load().name.to_string(), b.local))
            .collect();
        v.sort();
        v
    }
}

/// How many sockets share each address (SO_REUSEPORT), spreading accepts over cores.
fn accept_sockets() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

/// Binds `count` sockets to `addr`; with a port of 0, all share the first one's port.
/// With `freebind`, `addr` need not be on this host yet (IP_FREEBIND): a standby of an
/// HA pair listens on the shared address before keepalived moves it here.
pub fn bind(addr: SocketAddr, count: usize, freebind: bool) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = bind_one(addr, count > 1, freebind)?;
        addr = s.local_addr()?;
        sockets.push(s);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr, reuse_port: bool, freebind: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    let _ = reuse_port;
    if addr.is_ipv6() {
        // "[::]" means IPv6 only; "0.0.0.0" is bound separately when wanted.
        socket.set_only_v6(true)?;
    }
    if freebind {
        #[cfg(target_os = "linux")]
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
        #[cfg(not(target_os = "linux"))]
        return Err(io::Error::new(io::ErrorKind::Unsupported, "freebind needs Linux"));
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

async fn accept_loop(
    socket: TcpListener,
    listener: Arc<ArcSwap<Listener>>,
    settings: Arc<ArcSwap<Settings>>,
    conns: Arc<Connections>,
) {
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                let l = listener.load_full();
                let s = **settings.load();
                tokio::spawn(proxy::serve(stream, peer, l, s, conns.clone()));
            }
            Err(e) => {
                // Out of file descriptors or memory: say so, and give the system a moment
                // instead of spinning on the same error.
                tracing::error!(listener = %listener.load().name, "accept failed: {e}");
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
