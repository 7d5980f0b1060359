//! Record bytes in the CLI's json lines, without loss: a field whose bytes are UTF-8 is
//! a json string as it is; any other bytes are base64 (standard alphabet, padded), and
//! the line says so in `<field>_encoding: "base64"`. For headers, `headers_encoding`
//! maps a header name to `"base64"` when any of its values is not UTF-8 (then every
//! value of that name is base64: a record's headers are a list, a name may repeat, and
//! one flag per name must fit all its values). A script that handles text sees no
//! difference; a binary value (a protobuf, a compressed blob) is no longer mangled into
//! replacement characters; and `consume --format json | publish --format json` copies
//! records byte for byte, repeated header names included (printed as repeated keys of
//! the `headers` object, read back in order).
//!
//! Reading (`publish --format json`): `<field>_encoding` absent or `"utf-8"` takes the
//! string's bytes; `"base64"` decodes it; anything else is an error. Header names are
//! text (a name that is not UTF-8 is printed lossily: names are identifiers).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tidelog_client::ConsumedRecord;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A record's headers: (name, value) pairs, in order.
type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// A byte field as json: the text itself when the bytes are UTF-8 (borrowed, no copy),
/// else their base64.
#[derive(Debug)]
struct Field<'a> {
    text: Cow<'a, str>,
    base64: bool,
}

impl<'a> Field<'a> {
    fn of(bytes: &'a [u8]) -> Field<'a> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Field {
                text: Cow::Borrowed(text),
                base64: false,
            },
            Err(_) => Field {
                text: Cow::Owned(BASE64.encode(bytes)),
                base64: true,
            },
        }
    }

    /// Base64 whatever the bytes (a header whose name has another value that is not
    /// UTF-8), else as [`Field::of`].
    fn of_forced(bytes: &'a [u8], base64: bool) -> Field<'a> {
        if base64 {
            Field {
                text: Cow::Owned(BASE64.encode(bytes)),
                base64: true,
            }
        } else {
            Field::of(bytes)
        }
    }

    /// `"base64"` for `<field>_encoding` when it is, else nothing (the field is left out).
    fn encoding(field: &Option<Field<'_>>) -> Option<&'static str> {
        field.as_ref().filter(|f| f.base64).map(|_| "base64")
    }
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A record's headers as a json object of name → value (names lossily as text), in the
/// record's order, a repeated name as a repeated key.
#[derive(Debug)]
struct HeaderValues<'a>(Vec<(Cow<'a, str>, Field<'a>)>);

impl Serialize for HeaderValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One record as a json line, serialized straight from the record's bytes (no
/// intermediate `serde_json::Value`: an extraction prints millions of these).
#[derive(Debug, Serialize)]
pub struct JsonRecord<'a> {
    partition: u32,
    offset: u64,
    timestamp: i64,
    tenant: Option<Field<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_encoding: Option<&'static str>,
    key: Option<Field<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    /// Null for a tombstone.
    value: Option<Field<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
    headers: HeaderValues<'a>,
    /// The header names whose values are base64, each → `"base64"`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers_encoding: BTreeMap<Cow<'a, str>, &'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<&'a str>,
}

impl<'a> JsonRecord<'a> {
    /// `r` as a json line, tagged with `phase` when given (extract's phases).
    pub fn new(r: &'a ConsumedRecord, phase: Option<&'a str>) -> JsonRecord<'a> {
        let (tenant, key, value) = (
            r.tenant.as_deref().map(Field::of),
            r.key.as_deref().map(Field::of),
            r.value.as_deref().map(Field::of),
        );
        let headers_encoding: BTreeMap<Cow<'a, str>, &'static str> = r
            .headers
            .iter()
            .filter(|(_, v)| std::str::from_utf8(v).is_err())
            .map(|(n, _)| (String::from_utf8_lossy(n), "base64"))
            .collect();
        let headers = r
            .headers
            .iter()
            .map(|(n, v)| {
                let name = String::from_utf8_lossy(n);
                let base64 = headers_encoding.contains_key(&name);
                (name, Field::of_forced(v, base64))
            })
            .collect();
        JsonRecord {
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp_ms,
            tenant_encoding: Field::encoding(&tenant),
            key_encoding: Field::encoding(&key),
            value_encoding: Field::encoding(&value),
            tenant,
            key,
            value,
            headers: HeaderValues(headers),
            headers_encoding,
            phase,
        }
    }
}

