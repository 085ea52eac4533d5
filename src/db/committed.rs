//! One row of a statement, read only once the statement has committed.
//!
//! diesel-async's `get_result` answers with the first row as soon as PostgreSQL sends it
//! and drops the rest of the response. A single statement outside a transaction commits
//! when the server handles the protocol's Sync, after the rows went out, and says how the
//! commit went with ReadyForQuery, which `get_result` never waits for. A write whose commit
//! then fails, or is lost because the server crashed in between, looked done to its caller:
//! the PostgreSQL crash drill saw a reply intent claimed by a statement that never
//! committed, its answer posted to Slack, and the intent's next claim (a new row) posting
//! it again. [`CommittedExt::get_committed`] reads the response to its end, as `load`
//! does, so an `Ok` is a committed row.

use diesel::result::{Error, QueryResult};
use diesel_async::methods::LoadQuery;
use diesel_async::return_futures::LoadFuture;
use diesel_async::{AsyncConnectionCore, RunQueryDsl};
use futures::FutureExt as _;
use futures::future::Map;

/// The future of [`CommittedExt::get_committed`].
pub type Committed<'conn, 'query, Q, Conn, U> =
    Map<LoadFuture<'conn, 'query, Q, Conn, U>, fn(QueryResult<Vec<U>>) -> QueryResult<U>>;

/// `get_committed` on every statement.
pub trait CommittedExt<Conn>: RunQueryDsl<Conn> + Sized {
    /// The statement's first row, once the whole response (and with it the commit of a
    /// statement outside a transaction) has arrived; [`Error::NotFound`] without a row.
    /// For every write whose row the caller acts on: use it instead of `get_result`.
    fn get_committed<'query, 'conn, U>(
        self,
        conn: &'conn mut Conn,
    ) -> Committed<'conn, 'query, Self, Conn, U>
    where
        U: Send,
        Conn: AsyncConnectionCore,
        Self: LoadQuery<'query, Conn, U> + 'query,
    {
        self.load(conn).map(first_row::<U> as fn(_) -> _)
    }
}

impl<Conn, Q: RunQueryDsl<Conn>> CommittedExt<Conn> for Q {}

fn first_row<U>(rows: QueryResult<Vec<U>>) -> QueryResult<U> {
    rows?.into_iter().next().ok_or(Error::NotFound)
}
