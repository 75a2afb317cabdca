//! [`Payload`]: an application's JSON value (published `data`, request `params` and
//! `result`, presence `info`), carried as its text.
//!
//! The server never needs to look inside application data, so it does not parse it into a
//! tree: a message is passed through byte for byte, its memory is its length (a
//! `serde_json::Value` tree can take 30 times the text it was parsed from), and a client
//! can deserialize it straight into its own type.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// A JSON value kept as its (valid, compact or as-sent) text.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `null`.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// Checks that `text` is one JSON value and keeps it as it is.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    /// Serializes `value` (any serde type: your own struct, a `Value`, a number…).
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// A copy of checked JSON text (a frame's member, as the decoder found it).
    pub(crate) fn from_raw(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Deserializes the value into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The value as a `serde_json::Value` tree.
    pub fn to_value(&self) -> Value {
        // Valid JSON by construction.
        self.parse().unwrap_or(Value::Null)
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        self.get() == "null"
    }

    /// Length of the text in bytes.
    pub fn len(&self) -> usize {
        self.get().len()
    }

    /// Always false: the shortest JSON value has one character.
    pub fn is_empty(&self) -> bool {
        self.get().is_empty()
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

/// Equal when the texts are equal: `{"a":1}` and `{ "a": 1 }` differ.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", self.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        // A Value always serializes.
        Self::new(value).unwrap_or_default()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            // JSON: the text as it is.
            self.0.serialize(serializer)
        } else {
            // A binary format: the value itself, in that format.
            self.to_value().serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            Box::<RawValue>::deserialize(deserializer).map(Self)
        } else {
            let value = Value::deserialize(deserializer)?;
            Ok(Self::from(value))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_is_kept_and_checked() {
        let p = Payload::from_json(r#"{ "b": 1, "a": [1, 2] }"#).unwrap();
        assert_eq!(p.get(), r#"{ "b": 1, "a": [1, 2] }"#);
        assert_eq!(p.to_value(), json!({"a": [1, 2], "b": 1}));
        assert!(Payload::from_json("{").is_err());
        assert!(Payload::from_json("1 2").is_err());
        assert!(Payload::null().is_null());
    }

    #[test]
    fn typed_in_and_out() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Point {
            x: i32,
            y: i32,
        }
        let p = Payload::new(&Point { x: 1, y: -2 }).unwrap();
        assert_eq!(p.get(), r#"{"x":1,"y":-2}"#);
        assert_eq!(p.parse::<Point>().unwrap(), Point { x: 1, y: -2 });
        assert_eq!(Payload::from(json!([1])), json!([1]));
    }

    #[test]
    fn serializes_as_the_value_itself() {
        let p = Payload::from_json("[1,true]").unwrap();
        assert_eq!(
            serde_json::to_string(&json!({"d": p})).unwrap(),
            r#"{"d":[1,true]}"#
        );
    }
}
