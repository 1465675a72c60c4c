//! Typed tool arguments, derived with serde and lenient the way models need.
//!
//! Each tool declares its arguments as a plain `#[derive(Deserialize)]` struct
//! (`String`, `Option<u64>`, `Option<bool>` fields). [`parse`] reads the call's JSON
//! through its own serde `Deserializer` instead of `serde_json::from_value`, for two reasons:
//!
//! - **leniency**: models often send `"10"` for 10 and `"true"` for true, and a JSON
//!   number such as `10.0`; those are accepted for integer and boolean fields;
//! - **messages**: a bad call gets one sentence naming the argument and the expected
//!   shape (`read_file: 'path' must be a string, not a number; expected arguments
//!   {...}`), which the model uses to fix its next call. serde_json's own messages
//!   (`invalid type: integer, expected a string`) name neither.
//!
//! Unknown keys are ignored, as serde does by default.

use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// Parses a tool call's `input` into the tool's argument type, or returns the sentence
/// the model receives: `tool` and `usage` (the expected shape, e.g.
/// `{"path": string, "offset"?: integer}`) are part of every message.
pub fn parse<A: DeserializeOwned>(tool: &str, usage: &str, input: &Value) -> Result<A, String> {
    A::deserialize(ArgsDeserializer { input }).map_err(|problem| problem.message(tool, usage))
}

/// What is wrong with a call's arguments; [`Problem::message`] makes the sentence the
/// model receives.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The arguments are not a JSON object.
    #[error("the arguments are not a JSON object")]
    NotObject,
    /// A required argument is absent.
    #[error("missing required argument '{0}'")]
    Missing(String),
    /// An argument has the wrong type; `found` is how the message shows the value.
    #[error("'{key}' must be {expected}, not {found}")]
    WrongType {
        key: String,
        expected: Expected,
        found: String,
    },
    /// Anything else serde reports (a custom validation in an argument type).
    #[error("{0}")]
    Other(String),
}

/// The argument types tools use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    String,
    NonNegativeInteger,
    Boolean,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::String => "a string",
            Expected::NonNegativeInteger => "a non-negative integer",
            Expected::Boolean => "true or false",
        })
    }
}

impl Problem {
    /// The sentence sent back to the model: the tool, the problem, the expected shape.
    pub fn message(&self, tool: &str, usage: &str) -> String {
        match self {
            Problem::NotObject => {
                format!("{tool} expects a JSON object as arguments, like {usage}")
            }
            other => format!("{tool}: {other}; expected arguments {usage}"),
        }
    }
}

impl de::Error for Problem {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Problem::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Problem::Missing(field.to_string())
    }
}

/// The whole arguments value: must be an object.
struct ArgsDeserializer<'a> {
    input: &'a Value,
}

impl<'de> de::Deserializer<'de> for ArgsDeserializer<'de> {
    type Error = Problem;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.input {
            Value::Object(map) => visitor.visit_map(Fields {
                iter: map.iter(),
                value: None,
            }),
            _ => Err(Problem::NotObject),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct Fields<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<(&'a str, &'a Value)>,
}

