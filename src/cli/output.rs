//! The CLI's output contract (docs/CLI.md): the `--json` objects, the text
//! lines, the escaping of keys and values, and the one way the CLI writes to
//! stdout.
//!
//! Pure except for [`emit`]: every function here turns answers into text, so
//! that the exact output is checked by unit tests. The JSON objects are plain
//! structs of their own, never the wire enums of `proto` (their internal
//! variant names are no contract).

use std::io::Write;

use serde::Serialize;

use crate::cli::exit::Failure;
use crate::proto::StopRecord;

// The JSON objects the HTTP API shares with `--json` live in `contract`.
pub use crate::contract::{rfc3339, AttemptJson, JobJson, ScriptJson};

/// A setting in JSON: `value` when it is UTF-8, else `value_base64`
/// (standard alphabet, padded), never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingJson {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl SettingJson {
    pub fn new(key: &str, value: &[u8]) -> SettingJson {
        let (value, value_base64) = match std::str::from_utf8(value) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64(value))),
        };
        SettingJson {
            key: key.to_string(),
            value,
            value_base64,
        }
    }
}

/// `settings list --json`: one page, and the `--after` of the next one
/// (`None`: this was the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListJson {
    pub items: Vec<SettingJson>,
    pub next_after: Option<String>,
}

/// `settings set --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetJson {
    pub key: String,
    pub applied_index: u64,
}

/// `stop --json`. `stopped`: the instance has exited (false only with
/// `--no-wait`: the stop was asked for and is under way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopJson {
    pub name: String,
    pub stopped: bool,
}

/// `coordinator transfer --json`: the server that coordinates now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferJson {
    pub coordinator: String,
}

/// Where a start-order line's facts come from.
pub const SOURCE_RUNNING: &str = "running";
pub const SOURCE_LOCAL_DATA: &str = "local data";
pub const SOURCE_UNKNOWN: &str = "unknown";

/// One server of `start-order`, in the order to start them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartOrderEntry {
    pub name: String,
    /// `None`: no database known (never started, or nothing readable).
    pub applied_index: Option<u64>,
    /// [`SOURCE_RUNNING`], [`SOURCE_LOCAL_DATA`] or [`SOURCE_UNKNOWN`].
    pub source: &'static str,
    /// Its `stopped.json`: the last graceful stop.
    pub last_stop: Option<StopRecord>,
}

/// `start-order --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartOrderJson {
    pub order: Vec<StartOrderEntry>,
}

/// One JSON document on one line.
/// What a command that changed something prints: `text` (a line), or with
/// `--json` `value` as one JSON line.
pub fn changed(json: bool, text: &str, value: serde_json::Value) -> Result<(), Failure> {
    if json {
        emit(&json_line(&value))
    } else {
        emit(&format!("{text}\n"))
    }
}

pub fn json_line<T: Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).expect("output objects encode");
    line.push('\n');
    line
}

/// `settings get` in text: the value, escaped, on one line.
pub fn value_text(value: &[u8]) -> String {
    format!("{}\n", escape_bytes(value))
}

/// `settings list` in text: `KEY = VALUE` per line, both escaped.
pub fn list_text(items: &[(String, Vec<u8>)]) -> String {
    items
        .iter()
        .map(|(k, v)| format!("{} = {}\n", escape_text(k), escape_bytes(v)))
        .collect()
}

/// The line (for stderr) that tells how to get the page after `next_after`.
/// `limit`: the `--limit` the user gave, repeated in the command.
pub fn next_page_hint(next_after: &str, limit: Option<u32>) -> String {
    let limit = limit.map_or(String::new(), |n| format!(" --limit {n}"));
    format!(
        "more settings follow; next page: claro settings list{limit} --after {}\n",
        shell_word(next_after)
    )
}

/// `settings set` in text.
pub fn set_text(applied_index: u64) -> String {
    format!("applied at index {applied_index}\n")
}

/// `stop` in text.
pub fn stop_text(name: &str, stopped: bool) -> String {
    match stopped {
        true => format!("{name} stopped\n"),
        false => format!("{name} is stopping\n"),
    }
}

