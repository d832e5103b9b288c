//! Hand-overs between instances are signed: HMAC-SHA256 under the cluster's secret, which
//! lives in PostgreSQL (participants reach only the broker). The signature covers a label,
//! the send time and the body, and travels in headers beside the body:
//!
//! - `x-saga-sent-at`: milliseconds since the Unix epoch (a long long integer);
//! - `x-saga-signature`: hex of HMAC-SHA256(secret, `saga.control\n<sent-at>\n<body>`).
//!
//! A hand-over is taken only from a partition queue, only with a valid signature, and only
//! within [`MAX_AGE_MS`] of its sending: a copy replayed later is refused. A replay inside
//! that window can only repeat an action its owner already guards (an abort of a saga no
//! longer running is refused, a wake of a saga already driven does nothing).

use hmac::{Hmac, Mac};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use sha2::Sha256;

use super::{Broker, ReplyDelivery};

/// Header carrying the signature (hex).
pub const SIGNATURE_HEADER: &str = "x-saga-signature";

/// Header carrying the send time (milliseconds since the Unix epoch).
pub const SENT_AT_HEADER: &str = "x-saga-sent-at";

/// How far the send time of a hand-over may lie from the receiver's clock, either way.
pub const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// The shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// The cluster secret that signs hand-overs.
#[derive(Clone)]
pub struct ControlKey {
    /// HMAC-SHA256 keyed with the secret, ready to be cloned for each message.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(***)")
    }
}

/// Why a hand-over was refused (the reason it is dead-lettered with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlRefusal {
    /// It came from the shared reply queue, where only replies are taken.
    #[error("a hand-over (type saga.control) is never taken from the reply queue")]
    SharedQueue,
    /// No signature or no send time.
    #[error("hand-over refused: not signed")]
    Unsigned,
    /// The signature does not match the body and send time under the cluster's secret.
    #[error("hand-over refused: bad signature")]
    BadSignature,
    /// Sent too long ago (a replay), or stamped too far in the future.
    #[error("hand-over refused: sent {0} ms from now, beyond the 5 minutes allowed")]
    Stale(i64),
}

impl ControlKey {
    /// A key of this secret; None when it is shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < MIN_SECRET_BYTES {
            return None;
        }
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
        Some(ControlKey { keyed })
    }

    fn mac(&self, sent_at_ms: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(super::CONTROL_TYPE.as_bytes());
        mac.update(format!("\n{sent_at_ms}\n").as_bytes());
        mac.update(body);
        mac
    }

    /// The hex signature of a body sent at `sent_at_ms`.
    pub fn sign(&self, sent_at_ms: i64, body: &[u8]) -> String {
        hex::encode(self.mac(sent_at_ms, body).finalize().into_bytes())
    }

    /// Checks a signature (in constant time) and the send time against `now_ms`.
    pub fn verify(
        &self,
        sent_at_ms: i64,
        body: &[u8],
        signature_hex: &str,
        now_ms: i64,
    ) -> Result<(), ControlRefusal> {
        let signature = hex::decode(signature_hex).map_err(|_| ControlRefusal::BadSignature)?;
        self.mac(sent_at_ms, body)
            .verify_slice(&signature)
            .map_err(|_| ControlRefusal::BadSignature)?;
        let skew = sent_at_ms.saturating_sub(now_ms);
        if skew.saturating_abs() > MAX_AGE_MS {
            return Err(ControlRefusal::Stale(skew));
        }
        Ok(())
    }

    /// The headers that sign a body sent now.
    pub(super) fn headers(&self, body: &[u8]) -> FieldTable {
        let sent_at = chrono::Utc::now().timestamp_millis();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(SENT_AT_HEADER),
            AMQPValue::LongLongInt(sent_at),
        );
        headers.insert(
            ShortString::from(SIGNATURE_HEADER),
            AMQPValue::LongString(LongString::from(self.sign(sent_at, body))),
        );
        headers
    }
}

impl Broker {
    /// Whether a hand-over may be acted on: it came from a partition queue (`partition` is
    /// Some) and is signed by an instance of this cluster within the last minutes.
    pub fn authenticate_control(
        &self,
        delivery: &ReplyDelivery,
        partition: Option<u32>,
    ) -> Result<(), ControlRefusal> {
        if partition.is_none() {
            return Err(ControlRefusal::SharedQueue);
        }
        let sent_at = delivery
            .header_i64(SENT_AT_HEADER)
            .ok_or(ControlRefusal::Unsigned)?;
        let signature = delivery
            .header_text(SIGNATURE_HEADER)
            .ok_or(ControlRefusal::Unsigned)?;
        let now = chrono::Utc::now().timestamp_millis();
        self.key.verify(sent_at, delivery.data(), &signature, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ControlKey {
        ControlKey::new(&[byte; 32]).expect("long enough")
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_signed_body_verifies_and_any_change_does_not() {
        let k = key(7);
        let body = br#"{"saga_id":"x","op":"abort"}"#;
        let sig = k.sign(NOW, body);
        assert_eq!(k.verify(NOW, body, &sig, NOW + 1000), Ok(()));
        let other = br#"{"saga_id":"x","op":"resume"}"#;
        assert_eq!(
            k.verify(NOW, other, &sig, NOW),
            Err(ControlRefusal::BadSignature)
        );
        assert_eq!(
            k.verify(NOW + 1, body, &sig, NOW),
            Err(ControlRefusal::BadSignature),
            "the send time is signed too"
        );
        assert_eq!(
            key(8).verify(NOW, body, &sig, NOW),
            Err(ControlRefusal::BadSignature),
            "another cluster's secret"
        );
        assert_eq!(
            k.verify(NOW, body, "not hex", NOW),
            Err(ControlRefusal::BadSignature)
        );
        assert_eq!(
            k.verify(NOW, body, "", NOW),
            Err(ControlRefusal::BadSignature)
        );
    }

    #[test]
    fn a_signed_body_replayed_after_five_minutes_or_stamped_in_the_future_is_stale() {
        let k = key(7);
        let body = b"{}";
        let sig = k.sign(NOW, body);
        assert_eq!(k.verify(NOW, body, &sig, NOW + MAX_AGE_MS), Ok(()));
        assert_eq!(
            k.verify(NOW, body, &sig, NOW + MAX_AGE_MS + 1),
            Err(ControlRefusal::Stale(-MAX_AGE_MS - 1))
        );
        assert_eq!(
            k.verify(NOW, body, &sig, NOW - MAX_AGE_MS - 1),
            Err(ControlRefusal::Stale(MAX_AGE_MS + 1))
        );
        assert_eq!(
            k.verify(i64::MIN, body, &k.sign(i64::MIN, body), NOW),
            Err(ControlRefusal::Stale(i64::MIN))
        );
    }

    #[test]
    fn a_short_secret_is_refused_and_the_key_never_shows_in_debug() {
        assert!(ControlKey::new(&[1; 31]).is_none());
        assert_eq!(format!("{:?}", key(1)), "ControlKey(***)");
    }
}
