//! Statements kept prepared per connection.
//!
//! diesel prepares some statements afresh on every call: every `sql_query`, every
//! `UPDATE`, every upsert and anything with an SQL literal mark themselves unsafe to cache,
//! since diesel cannot know whether their text varies between calls. Each such call costs an
//! extra round trip and a parse and plan in PostgreSQL. The statements of a turn (the
//! inbox's record, fenced claim and marks, the reply intents' steps) have a fixed text, so
//! they can be kept like diesel's cacheable queries. The cache is keyed by the SQL text and
//! bind types, so even a statement whose text did vary would be correct, only cached once
//! per variant.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A statement (`diesel::sql_query(..)` with its binds, or a DSL statement) that the
/// connection's statement cache may keep. Only for statements whose SQL text is the same on
/// every call (binds vary, the text does not): a text built from varying values would fill
/// the cache.
#[derive(Debug, Clone)]
pub struct Prepared<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the cache keys these statements by their SQL text.
impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

/// `.prepared()` on a raw statement.
pub trait PreparedExt: Sized {
    /// See [`Prepared`].
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q: QueryFragment<Pg>> PreparedExt for Q {}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{BigInt, Text};

    use super::*;

    #[test]
    fn a_raw_statement_becomes_cacheable_with_its_text_and_binds() {
        let raw = diesel::sql_query("SELECT $1::bigint AS n, $2::text AS t")
            .bind::<BigInt, _>(7)
            .bind::<Text, _>("x");
        assert!(!raw.is_safe_to_cache_prepared(&Pg).unwrap());
        let prepared = raw.prepared();
        assert!(prepared.is_safe_to_cache_prepared(&Pg).unwrap());
        assert_eq!(
            diesel::debug_query::<Pg, _>(&prepared).to_string(),
            "SELECT $1::bigint AS n, $2::text AS t -- binds: [7, \"x\"]"
        );
    }
}
