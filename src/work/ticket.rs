//! Job tickets: the sidecar metadata that travels with a hotfolder file or
//! job folder (`NAME.json` or `NAME.xml` beside it, `ticket.json` or
//! `ticket.xml` inside a job folder), read into fields that the action
//! sees, and the fields a script sets for the result ticket. Pure: bytes in,
//! fields out.
//!
//! Fields are flat text: a JSON ticket's nested keys are joined with `.`
//! (`{"customer": {"name": "Ink"}}` is `customer.name`; array items are
//! `items.0`, `items.1`, ...; numbers and booleans as JSON writes them;
//! null as empty text). An XML ticket's root element is the ticket: each
//! element below it with text is a field named by the element names from
//! there (`<job><customer><name>Ink</name></customer></job>` is
//! `customer.name`), each attribute is one more `.name` after its element
//! (`<job id="7">` is `id`), and a key met again gets `.2`, `.3`, ... So a
//! command reads any field with `{ticket.KEY}` or `$CLARO_TICKET_KEY`.

use std::collections::BTreeMap;

/// Largest ticket read; a bigger one fails the job naming this limit.
pub const TICKET_BYTES_MAX: usize = 1024 * 1024;
/// Fields of one ticket, read or set by a script.
pub const FIELDS_MAX: usize = 1_000;
/// Longest field name.
pub const KEY_BYTES_MAX: usize = 256;
/// Longest value a script sets with `ticket_set`.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Nesting of a ticket, at most.
const DEPTH_MAX: usize = 32;

/// A ticket's fields, in key order.
pub type Fields = BTreeMap<String, String>;

/// The suffixes of a ticket beside a file: `NAME.json`, `NAME.xml`.
pub const SIDECAR_SUFFIXES: [&str; 2] = [".json", ".xml"];
/// A ticket inside a job folder.
pub const FOLDER_TICKETS: [&str; 2] = ["ticket.json", "ticket.xml"];
/// The marker of the `marker` trigger: `NAME.ready`.
pub const MARKER_SUFFIX: &str = ".ready";

/// Reads a ticket: JSON when `name` ends in `.json`, XML otherwise. The
/// error names what is wrong and where (line and column).
pub fn parse(name: &str, bytes: &[u8]) -> Result<Fields, String> {
    if bytes.len() > TICKET_BYTES_MAX {
        return Err(format!(
            "the ticket {name} has {} bytes, over the limit of {TICKET_BYTES_MAX}",
            bytes.len()
        ));
    }
    let mut fields = Fields::new();
    if name.ends_with(".json") {
        parse_json(bytes, &mut fields)
    } else {
        parse_xml(bytes, &mut fields)
    }
    .map_err(|e| format!("the ticket {name}: {e}"))?;
    Ok(fields)
}

fn parse_json(bytes: &[u8], fields: &mut Fields) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("a JSON ticket is an object (`{\"key\": value, ...}`)".into());
    }
    flatten_json("", &value, 0, fields)
}

fn flatten_json(
    key: &str,
    value: &serde_json::Value,
    depth: usize,
    fields: &mut Fields,
) -> Result<(), String> {
    use serde_json::Value;
    if depth > DEPTH_MAX {
        return Err(format!("nested deeper than {DEPTH_MAX} levels at `{key}`"));
    }
    let join = |k: &str| joined(key, k);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten_json(&join(k), v, depth + 1, fields)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(&join(&i.to_string()), v, depth + 1, fields)?;
            }
            Ok(())
        }
        Value::String(s) => insert(fields, key, s.clone()),
        Value::Null => insert(fields, key, String::new()),
        other => insert(fields, key, other.to_string()),
    }
}

fn parse_xml(bytes: &[u8], fields: &mut Fields) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| e.to_string())?;
    flatten_xml("", doc.root_element(), 0, fields)
}

fn flatten_xml(
    key: &str,
    node: roxmltree::Node<'_, '_>,
    depth: usize,
    fields: &mut Fields,
) -> Result<(), String> {
    if depth > DEPTH_MAX {
        return Err(format!("nested deeper than {DEPTH_MAX} levels at `{key}`"));
    }
    let join = |k: &str| joined(key, k);
    for a in node.attributes() {
        insert_unique(fields, &join(a.name()), a.value().to_string())?;
    }
    let children: Vec<_> = node.children().filter(|c| c.is_element()).collect();
    if children.is_empty() && !key.is_empty() {
        let text = node.text().unwrap_or("").trim().to_string();
        return insert_unique(fields, key, text);
    }
    for child in children {
        flatten_xml(&join(child.tag_name().name()), child, depth + 1, fields)?;
    }
    Ok(())
}

/// A nested field's name: `outer.inner` (`inner` at the top).
fn joined(outer: &str, inner: &str) -> String {
    if outer.is_empty() {
        inner.to_string()
    } else {
        format!("{outer}.{inner}")
    }
}

/// `key`, or `key.2`, `key.3`, ... when taken (repeated XML elements).
fn insert_unique(fields: &mut Fields, key: &str, value: String) -> Result<(), String> {
    if !fields.contains_key(key) {
        return insert(fields, key, value);
    }
    let free = (2..=FIELDS_MAX + 1)
        .map(|n| format!("{key}.{n}"))
        .find(|k| !fields.contains_key(k))
        .expect("fewer fields than the limit");
    insert(fields, &free, value)
}

fn insert(fields: &mut Fields, key: &str, value: String) -> Result<(), String> {
    check_key(key)?;
    if fields.len() >= FIELDS_MAX && !fields.contains_key(key) {
        return Err(format!("more than {FIELDS_MAX} fields"));
    }
    fields.insert(key.to_string(), value);
    Ok(())
}