/// The bytes of `text` under `encoding` (the value of a `..._encoding` field, if any).
fn decode(what: &str, text: &str, encoding: Option<&Value>) -> Result<Vec<u8>, String> {
    match encoding {
        None => Ok(text.as_bytes().to_vec()),
        Some(Value::String(e)) if e == "utf-8" => Ok(text.as_bytes().to_vec()),
        Some(Value::String(e)) if e == "base64" => BASE64
            .decode(text)
            .map_err(|e| format!("{what} is not valid base64: {e}")),
        Some(other) => Err(format!(
            "{what}: unknown encoding {other} (expected \"base64\" or \"utf-8\")"
        )),
    }
}

/// A json line as `publish --format json` reads it: every field may be absent or null;
/// the headers in the line's order, a repeated name kept (a json object read into a map
/// would keep one value per name).
#[derive(Debug, Deserialize)]
pub struct JsonLine {
    tenant: Option<Value>,
    tenant_encoding: Option<Value>,
    key: Option<Value>,
    key_encoding: Option<Value>,
    value: Option<Value>,
    value_encoding: Option<Value>,
    headers: Option<HeaderList>,
    headers_encoding: Option<Map<String, Value>>,
    timestamp: Option<Value>,
}

/// A `headers` object as (name, value) pairs, in order, repeated names kept.
#[derive(Debug, Default)]
struct HeaderList(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = HeaderList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("headers as an object of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<HeaderList, M::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(HeaderList(pairs))
            }
        }
        d.deserialize_map(Pairs)
    }
}

impl JsonLine {
    pub fn parse(line: &str) -> Result<JsonLine, String> {
        serde_json::from_str(line).map_err(|e| format!("invalid json line: {e}"))
    }

    pub fn tenant(&self) -> Result<Option<Vec<u8>>, String> {
        text_field("tenant", &self.tenant, &self.tenant_encoding)
    }

    pub fn key(&self) -> Result<Option<Vec<u8>>, String> {
        text_field("key", &self.key, &self.key_encoding)
    }

    /// `None` (a tombstone) when absent or null. A value that is not a json string is
    /// taken as its json text (`{"value":{"a":1}}` publishes the bytes `{"a":1}`).
    pub fn value(&self) -> Result<Option<Vec<u8>>, String> {
        match (&self.value, &self.value_encoding) {
            (Some(v), None) if !v.is_string() => Ok(Some(v.to_string().into_bytes())),
            _ => text_field("value", &self.value, &self.value_encoding),
        }
    }

    /// The record's timestamp (ms), when the line gives one as an integer.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp.as_ref().and_then(Value::as_i64)
    }

    /// The headers, in the line's order (with `headers_encoding`).
    pub fn headers(&self) -> Result<Headers, String> {
        let Some(HeaderList(headers)) = &self.headers else {
            return Ok(Vec::new());
        };
        headers
            .iter()
            .map(|(name, value)| {
                let value = value.as_str().ok_or("header values must be strings")?;
                let encoding = self.headers_encoding.as_ref().and_then(|e| e.get(name));
                let bytes = decode(&format!("header {name}"), value, encoding)?;
                Ok((name.as_bytes().to_vec(), bytes))
            })
            .collect()
    }
}

