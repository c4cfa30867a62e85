//! Validation of a backend's limits: `max_connections` (each server's, or the default
//! for its servers), `max_queue` and `queue_timeout`, which only mean something when
//! some server has a limit.

use std::ops::Range;
use std::time::Duration;

use super::super::schema::S;
use super::Validator;

/// The range of `max_connections`, per server or as a backend's default.
pub(in crate::config) const MAX_CONNECTIONS: Range<i64> = 1..1_000_001;

/// A backend's queue, validated.
pub(in crate::config) struct QueueKeys {
    pub(in crate::config) max_queue: Option<usize>,
    pub(in crate::config) timeout: Duration,
}

impl Validator<'_> {
    /// `max_queue` and `queue_timeout` of backend `name`; `limited`: some server has a
    /// `max_connections`. The queue timeout defaults to `connect_timeout`, as HAProxy's
    /// `timeout queue` defaults to `timeout connect`.
    pub(super) fn queue(
        &mut self,
        name: &str,
        (max_queue, queue_timeout): (&Option<S<i64>>, &Option<S<String>>),
        limited: bool,
        connect_timeout: Duration,
    ) -> QueueKeys {
        if !limited {
            for (key, span) in [
                ("max_queue", max_queue.as_ref().map(|v| v.span())),
                ("queue_timeout", queue_timeout.as_ref().map(|v| v.span())),
            ] {
                if let Some(span) = span {
                    self.error(
                        &span,
                        format!(
                            "backend {name:?}: {key} applies only when servers have a limit: set max_connections \
                             on the backend or on its servers"
                        ),
                    );
                }
            }
        }
        QueueKeys {
            max_queue: max_queue
                .as_ref()
                .map(|m| self.integer("max_queue", &Some(m.clone()), 0..1_000_001, 0) as usize),
            timeout: self.positive_duration("queue_timeout", queue_timeout, connect_timeout),
        }
    }
}