/// A field name: 1 to `KEY_BYTES_MAX` bytes, no control characters and no
/// `{` or `}` (it goes into a `{ticket.KEY}` placeholder).
pub fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= KEY_BYTES_MAX
        && !key.chars().any(|c| c.is_control() || c == '{' || c == '}');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a field name: 1 to {KEY_BYTES_MAX} bytes, without control characters or braces",
            key.escape_debug()
        ))
    }
}

/// A field set by a script (`ticket_set`), checked against the limits.
pub fn set(fields: &mut Fields, key: &str, value: &str) -> Result<(), String> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(format!(
            "the value of `{key}` has {} bytes, over the limit of {VALUE_BYTES_MAX}",
            value.len()
        ));
    }
    insert(fields, key, value.to_string())
}

/// The environment variable of field `key`: `CLARO_TICKET_` and the key in
/// capitals, every character other than a letter or digit as `_`
/// (`customer.name` is `CLARO_TICKET_CUSTOMER_NAME`).
pub fn env_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("CLARO_TICKET_{tail}")
}

/// Every field as an environment variable (see `env_name`).
pub fn env(fields: &Fields) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (env_name(k), v.clone()))
        .collect()
}

/// Replaces each `{ticket.KEY}` in `arg` with the field's value; a field
/// the ticket lacks is an error naming it (the action would otherwise run
/// with an empty argument).
pub fn expand(arg: &str, fields: &Fields) -> Result<String, String> {
    const OPEN: &str = "{ticket.";
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let key = &after[..end];
        let value = fields.get(key).ok_or_else(|| {
            format!("the template names {{ticket.{key}}} but the job's ticket has no field `{key}`")
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The field names a template argument uses (`{ticket.KEY}`).
pub fn placeholders(arg: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut rest = arg;
    while let Some(at) = rest.find("{ticket.") {
        let after = &rest[at + "{ticket.".len()..];
        let Some(end) = after.find('}') else { break };
        keys.push(&after[..end]);
        rest = &after[end + 1..];
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_ticket_is_flattened_with_dots() {
        let t =
            br#"{"customer": {"name": "Ink & Co", "id": 7}, "items": ["a", null], "rush": true}"#;
        let f = parse("a.pdf.json", t).unwrap();
        assert_eq!(f["customer.name"], "Ink & Co");
        assert_eq!(f["customer.id"], "7");
        assert_eq!(f["items.0"], "a");
        assert_eq!(f["items.1"], "");
        assert_eq!(f["rush"], "true");
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn an_xml_ticket_gives_elements_and_attributes() {
        let t = br#"<?xml version="1.0"?>
            <job id="4711"><customer><name>Ink</name></customer>
            <part>cover</part><part>inner</part><copies>500</copies></job>"#;
        let f = parse("ticket.xml", t).unwrap();
        assert_eq!(f["id"], "4711");
        assert_eq!(f["customer.name"], "Ink");
        assert_eq!(f["part"], "cover");
        assert_eq!(f["part.2"], "inner");
        assert_eq!(f["copies"], "500");
    }

    /// Bad tickets are refused with what is wrong and where; an XML
    /// document type (entity expansion) is refused outright.
    #[test]
    fn bad_tickets_name_what_is_wrong() {
        let e = parse("a.json", b"{\"a\": ").unwrap_err();
        assert!(e.contains("a.json") && e.contains("line 1"), "{e}");
        let e = parse("a.json", b"[1, 2]").unwrap_err();
        assert!(e.contains("is an object"), "{e}");
        let e = parse("t.xml", b"<job><a>1</b></job>").unwrap_err();
        assert!(e.contains("t.xml") && e.contains("1:"), "{e}");
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><j><x>&b;</x></j>"#;
        assert!(parse("t.xml", bomb).is_err());
        let big = vec![b' '; TICKET_BYTES_MAX + 1];
        let e = parse("a.json", &big).unwrap_err();
        assert!(e.contains("TICKET") || e.contains("limit"), "{e}");
        let many: String = (0..=FIELDS_MAX).map(|i| format!("\"k{i}\": 1,")).collect();
        let e = parse("a.json", format!("{{{}\"z\": 1}}", many).as_bytes()).unwrap_err();
        assert!(e.contains("more than 1000 fields"), "{e}");
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let e = parse("a.json", format!("{{\"a\": {deep}}}").as_bytes()).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
    }

    #[test]
    fn placeholders_expand_or_name_the_missing_field() {
        let mut f = Fields::new();
        f.insert("customer.name".into(), "Ink; rm -rf /".into());
        let arg = "--title={ticket.customer.name}!";
        assert_eq!(expand(arg, &f).unwrap(), "--title=Ink; rm -rf /!");
        assert_eq!(placeholders(arg), vec!["customer.name"]);
        let e = expand("{ticket.copies}", &f).unwrap_err();
        assert!(e.contains("no field `copies`"), "{e}");
        assert_eq!(expand("{ticket.", &f).unwrap(), "{ticket.");
        assert_eq!(env_name("customer.name"), "CLARO_TICKET_CUSTOMER_NAME");
    }

    #[test]
    fn a_script_s_fields_keep_the_limits() {
        let mut f = Fields::new();
        set(&mut f, "preflight", "ok").unwrap();
        assert!(set(&mut f, "", "x").is_err());
        assert!(set(&mut f, "a{b}", "x").is_err());
        assert!(set(&mut f, "big", &"x".repeat(VALUE_BYTES_MAX + 1)).is_err());
        for i in 1..FIELDS_MAX {
            set(&mut f, &format!("k{i}"), "v").unwrap();
        }
        assert!(set(&mut f, "one more", "v").is_err());
        set(&mut f, "preflight", "replaced").unwrap();
        assert_eq!(f["preflight"], "replaced");
    }
}
