//! Collecting every invalid field of a request, so that the caller hears
//! about all of them at once (as `google.rpc.BadRequest` field violations,
//! see [`crate::status::invalid_argument`]). Plain Rust: domain modules use
//! it without touching gRPC types.

/// One invalid field: its name as in the proto (dotted and indexed for
/// nested fields, e.g. `items[2].quantity`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field name.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// The invalid fields of one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// A new, empty collection.
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Keeps the parsed value, or records why `field` did not parse.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|why| self.add(field, why)).ok()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded, otherwise every violation in the order
    /// recorded.
    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation_in_order() {
        let mut v = Violations::new();
        assert_eq!(v.check("a", Ok::<_, String>(1)), Some(1));
        assert_eq!(v.check::<i32>("b", Err("is bad".into())), None);
        v.add("c", "is worse");
        let fields: Vec<_> = v
            .into_result()
            .unwrap_err()
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["b", "c"]);
        assert!(Violations::new().into_result().is_ok());
    }
}