/// `start-order` in text: one numbered line per server.
pub fn start_order_text(order: &[StartOrderEntry]) -> String {
    let mut out = String::new();
    for (i, e) in order.iter().enumerate() {
        let applied = e.applied_index.map_or("-".to_string(), |a| a.to_string());
        let stop = match &e.last_stop {
            Some(r) if r.left => {
                format!(" left the cluster (remaining: {})", r.remaining.join(", "))
            }
            Some(_) => " stopped as a member".to_string(),
            None => String::new(),
        };
        out += &format!(
            "{}. {}  applied index {applied}  [{}]{stop}\n",
            i + 1,
            e.name,
            e.source
        );
    }
    out
}

/// Writes `text` to stdout. A closed stdout (the reader went away, as with
/// `| head`) ends the command quietly: the work is done, nobody reads on.
pub fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::quiet()),
        Err(e) => Err(Failure::failed(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes a note to stderr; a closed stderr is ignored (nobody reads it).
pub fn note(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

// ---------------------------------------------------------------------------
// Escaping

/// Characters a terminal would act on or that reorder what is shown: C0 and
/// C1 controls, DEL, and the Unicode bidirectional controls (the "Trojan
/// Source" characters).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// A key or value for text output, on one line: a backslash is doubled,
/// `\n`, `\r`, `\t`, `\0` are written so, every other control or
/// bidirectional character as `\u{HEX}` (as Rust writes them).
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// A log for text output: each line as [`escape_text`] writes it (a job's
/// log is other people's text: no control sequence reaches the terminal),
/// the line ends kept.
pub fn escape_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        out.push_str(&escape_text(body));
        out.push_str(end);
    }
    out
}

/// Like [`escape_text`], for bytes: each byte that is not part of valid
/// UTF-8 is written `\xHH`.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// `word` as one shell word (POSIX sh for printable text; bash's `$'…'`
/// when it holds characters that [`escape_text`] escapes).
pub fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-/:@%+=,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    if !word.chars().any(needs_escape) {
        return format!("'{}'", word.replace('\'', "'\\''"));
    }
    let mut out = String::from("$'");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if needs_escape(c) => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Standard base64 (RFC 4648 §4, padded).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_text("plain ünïcødé ✓"), "plain ünïcødé ✓");
        assert_eq!(escape_text("a\nb\rc\td\0e"), "a\\nb\\rc\\td\\0e");
        assert_eq!(escape_text("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape_text("del\u{7f} c1\u{85}"), "del\\u{7f} c1\\u{85}");
        assert_eq!(escape_text("a\u{202e}b\u{2066}"), "a\\u{202e}b\\u{2066}");
        // A backslash is doubled, so an escape in the output is never ambiguous.
        assert_eq!(escape_text("C:\\new"), "C:\\\\new");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_written_as_hex_escapes() {
        assert_eq!(escape_bytes(b"ok\xff\xfe\n"), "ok\\xff\\xfe\\n");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
        // A truncated multi-byte sequence.
        assert_eq!(escape_bytes(b"\xc3"), "\\xc3");
    }

    #[test]
    fn a_setting_is_value_when_utf8_else_value_base64() {
        assert_eq!(
            json_line(&SettingJson::new("colour", b"RED")),
            "{\"key\":\"colour\",\"value\":\"RED\"}\n"
        );
        assert_eq!(
            json_line(&SettingJson::new("bin", b"\xff\x00")),
            "{\"key\":\"bin\",\"value_base64\":\"/wA=\"}\n"
        );
        assert_eq!(
            json_line(&SettingJson::new("nl\n", b"a\x1bb")),
            "{\"key\":\"nl\\n\",\"value\":\"a\\u001bb\"}\n"
        );
    }

    #[test]
    fn list_page_in_json_and_text() {
        let items = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b\nc".to_string(), b"x\xff".to_vec()),
        ];
        let page = ListJson {
            items: items.iter().map(|(k, v)| SettingJson::new(k, v)).collect(),
            next_after: Some("b\nc".into()),
        };
        assert_eq!(
            json_line(&page),
            "{\"items\":[{\"key\":\"a\",\"value\":\"1\"},{\"key\":\"b\\nc\",\"value_base64\":\"eP8=\"}],\"next_after\":\"b\\nc\"}\n"
        );
        let last = ListJson {
            items: vec![],
            next_after: None,
        };
        assert_eq!(json_line(&last), "{\"items\":[],\"next_after\":null}\n");
        assert_eq!(list_text(&items), "a = 1\nb\\nc = x\\xff\n");
        assert_eq!(list_text(&[]), "");
    }

    #[test]
    fn the_next_page_hint_is_a_command_to_paste() {
        assert_eq!(
            next_page_hint("blob0002", None),
            "more settings follow; next page: claro settings list --after blob0002\n"
        );
        assert_eq!(
            next_page_hint("it's here", Some(5)),
            "more settings follow; next page: claro settings list --limit 5 --after 'it'\\''s here'\n"
        );
        assert_eq!(shell_word("a\nb'\\"), "$'a\\x0ab\\'\\\\'");
        assert_eq!(shell_word("x\u{85}"), "$'x\\xc2\\x85'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn set_stop_and_transfer_objects() {
        let set = SetJson {
            key: "k".into(),
            applied_index: 42,
        };
        assert_eq!(json_line(&set), "{\"key\":\"k\",\"applied_index\":42}\n");
        assert_eq!(set_text(42), "applied at index 42\n");
        let stop = StopJson {
            name: "srv2".into(),
            stopped: true,
        };
        assert_eq!(json_line(&stop), "{\"name\":\"srv2\",\"stopped\":true}\n");
        assert_eq!(stop_text("srv2", true), "srv2 stopped\n");
        assert_eq!(stop_text("srv2", false), "srv2 is stopping\n");
        let t = TransferJson {
            coordinator: "srv3".into(),
        };
        assert_eq!(json_line(&t), "{\"coordinator\":\"srv3\"}\n");
    }

    #[test]
    fn start_order_in_json_and_text() {
        let order = vec![
            StartOrderEntry {
                name: "srv2".into(),
                applied_index: Some(12),
                source: SOURCE_LOCAL_DATA,
                last_stop: Some(StopRecord {
                    stopped_at_ms: 1000,
                    left: false,
                    remaining: vec![],
                    applied_index: 12,
                    cluster_id: Some("c1".into()),
                }),
            },
            StartOrderEntry {
                name: "srv1".into(),
                applied_index: Some(9),
                source: SOURCE_LOCAL_DATA,
                last_stop: Some(StopRecord {
                    stopped_at_ms: 900,
                    left: true,
                    remaining: vec!["srv2".into(), "srv3".into()],
                    applied_index: 9,
                    cluster_id: Some("c1".into()),
                }),
            },
            StartOrderEntry {
                name: "srv3".into(),
                applied_index: None,
                source: SOURCE_UNKNOWN,
                last_stop: None,
            },
        ];
        assert_eq!(
            start_order_text(&order),
            "1. srv2  applied index 12  [local data] stopped as a member\n\
             2. srv1  applied index 9  [local data] left the cluster (remaining: srv2, srv3)\n\
             3. srv3  applied index -  [unknown]\n"
        );
        let json = json_line(&StartOrderJson {
            order: order[1..].to_vec(),
        });
        assert_eq!(
            json,
            "{\"order\":[{\"name\":\"srv1\",\"applied_index\":9,\"source\":\"local data\",\"last_stop\":{\"stopped_at_ms\":900,\"left\":true,\"remaining\":[\"srv2\",\"srv3\"],\"applied_index\":9,\"cluster_id\":\"c1\"}},{\"name\":\"srv3\",\"applied_index\":null,\"source\":\"unknown\",\"last_stop\":null}]}\n"
        );
    }
}

/// Rows under a header line, each column as wide as its widest cell (two
/// spaces between columns; the last column is not padded).
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            match i + 1 == N {
                true => out.push_str(cell),
                false => out.push_str(&format!("{cell:<w$}  ")),
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    for row in rows {
        out.push_str(&line(std::array::from_fn(|i| row[i].as_str())));
    }
    out
}

/// `claro jobs` as text: one line per job, newest first.
pub fn jobs_text(jobs: &[crate::work::jobs::Job]) -> String {
    let mut out = format!(
        "{:<20}  {:<9}  {:<9}  {:<12}  {:>7}  {:<24}  RESULT\n",
        "ID", "STATE", "KIND", "INSTANCE", "ATTEMPT", "CREATED"
    );
    for j in jobs {
        let result = j.error.as_deref().or(j.result.as_deref()).unwrap_or("");
        let first_line = result.lines().next().unwrap_or("");
        out.push_str(&format!(
            "{:<20}  {:<9}  {:<9}  {:<12}  {:>7}  {:<24}  {}\n",
            j.id,
            j.state.as_str(),
            j.spec.kind.as_str(),
            escape_text(j.instance.as_deref().unwrap_or("-")),
            format!("{}/{}", j.attempt, j.spec.max_attempts.max(j.attempt)),
            rfc3339(j.created_ms),
            escape_text(first_line)
        ));
    }
    out
}

/// `claro job ID` as text: one `field: value` line each, then the log.
pub fn job_text(job: &crate::work::jobs::Job, with_log: bool) -> String {
    let j = JobJson::new(job, false);
    let opt = |v: &Option<String>| v.as_deref().map(escape_text).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "id: {}\nkind: {}\nstate: {}\ninstance: {}\nattempt: {}/{}\npriority: {}\ncreated: {}\nstarted: {}\nfinished: {}\nresult: {}\nerror: {}\n",
        j.id, j.kind, j.state, opt(&j.instance), j.attempt, j.max_attempts, j.priority,
        j.created_at, opt(&j.started_at), opt(&j.finished_at), opt(&j.result), opt(&j.error)
    );
    if job.attempts.len() > 1 {
        out.push_str("attempts:\n");
        for a in &job.attempts {
            let a = AttemptJson::new(a);
            out.push_str(&format!(
                "  {} on {}: {}, started {}, ended {}{}\n",
                a.attempt,
                opt(&a.instance),
                a.outcome,
                opt(&a.started_at),
                opt(&a.ended_at),
                a.error
                    .as_deref()
                    .map(|e| format!(": {}", escape_text(e)))
                    .unwrap_or_default()
            ));
        }
    }
    if with_log {
        out.push_str("log:\n");
        for line in job.log.lines() {
            out.push_str("  ");
            out.push_str(&escape_text(line));
            out.push('\n');
        }
    }
    out
}

