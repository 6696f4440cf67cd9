//! JSON log lines written straight out, for `LOG_FORMAT=json`.
//!
//! tracing-subscriber's own JSON format keeps each span's fields as a JSON
//! text and, to stay valid, parses that text back into a map every time a
//! field is recorded on the span and every time a line embeds the span:
//! three parses and re-serialisations per call for the server span (its
//! `trace_id` and status code are recorded after it starts, and the access
//! line embeds it), plus a `BTreeMap` of `serde_json::Value`s per line.
//! The profile in docs/performance-history.md put the log line at about a tenth of
//! a cached GetUser. Here fields are written as they are visited, a field
//! recorded later is spliced into the span's object, and a line copies its
//! span's object as it stands: nothing is parsed.
//!
//! The lines have the same shape as tracing-subscriber's JSON with
//! `flatten_event(true)` and `with_current_span(true)`:
//!
//! ```text
//! {"timestamp":"…","level":"INFO","message":"rpc","service":"…",…,"target":"access","span":{"request_id":"…",…,"name":"grpc.server"}}
//! ```
//!
//! The `otel.*` fields of a span (its OpenTelemetry name, kind and status,
//! which repeat its `rpc.*` fields) are left out, as are `log.*`.
//!
//! Keys keep the order they were recorded in. A span field is written once,
//! when it gets a value: one declared `Empty` and recorded later appears
//! once; recording the same field twice would write it twice (the last
//! wins for JSON readers), which no code here does.

use std::fmt::{self, Write as _};

use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    field::{RecordFields, Visit},
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// Span and event fields as the members of a JSON object.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonFields;

/// A JSON object per event, with its span's fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonLines;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut members = Members::new(&mut writer);
        fields.record(&mut members);
        members.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // `{…}` → `{…,new}`: reopen the object, add, close it again.
        let text = &mut current.fields;
        if text.ends_with('}') {
            text.pop();
        }
        let first = text.len() <= 1;
        let mut members = Members {
            writer: text,
            first,
            result: Ok(()),
        };
        fields.record(&mut members);
        members.result?;
        text.push('}');
        Ok(())
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut members = Members {
            writer: &mut writer,
            first: false,
            result: Ok(()),
        };
        event.record(&mut members);
        members.result?;
        writer.write_str(",\"target\":")?;
        write_str(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            let fields = extensions
                .get::<FormattedFields<JsonFields>>()
                .map(|f| f.fields.as_str())
                .unwrap_or_default();
            let inner = fields
                .strip_prefix('{')
                .and_then(|f| f.strip_suffix('}'))
                .unwrap_or_default();
            if !inner.is_empty() {
                writer.write_str(inner)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            write_str(&mut writer, span.metadata().name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes each visited field as `"name":value`, comma-separated.
struct Members<'w, W: fmt::Write> {
    writer: &'w mut W,
    first: bool,
    result: fmt::Result,
}

impl<'w, W: fmt::Write> Members<'w, W> {
    fn new(writer: &'w mut W) -> Members<'w, W> {
        Members {
            writer,
            first: true,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() || is_directive(field.name()) {
            return;
        }
        self.result = (|| {
            let first = std::mem::replace(&mut self.first, false);
            write_key(self.writer, first, field.name())?;
            value(self.writer)
        })();
    }
}

/// `"name":`, after a comma unless `first`: in one write when the name
/// needs no escaping (the writer is usually a `dyn Write` behind
/// tracing's `Writer`, a call through a pointer per write).
fn write_key(w: &mut impl fmt::Write, first: bool, name: &str) -> fmt::Result {
    const ROOM: usize = 64;
    let separator: &[u8] = if first { b"\"" } else { b",\"" };
    let len = separator.len() + name.len() + 2;
    if len <= ROOM && !needs_escaping(name.as_bytes()) {
        let mut key = [0u8; ROOM];
        let (head, rest) = key.split_at_mut(separator.len());
        head.copy_from_slice(separator);
        rest[..name.len()].copy_from_slice(name.as_bytes());
        rest[name.len()..name.len() + 2].copy_from_slice(b"\":");
        return w.write_str(std::str::from_utf8(&key[..len]).map_err(|_| fmt::Error)?);
    }
    if !first {
        w.write_char(',')?;
    }
    write_str(w, name)?;
    w.write_char(':')
}

impl<W: fmt::Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_str(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        self.member(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |w| write_escaped(w, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| write_escaped(w, format_args!("{value:?}")));
    }
}

/// Whether the field `name` is addressed to another layer rather than
/// being something to log: `log.*` (tracing's log bridge: the target and
/// source of a `log` record) and `otel.*` (how tracing-opentelemetry names
/// a span and its kind and status: the call's span says the same in its
/// `rpc.*` fields, and its access line in `service`, `method` and `code`,
/// so a line carries each once).
fn is_directive(name: &str) -> bool {
    name.starts_with("log.") || name.starts_with("otel.")
}

/// `text` as a JSON string.
fn write_str(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaper(w).write_str(text)?;
    w.write_char('"')
}

/// What `args` formats to, as a JSON string, escaped as it is written.
fn write_escaped(w: &mut impl fmt::Write, args: fmt::Arguments<'_>) -> fmt::Result {
    w.write_char('"')?;
    Escaper(&mut *w).write_fmt(args)?;
    w.write_char('"')
}

/// Escapes what is written through it for the inside of a JSON string.
struct Escaper<'w, W: fmt::Write>(&'w mut W);

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if !needs_escaping(text.as_bytes()) {
            return self.0.write_str(text);
        }
        let mut start = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[start..i])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            start = i + 1;
        }
        self.0.write_str(&text[start..])
    }
}

