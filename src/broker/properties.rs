//! Properties of a message this instance passes on (a forwarded reply or hand-over, a dead
//! letter): built afresh from the original's, keeping only what its reader needs. Copied
//! whole, a participant's properties could make the broker refuse the publish (a `user_id`
//! other than this connection's user closes the publish channel with 406) or drop the
//! message unread (an `expiration`).

use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;

/// `delivery_mode` of a message that survives a broker restart.
pub(super) const PERSISTENT: u8 = 2;

/// Headers RabbitMQ reads as routing instructions (sender-selected distribution): a
/// message passed on with them would be copied to the queues they name.
const ROUTING_HEADERS: [&str; 2] = ["CC", "BCC"];

/// The properties of a message passed on: `correlation_id`, `message_id`, `content_type`,
/// `content_encoding`, `type` and the headers (those that route excepted) of the
/// original; persistent. Everything else (`user_id`, `expiration`, `priority`, `reply_to`,
/// `app_id`, ...) is left out.
pub(super) fn passed_on(original: &BasicProperties) -> BasicProperties {
    let mut props = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(v) = original.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    if let Some(v) = original.message_id() {
        props = props.with_message_id(v.clone());
    }
    if let Some(v) = original.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        props = props.with_content_encoding(v.clone());
    }
    if let Some(v) = original.kind() {
        props = props.with_type(v.clone());
    }
    props.with_headers(kept_headers(original))
}

/// The original's headers without those that route.
pub(super) fn kept_headers(original: &BasicProperties) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(all) = original.headers() {
        for (name, value) in all.inner() {
            if !ROUTING_HEADERS.contains(&name.as_str()) {
                headers.insert(ShortString::from(name.as_str()), value.clone());
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, LongString};

    fn s(v: &str) -> ShortString {
        ShortString::from(v)
    }

    #[test]
    fn only_what_the_reader_needs_is_passed_on() {
        let mut headers = FieldTable::default();
        headers.insert(
            s("traceparent"),
            AMQPValue::LongString(LongString::from("00-abc-def-01")),
        );
        headers.insert(s("CC"), AMQPValue::LongString(LongString::from("other")));
        headers.insert(s("BCC"), AMQPValue::LongString(LongString::from("other")));
        let original = BasicProperties::default()
            .with_correlation_id(s("c1"))
            .with_message_id(s("m1"))
            .with_content_type(s("application/json"))
            .with_type(s("saga.control"))
            .with_user_id(s("mallory"))
            .with_expiration(s("1"))
            .with_priority(9)
            .with_reply_to(s("elsewhere"))
            .with_app_id(s("app"))
            .with_delivery_mode(1)
            .with_headers(headers);
        let p = passed_on(&original);
        assert_eq!(p.correlation_id().as_ref(), Some(&s("c1")));
        assert_eq!(p.message_id().as_ref(), Some(&s("m1")));
        assert_eq!(p.content_type().as_ref(), Some(&s("application/json")));
        assert_eq!(p.kind().as_ref(), Some(&s("saga.control")));
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        assert_eq!(*p.user_id(), None);
        assert_eq!(*p.expiration(), None);
        assert_eq!(*p.priority(), None);
        assert_eq!(*p.reply_to(), None);
        assert_eq!(*p.app_id(), None);
        let kept = p.headers().clone().unwrap_or_default();
        let names: Vec<&str> = kept.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["traceparent"]);
    }

    #[test]
    fn a_message_without_properties_is_passed_on_persistent_with_no_headers() {
        let p = passed_on(&BasicProperties::default());
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        assert_eq!(*p.correlation_id(), None);
        assert_eq!(p.headers().as_ref().map(|h| h.inner().len()), Some(0));
    }
}
