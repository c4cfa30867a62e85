//! gatehouse: an L4 (TCP) load balancer with zero-copy forwarding, health checks,
//! DNS-named backends and hot reload.
//!
//! The data path, in order: [`listener`] accepts, [`proxy`] serves each connection by
//! asking [`balance`] for a server, [`connect`] for a connection to it and [`forward`]
//! to move the bytes. Beside it, [`resolve`] and [`health`] keep server state current,
//! [`app`] builds and swaps [`runtime`] snapshots from [`config`], and [`admin`] shows
//! it all, seeing the app only through [`control`]. [`import`] turns an HAProxy
//! configuration into a gatehouse one.
//!
//! Imports point downward only (`tests/layout.rs` checks it), top to bottom: `app`,
//! `admin`, `control`, `listener`, `cores`, `proxy`, `forward`, `health`, `resolve`, `connect`, `dial`,
//! `runtime`, `certwatch`, `balance`, `metrics`, `config`, `systemd`, `ratelimit`, `clock`; `edge`
//! (pure: source rules, limits, PROXY protocol, SNI) imports nothing of gatehouse, nor
//! does [`log_queue`], where log lines wait for the writer thread.

pub mod admin;
pub mod app;
pub mod balance;
pub mod certwatch;
pub mod clock;
pub mod config;
pub mod connect;
pub mod control;
pub mod cores;
pub mod dial;
pub mod edge;
pub mod forward;
pub mod health;
pub mod import;
pub mod listener;
pub mod log_queue;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod resolve;
pub mod runtime;
pub mod systemd;
