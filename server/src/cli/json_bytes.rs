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

use base64::Engine as _;
use serde_json::{Map, Value};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A record's headers: (name, value) pairs, in order.
type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// Text when the bytes are UTF-8, else base64: the string, and whether it is base64.
fn encode(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (BASE64.encode(bytes), true),
    }
}

/// Sets `name` (null for `None`), and `<name>_encoding` when the bytes are base64.
pub fn put(line: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    let Some(bytes) = bytes else {
        line.insert(name.to_owned(), Value::Null);
        return;
    };
    let (text, base64) = encode(bytes);
    line.insert(name.to_owned(), Value::String(text));
    if base64 {
        line.insert(format!("{name}_encoding"), "base64".into());
    }
}

/// Sets `headers` (an object of name → value), and `headers_encoding` for the values
/// that are base64.
pub fn put_headers(line: &mut Map<String, Value>, headers: &[(Vec<u8>, Vec<u8>)]) {
    let mut values = Map::new();
    let mut encodings = Map::new();
    for (name, value) in headers {
        let name = String::from_utf8_lossy(name).into_owned();
        let (text, base64) = encode(value);
        if base64 {
            encodings.insert(name.clone(), "base64".into());
        }
        values.insert(name, Value::String(text));
    }
    line.insert("headers".into(), Value::Object(values));
    if !encodings.is_empty() {
        line.insert("headers_encoding".into(), Value::Object(encodings));
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
        let mut line = Map::new();
        put(&mut line, "value", value);
        put_headers(&mut line, headers);
        // Through the text a pipe carries.
        serde_json::from_str(&Value::Object(line).to_string()).expect("json")
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
