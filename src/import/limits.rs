//! A backend's per-server limits: `maxconn` (on a server or `default-server`) into
//! `max_connections`, `timeout queue` into `queue_timeout`, and what `maxqueue` and
//! `minconn` come to.
//!
//! What `maxqueue` means depends on the balance, as HAProxy 2.6 shows when it runs:
//! it bounds a *server's own* queue, which `balance source` fills (a client waits for
//! the server its address hashes to, and is refused past `maxqueue`) and `leastconn`
//! uses before the backend's queue, but which `roundrobin`, `random` and `first` never
//! fill: a client every server turns away waits in the backend's queue, which nothing
//! bounds but `timeout queue`. gatehouse has the backend's queue only.

use super::backend::ServerLine;
use super::emit::{self, Key};
use super::lexer::Line;
use super::model::fmt_duration;
use super::report::{Report, Verdict};
use super::settings::{At, Balance, Settings};

/// Writes the backend's limit keys (and servers' own `max_connections`) and reports
/// every line that sets one.
pub fn limits(s: &Settings, header: &Line, live: &[&ServerLine], b: &mut emit::Backend, report: &mut Report) {
    let limit = |x: &ServerLine| x.opts.maxconn.clone().filter(|m| m.value > 0);
    for m in live
        .iter()
        .filter_map(|x| x.opts.maxconn.as_ref())
        .filter(|m| m.value == 0)
    {
        report.note(m.line, "", Verdict::Translated, "`maxconn 0`: no limit, as without it");
    }
    let limited: Vec<&ServerLine> = live.iter().copied().filter(|x| limit(x).is_some()).collect();
    for x in live.iter().filter(|x| limit(x).is_none()) {
        for (word, v) in [("maxqueue", &x.opts.maxqueue), ("minconn", &x.opts.minconn)] {
            if let Some(v) = v {
                report.note(
                    v.line,
                    "",
                    Verdict::Translated,
                    format!("`{word}`: no effect without maxconn, in HAProxy as in gatehouse"),
                );
            }
        }
    }
    if limited.is_empty() {
        return;
    }
    max_connections(live, &limit, b, report);
    for x in &limited {
        if let Some(m) = x.opts.minconn.as_ref().filter(|m| m.value > 0) {
            report.note(
                m.line,
                "",
                Verdict::Approximated,
                format!(
                    "`minconn {}`: HAProxy's limit grows from minconn to maxconn with the backend's load (fullconn); \
                     gatehouse's is fixed at maxconn",
                    m.value
                ),
            );
        }
    }
    let queue_key = match (&s.timeout_queue, &s.timeout_connect) {
        (Some(t), _) => Some(Key::new(
            "queue_timeout",
            emit::string(&fmt_duration(t.value)),
            vec![t.line],
        )),
        (None, Some(c)) => Some(
            Key::new("queue_timeout", emit::string(&fmt_duration(c.value)), vec![c.line])
                .remark("HAProxy's: `timeout connect`, without a `timeout queue`"),
        ),
        (None, None) => {
            report.note(
                header.number,
                &header.text,
                Verdict::Approximated,
                "no `timeout queue` (nor `timeout connect`): HAProxy lets a client wait for a server without end; \
                 gatehouse's queue_timeout is connect_timeout (3s unless set)",
            );
            None
        }
    };
    if let Some(key) = queue_key {
        b.table.set(key);
    }
    // Said above the queue's key (or the limit's, without one); the report says it too.
    if let Some(r) = max_queue(s, &limited, b, report) {
        let home = ["queue_timeout", "max_connections"]
            .into_iter()
            .find(|k| b.table.get(k).is_some());
        if let Some(key) = home.and_then(|k| b.table.keys.iter_mut().find(|x| x.name == k)) {
            key.remark = Some(match key.remark.take() {
                Some(k) => format!("{k}\n{r}"),
                None => r,
            });
        }
    }
    source_hash_with_limits(s, live.len(), report);
}

