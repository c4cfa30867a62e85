//! The edge: what happens to a client before a server is picked.
//!
//! Pure parts, no sockets and no clocks of their own: [`source_rules`] (allow/deny
//! by CIDR), [`source_limit`] (per-client concurrent connections and new-connection
//! rate, in a bounded table), [`proxy_protocol`] (PROXY v1/v2 headers, both ways) and
//! [`sni`] (a TLS ClientHello's server name, and routing by it); beside them,
//! [`fd_budget`] (the connection ceiling the open-file limit allows, and raising that
//! limit at startup); [`admission`] puts rules and limits together in the order the
//! data path asks them. The listener and proxy call them; they call nothing of gatehouse.
//!
//! One part touches sockets: [`inspect`] reads the PROXY header and peeks at the
//! ClientHello with the parsers above; the decisions (trust, routes) stay with the caller.

pub mod admission;
pub mod fd_budget;
pub mod inspect;
pub mod proxy_protocol;
pub mod sni;
pub mod source_limit;
pub mod source_rules;
