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
//! {"timestamp":"…","level":"INFO","message":"rpc","code":"OK",…,"target":"access","span":{"rpc.system":"grpc","rpc.service":"…","rpc.method":"…","request_id":"…",…,"name":"grpc.server"}}
//! ```
//!
//! The `otel.*` fields of a span (its OpenTelemetry name, kind and status,
//! which repeat its `rpc.*` fields) are left out, as are `log.*`. When no
//! exporter runs, a span's `trace_id` is written from the ids the trace-id
//! layer keeps for it, after its fields, rather than recorded into them on
//! every call (`propagation::record_trace_id`); so are the fields that name
//! a call a server answers, before them (`call::server_span`). A span with
//! no field recorded keeps no text.
//!
//! A line is built in a buffer of its thread's and handed to the `fmt`
//! layer in one write: written piece by piece through the layer's
//! `Writer`, each of the forty or so pieces of an access line went through
//! a call by pointer (about 1,200 of the line's 7,000 instructions,
//! callgrind). A line's timestamp reuses the text of its second, which
//! its thread keeps.
//!
//! Keys keep the order they were recorded in. A span field is written once,
//! when it gets a value: one declared `Empty` and recorded later appears
//! once; recording the same field twice would write it twice (the last
//! wins for JSON readers), which no code here does.

use std::{
    cell::{Cell, RefCell},
    fmt::{self, Write as _},
    time::{Duration, UNIX_EPOCH},
};

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

use crate::text::StackText;

/// Span and event fields as the members of a JSON object.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonFields;

/// `fields` as a JSON object, or nothing when none has a value (a span
/// whose fields all come later, or never: no text to keep).
fn write_object<R: RecordFields>(writer: &mut impl fmt::Write, fields: &R) -> fmt::Result {
    let wrote_any = {
        let mut members = Members::opening(writer);
        fields.record(&mut members);
        members.result?;
        !members.first
    };
    if wrote_any {
        writer.write_char('}')?;
    }
    Ok(())
}

/// A JSON object per event, with its span's fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonLines {
    /// Whether the span's object gets its `trace_id` from the ids
    /// [`crate::trace_ids::TraceIdLayer`] keeps, rather than from a
    /// recorded field (see `propagation::record_trace_id`).
    pub(crate) trace_ids: bool,
}

thread_local! {
    /// Where a new span's fields are built before they are written out.
    static SPAN_FIELDS: RefCell<String> = const { RefCell::new(String::new()) };
    /// Where a line is built before it is written out.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Past this many bytes a thread's buffer is let go rather than kept.
const BUFFER_KEPT: usize = 16 * 1024;

/// Builds a text in `buffer` with `build` and writes it to `writer` in
/// one write; when the buffer is taken already (tracing does not dispatch
/// from inside a subscriber, so this is a guard, not a path), `fallback`
/// writes to `writer` directly.
fn in_buffer<'w>(
    buffer: &'static std::thread::LocalKey<RefCell<String>>,
    writer: &mut Writer<'w>,
    build: impl FnOnce(&mut String) -> fmt::Result,
    fallback: impl FnOnce(&mut Writer<'w>) -> fmt::Result,
) -> fmt::Result {
    buffer.with(|buffer| {
        let Ok(mut text) = buffer.try_borrow_mut() else {
            return fallback(writer);
        };
        text.clear();
        let written = build(&mut text).and_then(|()| writer.write_str(&text));
        if text.capacity() > BUFFER_KEPT {
            *text = String::new();
        }
        written
    })
}

impl<'writer> FormatFields<'writer> for JsonFields {
    /// The writer is the new span's own text, empty: written piece by
    /// piece, it would grow by doubling, a reallocation every few fields.
    /// Built in this thread's buffer instead, it is written once, at its
    /// size.
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        in_buffer(
            &SPAN_FIELDS,
            &mut writer,
            |text| write_object(text, &fields),
            |writer| write_object(writer, &fields),
        )
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
            opens: false,
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
        in_buffer(
            &LINE,
            &mut writer,
            |line| self.write_line(ctx, line, event),
            |writer| self.write_line(ctx, writer, event),
        )
    }
}

