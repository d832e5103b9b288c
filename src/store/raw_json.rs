//! JSON serialized once, straight from a Rust value, and sent to PostgreSQL as `jsonb`
//! without a `serde_json::Value` tree in between (building, encoding and dropping that tree
//! for every snapshot cost a fifth of the orchestrator's CPU under load).

use std::error::Error;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// A JSON document as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(Vec<u8>);

impl RawJson {
    /// Serializes `value`.
    pub fn of<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(RawJson)
    }

    /// The document as a `Value` (to compare it with one read back).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

impl ToSql for RawJson {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // jsonb's binary format is a version byte (1) and the text; json's is the text.
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_gets_the_version_byte_and_json_does_not() {
        let raw = RawJson::of(&serde_json::json!({"a": [1, "x"]})).unwrap();
        let mut out = BytesMut::new();
        raw.to_sql(&Type::JSONB, &mut out).unwrap();
        assert_eq!(&out[..], b"\x01{\"a\":[1,\"x\"]}");
        let mut out = BytesMut::new();
        raw.to_sql(&Type::JSON, &mut out).unwrap();
        assert_eq!(&out[..], b"{\"a\":[1,\"x\"]}");
        assert!(!RawJson::accepts(&Type::TEXT));
        assert_eq!(raw.to_value().unwrap(), serde_json::json!({"a": [1, "x"]}));
    }
}
