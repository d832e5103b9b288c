//! `SagaId`: the saga's UUID and its base62 `code`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one saga: a UUID chosen by the caller of `POST /start`.
///
/// Its `code` is the base62 form (alphabet `0-9A-Za-z`) of the UUID's 128-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct SagaId(pub Uuid);

/// Why a string is neither a UUID nor a base62 code of one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a UUID nor the base62 code of one")]
pub struct SagaIdError(pub String);

impl SagaId {
    /// The base62 code of this id, as `POST /start` answers it.
    pub fn code(&self) -> String {
        base62::encode(self.0.as_u128())
    }

    /// Parses a UUID only (the form `POST /start` requires).
    pub fn parse_uuid(s: &str) -> Result<Self, SagaIdError> {
        Uuid::parse_str(s.trim())
            .map(SagaId)
            .map_err(|_| SagaIdError(truncate(s)))
    }

    /// Parses either a UUID or its base62 code (what `GET /sagas/{id}` accepts).
    pub fn parse_any(s: &str) -> Result<Self, SagaIdError> {
        if let Ok(id) = Self::parse_uuid(s) {
            return Ok(id);
        }
        if s.is_empty() || s.len() > 22 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SagaIdError(truncate(s)));
        }
        base62::decode(s)
            .map(|v| SagaId(Uuid::from_u128(v)))
            .map_err(|_| SagaIdError(truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SagaId {
    type Err = SagaIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_any(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_round_trips_to_the_same_uuid() {
        let id = SagaId(Uuid::new_v4());
        assert_eq!(SagaId::parse_any(&id.code()), Ok(id));
        assert_eq!(SagaId::parse_any(&id.to_string()), Ok(id));
    }

    #[test]
    fn code_is_the_base62_crate_encoding_of_the_u128() {
        let id = SagaId(Uuid::from_u128(61));
        assert_eq!(id.code(), "z");
        let max = SagaId(Uuid::from_u128(u128::MAX));
        assert_eq!(max.code(), base62::encode(u128::MAX));
    }

    #[test]
    fn garbage_is_rejected_by_both_parsers() {
        assert!(SagaId::parse_uuid("nope").is_err());
        assert!(SagaId::parse_any("not-a-code!").is_err());
        assert!(SagaId::parse_any("").is_err());
        assert!(SagaId::parse_any("zzzzzzzzzzzzzzzzzzzzzzzzzzzz").is_err());
    }
}