/// A job's profile as a table, slowest first, times in milliseconds.
pub fn profile_text(rows: &[crate::work::jobs::ProfileRow]) -> String {
    if rows.is_empty() {
        return "profile: nothing timed (a command, or a script that called no host function)\n"
            .into();
    }
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(8);
    let mut out = format!(
        "{:<width$}  {:>7}  {:>10}  {:>10}  {:>10}  {:>10}\n",
        "FUNCTION", "CALLS", "TOTAL ms", "PREPARE ms", "WAIT ms", "RECEIVE ms"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<width$}  {:>7}  {:>10}  {:>10}  {:>10}  {:>10}\n",
            escape_text(&r.name),
            r.calls,
            ms(r.total_us),
            ms(r.prepare_us),
            ms(r.wait_us),
            ms(r.receive_us)
        ));
    }
    out
}

#[cfg(test)]
mod job_tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns() {
        let rows = [
            ["prepress-check".to_string(), "12".into(), "x".into()],
            ["a".to_string(), "3".into(), "y".into()],
        ];
        assert_eq!(
            table(["NAME", "VERSION", "ADDED"], &rows),
            "NAME            VERSION  ADDED\nprepress-check  12       x\na               3        y\n"
        );
    }

    #[test]
    fn a_profile_is_a_table_in_milliseconds() {
        let row = crate::work::jobs::ProfileRow {
            name: "call lib.f".into(),
            calls: 2,
            total_us: 12_500,
            prepare_us: 2_000,
            wait_us: 10_000,
            receive_us: 500,
        };
        let text = profile_text(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("FUNCTION") && lines[0].contains("WAIT ms"));
        assert!(
            lines[1].starts_with("call lib.f")
                && lines[1].contains("12.500")
                && lines[1].contains("10.000"),
            "{text}"
        );
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_450_000_000), "2026-11-23T16:06:40.000Z");
    }
}
