//! Statements over many ids at once, written once for both backends.
//!
//! Arrays are not portable (`= ANY($1)` is PostgreSQL's, `json_each`
//! SQLite's), so a statement over a list of ids takes them as `IN ($n,
//! ...)` with a fixed number of placeholders, [`IDS_PER_STATEMENT`]: its
//! text is a constant, built once (`id_list_sql`, into a `static`) and
//! prepared once per connection like any other, and a longer list is
//! sent in chunks. A chunk shorter than that repeats its last id
//! ([`crate::Query::bind_ids`]), which changes nothing in an `IN` list.
//!
//! On a transaction's connection each statement is a round trip that the
//! whole group-commit batch waits for (`pg_group_commit`), so a statement
//! per id would cost a batch of a hundred orders a hundred round trips;
//! this costs four.

use uuid::Uuid;

use crate::{Query, Value};

/// How many ids one statement takes.
pub const IDS_PER_STATEMENT: usize = 32;

/// `template` with `{ids}` replaced by [`IDS_PER_STATEMENT`] placeholders
/// numbered from `$first`: for a `static` (`LazyLock`), so that the text is
/// built once and never from input.
///
/// ```
/// let sql = shop_storage::id_list_sql("DELETE FROM t WHERE k = $1 AND id IN ({ids})", 2);
/// assert!(sql.starts_with("DELETE FROM t WHERE k = $1 AND id IN ($2, $3, "));
/// assert!(sql.ends_with(", $33)"));
/// ```
pub fn id_list_sql(template: &str, first: usize) -> String {
    assert!(
        template.matches("{ids}").count() == 1,
        "an id-list statement has one {{ids}}"
    );
    let placeholders: Vec<String> = (first..first + IDS_PER_STATEMENT)
        .map(|n| format!("${n}"))
        .collect();
    template.replace("{ids}", &placeholders.join(", "))
}

impl Query {
    /// Binds `ids` (one to [`IDS_PER_STATEMENT`] of them, a chunk of a
    /// longer list) to the next [`IDS_PER_STATEMENT`] placeholders,
    /// repeating the last id for the ones left over.
    ///
    /// # Panics
    ///
    /// When `ids` is empty or longer than [`IDS_PER_STATEMENT`]: a caller
    /// sends `ids.chunks(IDS_PER_STATEMENT)`.
    pub fn bind_ids(self, ids: &[Uuid]) -> Query {
        let last = *ids.last().expect("an id list is not empty");
        assert!(
            ids.len() <= IDS_PER_STATEMENT,
            "at most {IDS_PER_STATEMENT} ids per statement"
        );
        ids.iter()
            .copied()
            .chain(std::iter::repeat(last))
            .take(IDS_PER_STATEMENT)
            .fold(self, |q, id| q.bind(Value::from(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query;

    #[test]
    fn the_text_numbers_its_placeholders_from_the_first() {
        let sql = id_list_sql("SELECT 1 WHERE id IN ({ids})", 1);
        assert_eq!(sql.matches('$').count(), IDS_PER_STATEMENT);
        assert!(sql.contains("IN ($1, $2, "));
        assert!(sql.ends_with(&format!("${IDS_PER_STATEMENT})")));
    }

    #[test]
    #[should_panic(expected = "one {ids}")]
    fn a_template_without_its_list_is_refused() {
        id_list_sql("SELECT 1", 1);
    }

    #[test]
    fn a_short_chunk_repeats_its_last_id() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let q = query("SELECT 1").bind("k").bind_ids(&[a, b]);
        let mut expected = vec![Value::from("k"), Value::from(a)];
        expected.extend(std::iter::repeat_n(Value::from(b), IDS_PER_STATEMENT - 1));
        assert_eq!(q.args(), expected.as_slice());
    }
}
