//! Query shapes the two dialects agree on, built once: the filters of an
//! audit query and of a task listing or count. A clause is written with
//! `?` for its value; [`Dialect::Postgres`] numbers them (`$1`, `$2`...).
//! Each backend binds the collected [`Arg`]s in its own types (SQLite:
//! ids and times as text; PostgreSQL: native `uuid` and `timestamptz`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{AuditQuery, TaskFilter};
use crate::task::TaskState;

/// Which placeholders a query uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `?`
    Sqlite,
    /// `$1`, `$2`...
    Postgres,
}

/// One value to bind.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    Uuid(Uuid),
    Time(DateTime<Utc>),
}

/// A select being filtered: its SQL so far and the values to bind, in
/// order.
#[derive(Debug)]
pub(crate) struct Filtered {
    pub sql: String,
    pub args: Vec<Arg>,
    dialect: Dialect,
}

impl Filtered {
    /// `select` (up to its `FROM`), filtered by the clauses added next.
    pub fn new(dialect: Dialect, select: &str) -> Self {
        Filtered {
            sql: format!("{select} WHERE 1 = 1"),
            args: Vec::new(),
            dialect,
        }
    }

    /// Append `sql`, binding `arg` to its `?` if it has one.
    pub fn push(&mut self, sql: &str, arg: Option<Arg>) -> &mut Self {
        match (self.dialect, arg) {
            (Dialect::Postgres, Some(arg)) => {
                self.args.push(arg);
                let n = format!("${}", self.args.len());
                self.sql.push_str(&sql.replacen('?', &n, 1));
            }
            (Dialect::Sqlite, Some(arg)) => {
                self.args.push(arg);
                self.sql.push_str(sql);
            }
            (_, None) => self.sql.push_str(sql),
        }
        self
    }

    /// Add `AND clause`, its `?` bound to `arg`, when there is an `arg`.
    pub fn and(&mut self, clause: &str, arg: Option<Arg>) -> &mut Self {
        if let Some(arg) = arg {
            self.sql.push_str(" AND ");
            self.push(clause, Some(arg));
        }
        self
    }
}

/// The audit records matching `f`, newest first. `select` lists the
/// columns `FROM audit`.
pub(crate) fn audit(dialect: Dialect, select: &str, f: &AuditQuery) -> Filtered {
    let mut q = Filtered::new(dialect, select);
    audit_filters(&mut q, f).push(" ORDER BY seq DESC LIMIT ?", Some(Arg::Int(f.limit)));
    q
}

/// Add the filters of `f` to a select of audit columns.
pub(crate) fn audit_filters<'q>(q: &'q mut Filtered, f: &AuditQuery) -> &'q mut Filtered {
    let text = |s: &Option<String>| s.clone().map(Arg::Text);
    q.and("session_id = ?", f.session_id.map(Arg::Uuid))
        .and("user_id = ?", text(&f.user_id))
        .and("event_type = ?", text(&f.event_type))
        .and("resource_type = ?", text(&f.resource_type))
        .and("timestamp >= ?", f.since.map(Arg::Time))
        .and("timestamp < ?", f.until.map(Arg::Time))
        .and("seq < ?", f.before_seq.map(Arg::Int))
}

/// `select` of one user's rows (`user_col = ?`) or everyone's, in `order`
/// (an `ORDER BY` clause).
pub(crate) fn of_user(
    dialect: Dialect,
    select: &str,
    user_col: &str,
    user_id: Option<&str>,
    order: &str,
) -> Filtered {
    let mut q = Filtered::new(dialect, select);
    q.and(user_col, user_id.map(|u| Arg::Text(u.into())))
        .push(order, None);
    q
}

/// How a backend's task select names what a [`TaskFilter`] compares, each
/// a clause with one `?`.
#[derive(Debug)]
pub(crate) struct TaskColumns {
    pub user_id: &'static str,
    pub session_id: &'static str,
    pub state: &'static str,
    pub agent_type: &'static str,
}

/// Add the owner, session, state (unless `with_state` is false, for
/// counts per state) and agent filters of `f`.
pub(crate) fn tasks(q: &mut Filtered, c: &TaskColumns, f: &TaskFilter, with_state: bool) {
    let state = f.state.filter(|_| with_state);
    q.and(c.user_id, f.user_id.clone().map(Arg::Text))
        .and(c.session_id, f.session_id.map(Arg::Uuid))
        .and(c.state, state.map(|s| Arg::Text(s.as_str().into())))
        .and(c.agent_type, f.agent_type.clone().map(Arg::Text));
}

/// Task counts per stored state name, the unknown ones left out.
pub(crate) fn by_state(rows: Vec<(String, i64)>) -> Vec<(TaskState, i64)> {
    rows.into_iter()
        .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same filter reads the same in both dialects but for the
    /// placeholders, and binds its values in clause order.
    #[test]
    fn audit_filters_in_both_dialects() {
        let f = AuditQuery {
            user_id: Some("u".into()),
            before_seq: Some(9),
            limit: 5,
            ..Default::default()
        };
        let s = audit(Dialect::Sqlite, "SELECT * FROM audit", &f);
        let p = audit(Dialect::Postgres, "SELECT * FROM audit", &f);
        assert_eq!(
            s.sql,
            "SELECT * FROM audit WHERE 1 = 1 AND user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
        );
        assert_eq!(
            p.sql,
            "SELECT * FROM audit WHERE 1 = 1 AND user_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        );
        assert!(matches!(
            p.args.as_slice(),
            [Arg::Text(u), Arg::Int(9), Arg::Int(5)] if u == "u"
        ));
    }
}