/// Whether any of `bytes` must be escaped inside a JSON string: a quote,
/// a backslash or a control character. Most of what is logged needs none;
/// sixteen bytes at a time with no branch inside become a few vector
/// compares.
fn needs_escaping(bytes: &[u8]) -> bool {
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |found, &b| found | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use tracing::field::Empty;
    use tracing_subscriber::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        let out = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .with_writer(move || out.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn a_line_carries_its_fields_and_its_span_with_fields_recorded_later() {
        let lines = logged(|| {
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %"shop.user.v1.UserService/GetUser",
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.method = "GetUser",
                request_id = %"r-1",
                trace_id = Empty,
                rpc.grpc.status_code = Empty,
            );
            span.record("trace_id", "abc");
            span.record("otel.status_code", "ERROR");
            span.record("rpc.grpc.status_code", 5);
            let _entered = span.enter();
            tracing::info!(
                target: "access",
                method = "GetUser",
                duration_ms = 1.25,
                ok = false,
                count = 3_u64,
                "rpc"
            );
        });
        let [line] = lines.as_slice() else {
            panic!("{lines:?}")
        };
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "access");
        assert_eq!(line["message"], "rpc");
        assert_eq!(line["method"], "GetUser");
        assert_eq!(line["duration_ms"], 1.25);
        assert_eq!(line["ok"], false);
        assert_eq!(line["count"], 3);
        assert_eq!(line["span"]["name"], "grpc.server");
        assert_eq!(line["span"]["request_id"], "r-1");
        assert_eq!(line["span"]["trace_id"], "abc");
        assert_eq!(line["span"]["rpc.grpc.status_code"], 5);
        assert_eq!(line["span"]["rpc.method"], "GetUser");
        // The OpenTelemetry layer's directives repeat the fields above.
        let span_keys: Vec<_> = line["span"].as_object().unwrap().keys().collect();
        assert!(
            span_keys.iter().all(|k| !k.starts_with("otel.")),
            "{span_keys:?}"
        );
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    }

    #[test]
    fn a_line_given_its_span_as_parent_carries_that_span_not_the_current_one() {
        // The access line names its call's span as parent instead of
        // entering it (see `CallRecord::finish`).
        let lines = logged(|| {
            let call = tracing::info_span!("grpc.server", request_id = %"r-2");
            let _elsewhere = tracing::info_span!("other", request_id = %"r-other").entered();
            tracing::info!(target: "access", parent: &call, "rpc");
        });
        let [line] = lines.as_slice() else {
            panic!("{lines:?}")
        };
        assert_eq!(line["span"]["name"], "grpc.server", "{line}");
        assert_eq!(line["span"]["request_id"], "r-2", "{line}");
    }

    #[test]
    fn a_byte_to_escape_is_found_wherever_it_is() {
        // Across two chunks of sixteen and the remainder after them.
        let plain = "abcdefghijklmnopqrstuvwxyz0123456789ABCD";
        assert!(!needs_escaping(plain.as_bytes()));
        for special in [b'"', b'\\', b'\n', 0x00, 0x1f] {
            for at in 0..plain.len() {
                let mut text = plain.as_bytes().to_vec();
                text[at] = special;
                assert!(needs_escaping(&text), "{special:#x} at {at}");
            }
        }
        assert!(!needs_escaping("é, ü and 🦀 go as they are".as_bytes()));
    }

    #[test]
    fn keys_are_written_whole_or_escaped() {
        let mut out = String::new();
        write_key(&mut out, true, "request_id").unwrap();
        write_key(&mut out, false, "rpc.grpc.status_code").unwrap();
        write_key(&mut out, false, "a \"quoted\" name").unwrap();
        let long = "k".repeat(80);
        write_key(&mut out, false, &long).unwrap();
        assert_eq!(
            out,
            format!(
                "\"request_id\":,\"rpc.grpc.status_code\":,\"a \\\"quoted\\\" name\":,\"{long}\":"
            )
        );
    }

    #[test]
    fn text_is_escaped_and_odd_numbers_stay_json() {
        let lines = logged(|| {
            tracing::warn!(
                text = "a \"quoted\" \\ line\nwith\ttabs and \u{1} control",
                shown = %"50%\n",
                debugged = ?Some("x\"y"),
                nan = f64::NAN,
                "what \"went\" wrong"
            );
            let span = tracing::info_span!("outer", otel.kind = "internal", first = Empty);
            span.record("first", "only later");
            span.in_scope(|| tracing::info!("in a span whose fields all came later"));
            tracing::info_span!("bare").in_scope(|| tracing::info!("in a span with no fields"));
        });
        let [warn, later, bare] = lines.as_slice() else {
            panic!("{lines:?}")
        };
        assert_eq!(warn["level"], "WARN");
        assert_eq!(
            warn["text"],
            "a \"quoted\" \\ line\nwith\ttabs and \u{1} control"
        );
        assert_eq!(warn["shown"], "50%\n");
        assert_eq!(warn["debugged"], "Some(\"x\\\"y\")");
        assert!(warn["nan"].is_null());
        assert_eq!(warn["message"], "what \"went\" wrong");
        assert!(warn.get("span").is_none());
        assert_eq!(
            later["span"],
            serde_json::json!({"first": "only later", "name": "outer"})
        );
        assert_eq!(bare["span"], serde_json::json!({"name": "bare"}));
    }
}
