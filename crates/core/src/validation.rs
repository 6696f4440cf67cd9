//! Collecting the invalid fields of a request, so that the caller hears
//! about them at once (as `google.rpc.BadRequest` field violations, see
//! [`crate::status::invalid_argument`]). Plain Rust: domain modules use it
//! without touching gRPC types.
//!
//! The report is bounded whatever the request: at most
//! [`MAX_REPORTED_VIOLATIONS`] violations are kept (then one more entry
//! says how many were left out), and each field name and description is cut
//! to a bounded length, so that echoing a caller's input never makes the
//! answer larger than the question. Validators check a list's length before
//! its items and stop looking at items once [`Violations::is_full`].

/// One invalid field: its name as in the proto (dotted and indexed for
/// nested fields, e.g. `items[2].quantity`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field name.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Most violations reported for one request; more are counted in one
/// extra entry.
pub const MAX_REPORTED_VIOLATIONS: usize = 20;
/// Longest field name reported, in characters.
pub const MAX_FIELD_CHARS: usize = 100;
/// Longest description reported, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest piece of a caller's input quoted by [`echo`], in characters.
pub const MAX_ECHO_CHARS: usize = 32;

/// The invalid fields of one request.
#[derive(Debug, Default)]
pub struct Violations {
    reported: Vec<FieldViolation>,
    left_out: usize,
}

impl Violations {
    /// A new, empty collection.
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records a violation of `field` (counted only, once
    /// [`MAX_REPORTED_VIOLATIONS`] are recorded).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.is_full() {
            self.left_out += 1;
            return;
        }
        self.reported.push(FieldViolation {
            field: truncate(field.into(), MAX_FIELD_CHARS),
            description: truncate(description.into(), MAX_DESCRIPTION_CHARS),
        });
    }

    /// True once no further violation would be reported: a validator
    /// walking a list may stop.
    pub fn is_full(&self) -> bool {
        self.reported.len() >= MAX_REPORTED_VIOLATIONS
    }

    /// Keeps the parsed value, or records why `field` did not parse.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|why| self.add(field, why)).ok()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }

    /// Ok when nothing was recorded, otherwise the violations in the order
    /// recorded, with one last entry (field `request`) counting those left
    /// out.
    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        let Violations {
            mut reported,
            left_out,
        } = self;
        if reported.is_empty() {
            return Ok(());
        }
        if left_out > 0 {
            reported.push(FieldViolation {
                field: "request".into(),
                description: format!(
                    "{left_out} more invalid fields not listed (at most \
                     {MAX_REPORTED_VIOLATIONS} are)"
                ),
            });
        }
        Err(reported)
    }
}

/// A caller's input quoted for a description: in double quotes, at most
/// [`MAX_ECHO_CHARS`] characters of it, control characters escaped.
pub fn echo(input: &str) -> String {
    let mut quoted: String = input
        .chars()
        .take(MAX_ECHO_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if input.chars().nth(MAX_ECHO_CHARS).is_some() {
        quoted.push('…');
    }
    format!("\"{quoted}\"")
}

/// `text` cut to `max` characters (marked with an ellipsis).
fn truncate(mut text: String, max: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push('…');
    }
    text
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

    #[test]
    fn the_report_is_bounded_whatever_the_request() {
        let mut v = Violations::new();
        for i in 0..1_000_000 {
            v.add(format!("items[{i}].quantity"), "x".repeat(10_000));
            if v.is_full() {
                // A validator would stop here; keep adding to show they are
                // counted, not kept.
                assert_eq!(v.reported.len(), MAX_REPORTED_VIOLATIONS);
            }
        }
        let report = v.into_result().unwrap_err();
        assert_eq!(report.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert!(
            report[..MAX_REPORTED_VIOLATIONS]
                .iter()
                .all(|f| f.description.chars().count() == MAX_DESCRIPTION_CHARS + 1)
        );
        let last = report.last().unwrap();
        assert_eq!(last.field, "request");
        assert!(last.description.starts_with("999980 more"), "{last:?}");
    }

    #[test]
    fn echoed_input_is_quoted_short_and_escaped() {
        assert_eq!(echo("EUR"), "\"EUR\"");
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
        let long = echo(&"x".repeat(1_000_000));
        assert_eq!(long.chars().count(), MAX_ECHO_CHARS + 3);
        assert!(long.ends_with("…\""));
    }
}