/// A field that must be a string (or absent / null: `None`), under its encoding.
fn text_field(
    name: &str,
    value: &Option<Value>,
    encoding: &Option<Value>,
) -> Result<Option<Vec<u8>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => decode(name, s, encoding.as_ref()).map(Some),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The line printed for a record with this value and these headers.
    fn printed(value: Option<&[u8]>, headers: &[(Vec<u8>, Vec<u8>)]) -> String {
        let record = ConsumedRecord {
            partition: 1,
            offset: 42,
            timestamp_ms: 7,
            tenant: Some(b"acme".to_vec()),
            key: Some(b"k".to_vec()),
            value: value.map(<[u8]>::to_vec),
            headers: headers.to_vec(),
        };
        serde_json::to_string(&JsonRecord::new(&record, None)).expect("serialize")
    }

    /// The same line as a json object (repeated keys: the last).
    fn line_of(value: Option<&[u8]>, headers: &[(Vec<u8>, Vec<u8>)]) -> Map<String, Value> {
        serde_json::from_str(&printed(value, headers)).expect("json")
    }

    #[test]
    fn text_stays_text_and_binary_says_base64() {
        let line = line_of(Some(b"hello"), &[(b"type".to_vec(), b"share".to_vec())]);
        assert_eq!(line["value"], "hello");
        assert!(!line.contains_key("value_encoding"));
        assert!(!line.contains_key("headers_encoding"));

        let blob = [0xff, 0x00, 0xfe, b'a'];
        let line = line_of(Some(&blob), &[(b"sig".to_vec(), vec![0x80, 0x81])]);
        assert_eq!(line["value"], "/wD+YQ==");
        assert_eq!(line["value_encoding"], "base64");
        assert_eq!(line["headers"]["sig"], "gIE=");
        assert_eq!(line["headers_encoding"]["sig"], "base64");
    }

    #[test]
    fn a_tombstone_is_null_and_reads_back_as_none() {
        let line = line_of(None, &[]);
        assert_eq!(line["value"], Value::Null);
        let read = JsonLine::parse(&printed(None, &[])).expect("parse");
        assert_eq!(read.value(), Ok(None));
    }

    /// A record's headers are a list: a name may repeat, and one of its values may be
    /// binary while another is text. Every value of that name goes out as base64, so the
    /// one flag per name is right for each, and all come back, in order.
    #[test]
    fn repeated_header_names_come_back_in_order() {
        let headers = vec![
            (b"h".to_vec(), b"text".to_vec()),
            (b"x".to_vec(), b"plain".to_vec()),
            (b"h".to_vec(), vec![0xff]),
        ];
        let line = printed(Some(b"v"), &headers);
        assert!(line.contains(r#""h":"dGV4dA==""#), "{line}");
        assert!(
            line.contains(r#""headers_encoding":{"h":"base64"}"#),
            "{line}"
        );
        let read = JsonLine::parse(&line).expect("parse");
        assert_eq!(read.headers(), Ok(headers));
    }

    #[test]
    fn bad_encodings_are_errors_not_guesses() {
        let line = |s: &str| JsonLine::parse(s).expect("parse");
        let bad = line(r#"{"value":"!!","value_encoding":"base64"}"#);
        assert!(bad.value().is_err());
        let unknown = line(r#"{"value":"x","value_encoding":"hex"}"#);
        assert!(unknown.value().unwrap_err().contains("unknown encoding"));
        let header = line(r#"{"headers":{"a":"%"},"headers_encoding":{"a":"base64"}}"#);
        assert!(header.headers().is_err());
        assert!(line(r#"{"key":5}"#)
            .key()
            .unwrap_err()
            .contains("must be a string"));
        assert!(JsonLine::parse(r#"{"headers":[1]}"#).is_err());
        assert!(JsonLine::parse("[1]").is_err());
        // A json value that is not a string is published as its json text.
        assert_eq!(
            line(r#"{"value":{"a":1}}"#).value(),
            Ok(Some(br#"{"a":1}"#.to_vec()))
        );
    }

    proptest! {
        /// Whatever the bytes, and whichever header names repeat, a line printed and
        /// read back gives them back.
        #[test]
        fn any_bytes_round_trip(
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            headers in proptest::collection::vec(
                (proptest::sample::select(vec![b"a".to_vec(), b"b".to_vec()]),
                 proptest::collection::vec(any::<u8>(), 0..16)),
                0..5,
            ),
        ) {
            let read = JsonLine::parse(&printed(value.as_deref(), &headers)).expect("parse");
            prop_assert_eq!(read.value().expect("value"), value);
            prop_assert_eq!(read.headers().expect("headers"), headers);
        }
    }
}