impl JsonLines {
    /// `event` as a JSON line, with its span.
    fn write_line<S, W: fmt::Write>(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        writer: &mut W,
        event: &Event<'_>,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut members = Members {
            writer: &mut *writer,
            first: false,
            opens: false,
            result: Ok(()),
        };
        event.record(&mut members);
        members.result?;
        writer.write_str(",\"target\":")?;
        write_str(writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if self.trace_ids
                && let Some(call) = crate::trace_ids::call_in(&extensions)
            {
                write_call(writer, call)?;
            }
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
            if self.trace_ids
                && let Some(trace) = crate::trace_ids::trace_id_in(&extensions)
            {
                writer.write_str("\"trace_id\":\"")?;
                writer.write_str(crate::text::trace_id(trace).as_str())?;
                writer.write_str("\",")?;
            }
            writer.write_str("\"name\":")?;
            write_str(writer, span.metadata().name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// A call's fields kept typed with its span (`call::server_span`), as the
/// span's first members, each followed by a comma: as the span would have
/// recorded them when it started.
fn write_call(w: &mut impl fmt::Write, call: &crate::trace_ids::CallFields) -> fmt::Result {
    w.write_str("\"rpc.system\":\"grpc\",\"rpc.service\":")?;
    write_str(w, call.service)?;
    w.write_str(",\"rpc.method\":")?;
    write_str(w, call.method)?;
    w.write_str(",\"request_id\":")?;
    write_str(w, call.request_id.to_str().unwrap_or_default())?;
    w.write_char(',')
}

/// Now in RFC 3339 with microseconds (`2026-12-06T14:42:44.941568Z`), as
/// tracing-subscriber's `SystemTime` writes it.
fn write_timestamp(w: &mut impl fmt::Write) -> fmt::Result {
    write_time(w, std::time::SystemTime::now())
}

thread_local! {
    /// The second this thread last wrote a time in, and its text up to
    /// the fraction (`2026-12-06T14:42:44.`).
    static SECOND: Cell<Option<(u64, StackText<24>)>> = const { Cell::new(None) };
}

/// `time` as [`write_timestamp`] writes it: the text of its second,
/// formatted by humantime once a second per thread (where `SystemTime`
/// formats each part through `core::fmt`, 2,400 instructions a line,
/// callgrind), then its microseconds.
fn write_time(w: &mut impl fmt::Write, time: std::time::SystemTime) -> fmt::Result {
    let Ok(since_epoch) = time.duration_since(UNIX_EPOCH) else {
        // humantime refuses (panics on) times before 1970; `time` is the
        // clock's, which `SystemTime` reads again.
        return SystemTime.format_time(&mut Writer::new(w));
    };
    let second = since_epoch.as_secs();
    let prefix = match SECOND.get() {
        Some((cached, prefix)) if cached == second => prefix,
        _ => {
            let prefix = second_text(second)?;
            SECOND.set(Some((second, prefix)));
            prefix
        }
    };
    let micros = since_epoch.subsec_micros();
    let (mut fraction, mut rest) = (*b"000000Z", micros);
    for digit in fraction[..6].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    w.write_str(prefix.as_str())?;
    // ASCII digits and `Z`.
    w.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// `2026-12-06T14:42:44.` for `second` seconds after the epoch.
fn second_text(second: u64) -> Result<StackText<24>, fmt::Error> {
    let mut text = StackText::<24>::new();
    let time = UNIX_EPOCH + Duration::from_secs(second);
    write!(text, "{}", humantime::format_rfc3339_seconds(time))?;
    // `…:44Z` → `…:44.`
    text.truncate(text.as_str().len().saturating_sub(1));
    text.push(b".")?;
    Ok(text)
}

/// Writes each visited field as `"name":value`, comma-separated.
struct Members<'w, W: fmt::Write> {
    writer: &'w mut W,
    first: bool,
    /// Whether the first member opens the object (`{` before it).
    opens: bool,
    result: fmt::Result,
}

impl<'w, W: fmt::Write> Members<'w, W> {
    /// Members of an object that the first of them opens.
    fn opening(writer: &'w mut W) -> Members<'w, W> {
        Members {
            writer,
            first: true,
            opens: true,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        self.member_after(field, "\":", value);
    }

    /// A member whose value is a JSON string: the key and the string's
    /// opening quote in one write, then the text `value` writes, escaped,
    /// then the closing quote.
    fn string_member(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut Escaper<'_, W>) -> fmt::Result,
    ) {
        self.member_after(field, "\":\"", |w| {
            value(&mut Escaper(&mut *w))?;
            w.write_char('"')
        });
    }

    /// `"name` then `after` (the rest of the key, and of the value's
    /// opening), then the value.
    fn member_after(
        &mut self,
        field: &Field,
        after: &str,
        value: impl FnOnce(&mut W) -> fmt::Result,
    ) {
        if self.result.is_err() || is_directive(field.name()) {
            return;
        }
        self.result = (|| {
            let first = std::mem::replace(&mut self.first, false);
            if first && self.opens {
                self.writer.write_char('{')?;
            }
            write_key(self.writer, first, field.name(), after)?;
            value(self.writer)
        })();
    }
}

/// `"name":` (or whatever `after` closes the key with), after a comma
/// unless `first`. A name that needs no escaping (all of ours) is written
/// as it is, between the two pieces.
fn write_key(w: &mut impl fmt::Write, first: bool, name: &str, after: &str) -> fmt::Result {
    w.write_str(if first { "\"" } else { ",\"" })?;
    if needs_escaping(name.as_bytes()) {
        Escaper(&mut *w).write_str(name)?;
    } else {
        w.write_str(name)?;
    }
    w.write_str(after)
}

impl<W: fmt::Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.string_member(field, |w| w.write_str(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |w| write_f64(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string_member(field, |w| write!(w, "{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string_member(field, |w| write!(w, "{value:?}"));
    }
}

/// `value` as JSON: as Rust's `Display` writes it (the shortest text that
/// reads back as the same number), `null` for NaN and the infinities,
/// which JSON lacks. The numbers logged on every call are durations in
/// milliseconds rounded to the microsecond; for a double nearest to a
/// number of thousandths under 10^12 that number's decimal text is the
/// one `Display` writes (such doubles lie far less than a thousandth
/// apart, so no shorter text reads back as the same one), written here
/// from its digits without `core::fmt`'s float formatting (a thousand
/// instructions a line, callgrind).
fn write_f64(w: &mut impl fmt::Write, value: f64) -> fmt::Result {
    if !value.is_finite() {
        return w.write_str("null");
    }
    let thousandths = (value * 1000.0).round();
    if value.abs() >= 1e12 || thousandths / 1000.0 != value {
        return write!(w, "{value}");
    }
    let thousandths = thousandths.abs() as u64;
    let mut text = StackText::<32>::new();
    if value.is_sign_negative() {
        text.push(b"-")?;
    }
    text.push_decimal(thousandths / 1000)?;
    let fraction = thousandths % 1000;
    if fraction != 0 {
        let digits = [
            b'.',
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ];
        let kept = if fraction.is_multiple_of(100) {
            2
        } else if fraction.is_multiple_of(10) {
            3
        } else {
            4
        };
        text.push(&digits[..kept])?;
    }
    w.write_str(text.as_str())
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
/// a backslash or a control character. Most of what is logged needs none,
/// and most of it is short (keys, ids, names): eight bytes at a time in a
/// word (the last word overlapping the one before it when the length is
/// not a multiple of eight), each test a few integer operations.
fn needs_escaping(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| is_special(b));
    }
    let mut words = bytes.chunks_exact(8);
    let found = words.by_ref().any(|word| special_in(read_word(word)));
    found || (!words.remainder().is_empty() && special_in(read_word(&bytes[bytes.len() - 8..])))
}

fn is_special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn read_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// Whether a byte of `word` is special ([`is_special`]). A byte's top bit
/// ends up set for a byte below 0x20 (the subtraction borrows) and for a
/// byte equal to `"` or `\` (zero once XORed with it, then it borrows);
/// `& !x` keeps bytes of 0x80 and above out. A borrow can carry into the
/// byte above a special one and mark it too, never one below the lowest
/// special byte, so the answer for the word as a whole is exact.
fn special_in(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let equal = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    (below(word, 0x20) | equal(word, b'"') | equal(word, b'\\')) & TOPS != 0
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
        parsed(&logged_text(JsonLines::default(), emit))
    }

    /// What `emit` logs through `lines`, beside the trace-id layer.
    fn logged_text(lines: JsonLines, emit: impl FnOnce()) -> String {
        let written = Lines::default();
        let out = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields)
            .event_format(lines)
            .with_writer(move || out.clone());
        let subscriber = tracing_subscriber::registry()
            .with(crate::trace_ids::TraceIdLayer::default())
            .with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(written.0.lock().unwrap().clone()).unwrap()
    }

    fn parsed(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn lines_write_each_span_s_trace_id_once_when_asked_to() {
        let mut traces = Vec::new();
        let emit = |traces: &mut Vec<String>| {
            let call = tracing::info_span!("grpc.server", request_id = "r-1", trace_id = Empty);
            let trace = crate::propagation::trace_id(&call).unwrap();
            traces.push(crate::text::trace_id(trace).as_str().to_owned());
            call.in_scope(|| {
                tracing::info!("in the call");
                tracing::info_span!("grpc.client").in_scope(|| tracing::info!("in a client call"));
            });
        };
        let text = logged_text(JsonLines { trace_ids: true }, || emit(&mut traces));
        let lines = parsed(&text);
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert_eq!(line["span"]["trace_id"], traces[0].as_str(), "{line}");
        }
        assert_eq!(
            text.matches("\"trace_id\"").count(),
            2,
            "once a line: {text}"
        );
        assert_eq!(lines[0]["span"]["request_id"], "r-1");
        assert_eq!(lines[0]["span"]["name"], "grpc.server");

        // Not asked to: only a recorded field is written.
        let text = logged_text(JsonLines::default(), || emit(&mut traces));
        assert!(!text.contains("trace_id"), "{text}");
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

    /// What a line in a server call's span and its access line read, for
    /// a call span with its fields `typed` (or recorded) under a caller in
    /// trace `caller_trace`.
    fn server_call_lines(typed: bool, caller_trace: &str) -> String {
        use opentelemetry::propagation::TextMapPropagator as _;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&crate::propagation::HeaderReader(&headers));
        let path = "/shop.user.v1.UserService/GetUser";
        logged_text(JsonLines { trace_ids: true }, || {
            let (labels, request_id) = (
                crate::labels::MethodLabels::of(path),
                &http::HeaderValue::from_static("order-42.retry:1"),
            );
            let span = if typed {
                crate::call::typed_server_span(labels, request_id, parent)
            } else {
                crate::call::declared_server_span(path, labels, request_id, parent)
            };
            span.in_scope(|| tracing::warn!("in the call"));
            tracing::info!(target: "access", parent: &span, code = "OK", "rpc");
        })
    }

    #[test]
    fn a_server_call_s_lines_read_the_same_whether_its_fields_are_typed_or_recorded() {
        let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let typed = server_call_lines(true, caller_trace);
        let recorded = server_call_lines(false, caller_trace);
        let (typed_lines, recorded_lines) = (parsed(&typed), parsed(&recorded));
        assert_eq!(typed_lines.len(), 2, "{typed}");
        for (typed_line, recorded_line) in typed_lines.iter().zip(&recorded_lines) {
            let expected = serde_json::json!({
                "rpc.system": "grpc",
                "rpc.service": "shop.user.v1.UserService",
                "rpc.method": "GetUser",
                "request_id": "order-42.retry:1",
                "trace_id": caller_trace,
                "name": "grpc.server",
            });
            assert_eq!(typed_line["span"], expected, "{typed}");
            assert_eq!(recorded_line["span"], expected, "{recorded}");
            assert_eq!(typed_line["message"], recorded_line["message"]);
        }
        // Written in the order the span declares its fields, each once.
        for line in typed.lines() {
            let span = &line[line.find("\"span\":").unwrap()..];
            let keys = [
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "request_id",
                "trace_id",
                "name",
            ];
            let at: Vec<usize> = keys
                .iter()
                .map(|k| {
                    let key = format!("\"{k}\":");
                    assert_eq!(span.matches(&key).count(), 1, "{k} in {line}");
                    span.find(&key).unwrap()
                })
                .collect();
            assert!(at.is_sorted(), "{line}");
        }
    }

    #[test]
    fn each_span_keeps_its_own_fields_whatever_their_size() {
        let long = "x".repeat(BUFFER_KEPT + 1);
        let lines = logged(|| {
            let first = tracing::info_span!("first", before = "one", value = %7, after = "three");
            first.in_scope(|| tracing::info!("in first"));
            let big = tracing::info_span!("big", long = long.as_str());
            big.in_scope(|| tracing::info!("in big"));
            let small = tracing::info_span!("small", short = "s");
            small.in_scope(|| tracing::info!("in small"));
            first.in_scope(|| tracing::info!("in first again"));
        });
        assert_eq!(lines.len(), 4);
        for at in [0, 3] {
            let first = &lines[at]["span"];
            assert_eq!(
                (&first["before"], &first["value"], &first["after"]),
                (&"one".into(), &"7".into(), &"three".into()),
                "{first}"
            );
        }
        assert!(lines[1]["span"]["long"] == long.as_str(), "the long field");
        let small = &lines[2]["span"];
        assert_eq!(small["short"], "s", "{small}");
        assert_eq!(small.as_object().unwrap().len(), 2, "{small}");
    }

    #[test]
    fn numbers_read_as_their_display() {
        let mut values: Vec<f64> = (0..=200_000).map(|k| k as f64 / 1000.0).collect();
        // Larger numbers of thousandths, up to the fast path's bound.
        let mut k: u64 = 1;
        for _ in 0..100_000 {
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            values.push((k % 1_000_000_000_000_000) as f64 / 1000.0);
        }
        values.extend([
            -0.0,
            -1.5,
            -0.001,
            999_999_999_999.999,
            1e12,
            1e13,
            1e-7,
            0.1 + 0.2,
            123.4567,
            1.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ]);
        for value in values.iter().flat_map(|v| [*v, -*v]) {
            let mut ours = String::new();
            write_f64(&mut ours, value).unwrap();
            assert_eq!(ours, value.to_string(), "{value:?}");
        }
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut ours = String::new();
            write_f64(&mut ours, value).unwrap();
            assert_eq!(ours, "null");
        }
    }

    #[test]
    fn timestamps_have_tracing_subscriber_s_shape() {
        let mut ours = String::new();
        write_timestamp(&mut ours).unwrap();
        let mut theirs = String::new();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let shape = |t: &str| {
            t.chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect::<String>()
        };
        assert_eq!(shape(&ours), "0000-00-00T00:00:00.000000Z");
        assert_eq!(shape(&ours), shape(&theirs));
        let ours = humantime::parse_rfc3339(&ours).unwrap();
        let theirs = humantime::parse_rfc3339(&theirs).unwrap();
        assert!(theirs.duration_since(ours).unwrap() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn times_read_as_humantime_writes_them_whichever_second_came_before() {
        let at = |micros: u64| UNIX_EPOCH + Duration::from_micros(micros);
        let mut times = vec![at(0), at(999_999), at(1_000_000), at(59_999_999)];
        // Runs within one second (the kept text reused), then jumps
        // forward and back (replaced), leap days and the year 9999.
        let mut micros: u64 = 1_796_659_514_000_000;
        for step in [
            1,
            7,
            999,
            123_456,
            999_999,
            1,
            86_400_000_000,
            3,
            17_000_001,
        ] {
            micros += step;
            times.push(at(micros));
        }
        times.push(at(951_782_400_123_456)); // 2000-02-29
        times.push(at(1_796_659_514_000_001));
        times.push(at(253_402_300_799_999_999)); // 9999-12-31T23:59:59.999999
        for time in times {
            let mut ours = String::new();
            write_time(&mut ours, time).unwrap();
            assert_eq!(ours, humantime::format_rfc3339_micros(time).to_string());
        }
        // Before 1970 (a clock set so): tracing-subscriber's own text of
        // the clock's time, not a panic.
        let mut ours = String::new();
        write_time(&mut ours, UNIX_EPOCH - Duration::from_secs(1)).unwrap();
        assert_eq!(ours.len(), "0000-00-00T00:00:00.000000Z".len(), "{ours}");
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
        // Every byte value at every place of texts from 1 to 25 bytes
        // long (short ones, whole words, the overlapping last word), the
        // rest of the text each byte that is never special next to
        // special ones (a borrow between bytes must neither hide nor
        // invent one).
        for len in 1..=25 {
            for filler in [
                b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xa2, 0xdc, 0xff,
            ] {
                for at in 0..len {
                    for byte in 0..=u8::MAX {
                        let mut text = vec![filler; len];
                        text[at] = byte;
                        assert_eq!(
                            needs_escaping(&text),
                            is_special(byte),
                            "{byte:#x} at {at} of {len} among {filler:#x}"
                        );
                    }
                }
            }
        }
        assert!(!needs_escaping("é, ü and 🦀 go as they are".as_bytes()));
        assert!(needs_escaping("é, ü and 🦀 go \"as\" they are".as_bytes()));
    }

    #[test]
    fn keys_are_written_whole_or_escaped() {
        let mut out = String::new();
        write_key(&mut out, true, "request_id", "\":").unwrap();
        write_key(&mut out, false, "rpc.grpc.status_code", "\":").unwrap();
        write_key(&mut out, false, "a \"quoted\" name", "\":").unwrap();
        let long = "k".repeat(80);
        write_key(&mut out, false, &long, "\":\"").unwrap();
        assert_eq!(
            out,
            format!(
                "\"request_id\":,\"rpc.grpc.status_code\":,\"a \\\"quoted\\\" name\":,\"{long}\":\""
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