/// One `max_connections` for the backend when every server has the same, else each
/// server's own.
fn max_connections(
    live: &[&ServerLine],
    limit: &dyn Fn(&ServerLine) -> Option<At<u32>>,
    b: &mut emit::Backend,
    report: &mut Report,
) {
    let limits: Vec<Option<At<u32>>> = live.iter().map(|x| limit(x)).collect();
    let first = limits.first().cloned().flatten();
    let same = limits
        .iter()
        .all(|l| l.as_ref().map(|l| l.value) == first.as_ref().map(|f| f.value));
    match (same, first) {
        (true, Some(f)) => {
            let mut lines: Vec<usize> = limits.iter().flatten().map(|l| l.line).collect();
            lines.sort_unstable();
            lines.dedup();
            for line in &lines {
                report.note(
                    *line,
                    "",
                    Verdict::Translated,
                    format!("max_connections = {} (of each server of the backend)", f.value),
                );
            }
            b.table.set(Key::new("max_connections", f.value.to_string(), lines));
        }
        _ => {
            for (x, l) in live.iter().zip(&limits) {
                let Some(l) = l else { continue };
                if let Some(srv) = b.servers.iter_mut().find(|s| s.line == x.line.number) {
                    srv.fields.push(("max_connections", l.value.to_string()));
                }
                report.note(
                    l.line,
                    "",
                    Verdict::Translated,
                    format!("max_connections = {}", l.value),
                );
            }
        }
    }
}

/// What `maxqueue` comes to; returns a remark for the queue's key when it is no key.
fn max_queue(s: &Settings, limited: &[&ServerLine], b: &mut emit::Backend, report: &mut Report) -> Option<String> {
    let given: Vec<&At<u32>> = limited
        .iter()
        .filter_map(|x| x.opts.maxqueue.as_ref().filter(|q| q.value > 0))
        .collect();
    let first = given.first()?;
    let all = given.len() == limited.len();
    let sum: u64 = given.iter().map(|q| u64::from(q.value)).sum();
    let mut lines: Vec<usize> = given.iter().map(|q| q.line).collect();
    lines.sort_unstable();
    lines.dedup();
    let balance = s.balance.as_ref().map_or(Balance::RoundRobin, |b| b.value);
    let (verdict, note, remark) = match balance {
        Balance::Source => {
            if all {
                b.table.set(Key::new("max_queue", sum.to_string(), lines.clone()));
            }
            let ours = match all {
                true => format!("max_queue = {sum}, the sum"),
                false => "no max_queue: a server without maxqueue has clients wait without bound".into(),
            };
            (
                if limited.len() == 1 && all {
                    Verdict::Translated
                } else {
                    Verdict::Approximated
                },
                format!(
                    "`maxqueue {}`: with balance source, HAProxy has a client wait for its own server, at most \
                     maxqueue of them, and refuses the next; gatehouse has one queue for the backend: {ours}",
                    first.value
                ),
                None,
            )
        }
        Balance::LeastConn if limited.len() > 1 => (
            Verdict::Approximated,
            format!(
                "`maxqueue {}`: HAProxy's leastconn has up to maxqueue clients wait for one particular server, the \
                 rest in the backend's queue, which it does not bound; in gatehouse every client waits in the \
                 backend's queue for whichever server frees first, without a bound either (no max_queue)",
                first.value
            ),
            Some(sum),
        ),
        _ => (
            Verdict::Translated,
            format!(
                "`maxqueue {}`: bounds a server's own queue, which HAProxy does not fill with this balance: a \
                 client every server turns away waits in the backend's queue, which nothing bounds but `timeout \
                 queue`, in HAProxy as in gatehouse (no max_queue)",
                first.value
            ),
            Some(sum),
        ),
    };
    for line in &lines {
        report.note(*line, "", verdict, note.clone());
    }
    remark.filter(|_| all).map(|sum| {
        format!(
            "maxqueue bounds a server's own queue in HAProxy, not the backend's, which nothing bounds\n\
             but the timeout, as here. To bound it as maxqueue may have meant: max_queue = {sum}"
        )
    })
}

/// With limits, HAProxy's `balance source` waits for the client's own server where
/// gatehouse's source-hash gives it the next one with room.
fn source_hash_with_limits(s: &Settings, servers: usize, report: &mut Report) {
    let Some(At {
        value: Balance::Source,
        line,
    }) = s.balance
    else {
        return;
    };
    if servers < 2 {
        return;
    }
    report.note(
        line,
        "",
        Verdict::Approximated,
        "with maxconn, HAProxy's balance source has a client whose server is full wait for it; gatehouse's \
         source-hash gives it the next server in its order that has room (as if its own were down)",
    );
}
