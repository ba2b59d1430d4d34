//! A Celery message as py-amqp puts it on the wire: the body as JSON
//! (not base64, as on Redis), the properties kombu sets, and the headers
//! as an AMQP table with the types py-amqp gives Python's values.

use super::super::message::Message;
use super::super::options::Destination;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;

/// kombu's persistent delivery mode.
const PERSISTENT: u8 = 2;

/// The exchange and routing key Celery publishes to. A queue named
/// alone goes through the default exchange (`''`) with the queue's name
/// as the key, as `celery.app.amqp.send_task_message` does for a direct
/// queue without an explicit exchange.
pub(crate) fn route(destination: &Destination) -> (&str, &str) {
    match destination {
        Destination::Queue { queue } => ("", queue),
        Destination::Exchange {
            exchange,
            routing_key,
            ..
        } => (exchange, routing_key),
    }
}

/// The properties `send_task` gives a message over py-amqp.
pub(crate) fn properties(message: &Message) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(PERSISTENT)
        .with_priority(message.priority.clamp(0, 255) as u8)
        .with_correlation_id(ShortString::from(message.id.as_str()))
        .with_reply_to(ShortString::from(message.reply_to.as_str()))
        .with_headers(headers(&message.headers));
    if let Some(ms) = message.expiration_ms {
        properties = properties.with_expiration(ShortString::from(ms.max(0).to_string()));
    }
    properties
}

/// The headers (a JSON object as Python writes it) as an AMQP table.
fn headers(json: &str) -> FieldTable {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => table(&map),
        // The message module writes the headers: always an object.
        _ => FieldTable::default(),
    }
}

fn table(map: &serde_json::Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(ShortString::from(key.as_str()), amqp_value(value));
    }
    table
}

/// A JSON value as py-amqp writes the Python value it stands for: `None`
/// void, `bool` a boolean, an `int` a signed 32-bit integer where it fits
/// and a 64-bit one where not, a `float` a double, a `str` a long string,
/// a list an array and a dict a table.
fn amqp_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(i),
            },
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(amqp_value(item));
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => AMQPValue::FieldTable(table(map)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_py_amqps_types() {
        let t = headers(
            r#"{"lang": "py", "retries": 0, "big": 4294967296, "f": 1.5, "shadow": null, "timelimit": [null, 30], "stamps": {}, "ok": true}"#,
        );
        let get = |k: &str| t.inner().get(k).cloned();
        assert_eq!(get("lang"), Some(AMQPValue::LongString("py".into())));
        assert_eq!(get("retries"), Some(AMQPValue::LongInt(0)));
        assert_eq!(get("big"), Some(AMQPValue::LongLongInt(4_294_967_296)));
        assert_eq!(get("f"), Some(AMQPValue::Double(1.5)));
        assert_eq!(get("shadow"), Some(AMQPValue::Void));
        let mut limits = FieldArray::default();
        limits.push(AMQPValue::Void);
        limits.push(AMQPValue::LongInt(30));
        assert_eq!(get("timelimit"), Some(AMQPValue::FieldArray(limits)));
        assert_eq!(
            get("stamps"),
            Some(AMQPValue::FieldTable(FieldTable::default()))
        );
        assert_eq!(get("ok"), Some(AMQPValue::Boolean(true)));
    }
}
