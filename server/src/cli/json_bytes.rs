//! Record bytes in the CLI's json lines, without loss: a field whose bytes are UTF-8 is
//! a json string as it is; any other bytes are base64 (standard alphabet, padded), and
//! the line says so in `<field>_encoding: "base64"`. For headers, `headers_encoding`
//! maps the names of the base64 values to `"base64"`. A script that handles text sees
//! no difference; a binary value (a protobuf, a compressed blob) is no longer mangled
//! into replacement characters; and `consume --format json | publish --format json`
//! copies records byte for byte.
//!
//! Reading (`publish --format json`): `<field>_encoding` absent or `"utf-8"` takes the
//! string's bytes; `"base64"` decodes it; anything else is an error. Header names are
//! text (a name that is not UTF-8 is printed lossily: names are identifiers).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
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
/// record's order.
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
    /// The names of the header values that are base64, each → `"base64"`.
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
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|(n, v)| (String::from_utf8_lossy(n), Field::of(v)))
            .collect();
        let headers_encoding = headers
            .iter()
            .filter(|(_, v)| v.base64)
            .map(|(n, _)| (n.clone(), "base64"))
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

/// Field `name` of a json line: `None` when absent or null. A non-string `value` is
/// taken as its json text (`{"value":{"a":1}}` publishes the bytes `{"a":1}`); other
/// fields must be strings.
pub fn take(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    let encoding = obj.get(&format!("{name}_encoding"));
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => decode(name, s, encoding).map(Some),
        Some(other) if name == "value" && encoding.is_none() => {
            Ok(Some(other.to_string().into_bytes()))
        }
        Some(_) => Err(format!("{name} must be a string")),
    }
}

/// The `headers` of a json line (with `headers_encoding`), in the line's order.
pub fn take_headers(obj: &Map<String, Value>) -> Result<Headers, String> {
    let Some(headers) = obj.get("headers") else {
        return Ok(Vec::new());
    };
    let headers = headers
        .as_object()
        .ok_or("headers must be an object of strings")?;
    let encodings = match obj.get("headers_encoding") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => Some(e),
        Some(_) => return Err("headers_encoding must be an object".into()),
    };
    headers
        .iter()
        .map(|(name, value)| {
            let value = value.as_str().ok_or("header values must be strings")?;
            let encoding = encodings.and_then(|e| e.get(name));
            let bytes = decode(&format!("header {name}"), value, encoding)?;
            Ok((name.as_bytes().to_vec(), bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line_of(value: Option<&[u8]>, headers: &[(Vec<u8>, Vec<u8>)]) -> Map<String, Value> {
        let record = ConsumedRecord {
            partition: 1,
            offset: 42,
            timestamp_ms: 7,
            tenant: Some(b"acme".to_vec()),
            key: Some(b"k".to_vec()),
            value: value.map(<[u8]>::to_vec),
            headers: headers.to_vec(),
        };
        // Through the text a pipe carries.
        let text = serde_json::to_string(&JsonRecord::new(&record, None)).expect("serialize");
        serde_json::from_str(&text).expect("json")
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
        assert_eq!(take(&line, "value"), Ok(None));
    }

    #[test]
    fn bad_encodings_are_errors_not_guesses() {
        let obj = |s: &str| -> Map<String, Value> { serde_json::from_str(s).expect("json") };
        let bad = obj(r#"{"value":"!!","value_encoding":"base64"}"#);
        assert!(take(&bad, "value").is_err());
        let unknown = obj(r#"{"value":"x","value_encoding":"hex"}"#);
        assert!(take(&unknown, "value")
            .unwrap_err()
            .contains("unknown encoding"));
        let header = obj(r#"{"headers":{"a":"%"},"headers_encoding":{"a":"base64"}}"#);
        assert!(take_headers(&header).is_err());
        // A json value that is not a string is published as its json text.
        assert_eq!(
            take(&obj(r#"{"value":{"a":1}}"#), "value"),
            Ok(Some(br#"{"a":1}"#.to_vec()))
        );
    }

    proptest! {
        /// Whatever the bytes, a line printed and read back gives them back.
        #[test]
        fn any_bytes_round_trip(
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            header in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let headers = vec![(b"h".to_vec(), header)];
            let line = line_of(value.as_deref(), &headers);
            prop_assert_eq!(take(&line, "value").expect("value"), value);
            prop_assert_eq!(take_headers(&line).expect("headers"), headers);
        }
    }
}
