//! The values a query binds, each carrying its type even when it is NULL
//! (PostgreSQL types every parameter; `$1 IS NULL OR col = $1` needs to
//! know `$1` is text).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `TEXT`.
    Text(Option<String>),
    /// `INTEGER` (32 bits on PostgreSQL).
    Int4(Option<i32>),
    /// `BIGINT`.
    Int8(Option<i64>),
    /// `BOOLEAN`.
    Bool(Option<bool>),
    /// A UUID: `uuid` on PostgreSQL, hyphenated text on SQLite.
    Id(Option<Uuid>),
    /// A point in time: `timestamptz` on PostgreSQL, RFC 3339 text on
    /// SQLite.
    Time(Option<DateTime<Utc>>),
}

macro_rules! values {
    ($($ty:ty => $variant:ident $(via $conv:expr)?),* $(,)?) => {
        $(
            impl From<$ty> for Value {
                fn from(v: $ty) -> Value {
                    Value::$variant(Some($($conv)?(v)))
                }
            }
            impl From<Option<$ty>> for Value {
                fn from(v: Option<$ty>) -> Value {
                    Value::$variant(v.map(|v| $($conv)?(v)))
                }
            }
        )*
    };
}

values!(
    String => Text,
    &str => Text via str::to_owned,
    &String => Text via String::clone,
    i32 => Int4,
    i64 => Int8,
    bool => Bool,
    Uuid => Id,
    DateTime<Utc> => Time,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_keeps_its_type() {
        assert_eq!(Value::from(None::<&str>), Value::Text(None));
        assert_eq!(Value::from(None::<Uuid>), Value::Id(None));
        assert_eq!(Value::from("a"), Value::Text(Some("a".into())));
        assert_eq!(Value::from(Some(3_i64)), Value::Int8(Some(3)));
    }
}