impl<'de> MapAccess<'de> for Fields<'de> {
    type Error = Problem;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Problem> {
        match self.iter.next() {
            Some((key, value)) => {
                self.value = Some((key.as_str(), value));
                seed.deserialize(BorrowedStrDeserializer::new(key.as_str()))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Problem> {
        match self.value.take() {
            Some((key, value)) => seed.deserialize(Field { key, value }),
            None => Err(Problem::Other(
                "internal error: a value was read before its key".into(),
            )),
        }
    }
}

/// One argument, knowing its key so that a wrong type names it.
struct Field<'a> {
    key: &'a str,
    value: &'a Value,
}

impl Field<'_> {
    fn wrong(&self, expected: Expected) -> Problem {
        let found = match expected {
            // "must be a string, not a number": the kind reads better than the value.
            Expected::String => type_name(self.value).to_string(),
            // "must be true or false, not "yes"": the value shows what was meant.
            Expected::NonNegativeInteger | Expected::Boolean => self.value.to_string(),
        };
        Problem::WrongType {
            key: self.key.to_string(),
            expected,
            found,
        }
    }

    /// A non-negative integer: a JSON integer, a float with no fraction (`10.0`), or a
    /// string holding one (`"10"`).
    fn unsigned(&self) -> Result<u64, Problem> {
        match self.value {
            Value::Number(n) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => Ok(u),
                (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as u64),
                _ => Err(self.wrong(Expected::NonNegativeInteger)),
            },
            Value::String(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| self.wrong(Expected::NonNegativeInteger)),
            _ => Err(self.wrong(Expected::NonNegativeInteger)),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

macro_rules! lenient_unsigned {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
                let n = self.unsigned()?;
                let n = <$ty>::try_from(n).map_err(|_| self.wrong(Expected::NonNegativeInteger))?;
                visitor.$visit(n)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Field<'de> {
    type Error = Problem;

    /// Types the tools do not declare (and ignored keys) get plain JSON semantics.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => visitor.visit_u64(u),
                (None, Some(i), _) => visitor.visit_i64(i),
                (None, None, Some(f)) => visitor.visit_f64(f),
                _ => Err(Problem::Other(format!(
                    "'{}' is not a usable number",
                    self.key
                ))),
            },
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let key = self.key;
                visitor.visit_seq(de::value::SeqDeserializer::new(
                    items.iter().map(move |value| Field { key, value }),
                ))
            }
            Value::Object(map) => visitor.visit_map(Fields {
                iter: map.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.value {
            Value::String(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.wrong(Expected::String)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        self.deserialize_str(visitor)
    }

    /// `true`/`false`, or the strings `"true"`/`"false"` in any case.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.value {
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => visitor.visit_bool(true),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => visitor.visit_bool(false),
            _ => Err(self.wrong(Expected::Boolean)),
        }
    }

    lenient_unsigned! {
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    /// `null` is the same as leaving an optional argument out.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map struct enum identifier
    }
}

impl<'de> IntoDeserializer<'de, Problem> for Field<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Args {
        name: String,
        count: Option<u64>,
        small: Option<u8>,
        flag: Option<bool>,
    }

    const USAGE: &str = r#"{"name": string, "count"?: integer, "flag"?: boolean}"#;

    fn p(input: Value) -> Result<Args, String> {
        parse("demo", USAGE, &input)
    }

    #[test]
    fn plain_and_lenient_values() {
        assert_eq!(
            p(json!({"name": "x"})).unwrap(),
            Args {
                name: "x".into(),
                count: None,
                small: None,
                flag: None
            }
        );
        let a = p(json!({"name": "x", "count": "10", "flag": "TRUE", "small": 3.0})).unwrap();
        assert_eq!((a.count, a.flag, a.small), (Some(10), Some(true), Some(3)));
        let a = p(json!({"name": "x", "count": 7, "flag": "false"})).unwrap();
        assert_eq!((a.count, a.flag), (Some(7), Some(false)));
        // null is "not given"; unknown keys are ignored.
        let a = p(json!({"name": "x", "count": null, "extra": [1, {"a": 2}]})).unwrap();
        assert_eq!(a.count, None);
    }

    #[test]
    fn every_problem_is_one_sentence_naming_the_argument() {
        assert_eq!(
            p(json!("x")).unwrap_err(),
            format!("demo expects a JSON object as arguments, like {USAGE}")
        );
        assert_eq!(
            p(json!({})).unwrap_err(),
            format!("demo: missing required argument 'name'; expected arguments {USAGE}")
        );
        assert_eq!(
            p(json!({"name": 3})).unwrap_err(),
            format!("demo: 'name' must be a string, not a number; expected arguments {USAGE}")
        );
        assert_eq!(
            p(json!({"name": null})).unwrap_err(),
            format!("demo: 'name' must be a string, not null; expected arguments {USAGE}")
        );
        assert_eq!(
            p(json!({"name": "x", "count": -1})).unwrap_err(),
            format!(
                "demo: 'count' must be a non-negative integer, not -1; expected arguments {USAGE}"
            )
        );
        for bad in [json!("ten"), json!(1.5), json!([1]), json!(true)] {
            let err = p(json!({"name": "x", "count": bad})).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "demo: 'count' must be a non-negative integer, not {bad}"
                )),
                "{err}"
            );
        }
        assert!(p(json!({"name": "x", "small": 300}))
            .unwrap_err()
            .contains("'small' must be a non-negative integer, not 300"));
        assert_eq!(
            p(json!({"name": "x", "flag": "yes"})).unwrap_err(),
            format!("demo: 'flag' must be true or false, not \"yes\"; expected arguments {USAGE}")
        );
        assert!(p(json!({"name": "x", "flag": 1}))
            .unwrap_err()
            .contains("'flag' must be true or false, not 1"));
    }
}
