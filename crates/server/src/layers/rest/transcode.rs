//! JSON to the RPC's request message and the RPC's messages back to JSON,
//! in the proto3 JSON mapping (prost-reflect over the shop descriptor set):
//! fields in lowerCamelCase (proto names are accepted too), enums by name,
//! 64-bit integers as strings, timestamps in RFC 3339, default values left
//! out, unknown fields refused.
//!
//! The request message is put together as `google/api/http.proto` says:
//! path variables first, then the body (`body: "*"`, the whole message, or
//! one field), then query parameters for the fields neither of them
//! binds (`?page_size=10&status=ORDER_STATUS_PENDING`, a repeated field by
//! repeating its name).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json};
use tonic::Status;

use super::routes::{BodyRule, Route, resolve};

/// The request message of `route` from its path variables, query string
/// and body; INVALID_ARGUMENT says what is wrong with them.
pub fn request_message(
    route: &Route,
    captures: &[(&[String], String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Status> {
    let input = route.rpc.input();
    let body = parse_body(body)?;
    let mut fields = match (&route.body, body) {
        (BodyRule::None, None) => Map::new(),
        (BodyRule::None, Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "{} {} takes no body",
                route.method, route.template
            )));
        }
        (BodyRule::Whole, None) => Map::new(),
        (BodyRule::Whole, Some(Json::Object(object))) => object,
        (BodyRule::Whole, Some(_)) => {
            return Err(Status::invalid_argument("the body must be a JSON object"));
        }
        (BodyRule::Field(name), body) => {
            let mut fields = Map::new();
            if let Some(body) = body {
                fields.insert(name.clone(), body);
            }
            fields
        }
    };
    for (path, value) in captures {
        let field = resolve(&input, path).map_err(Status::invalid_argument)?;
        let value = text_value(&field, value)?;
        set(&mut fields, &input, path, value, false)?;
    }
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if route.body == BodyRule::Whole {
            return Err(Status::invalid_argument(format!(
                "query parameter {name:?}: {} {} takes its fields from the body",
                route.method, route.template
            )));
        }
        let path: Vec<String> = name.split('.').map(str::to_owned).collect();
        let field = resolve(&input, &path)
            .map_err(|e| Status::invalid_argument(format!("query parameter {name:?}: {e}")))?;
        if !settable_from_query(&field) {
            return Err(Status::invalid_argument(format!(
                "query parameter {name:?}: a message field cannot be set from the query"
            )));
        }
        let value = text_value(&field, &value)?;
        set(&mut fields, &input, &path, value, field.is_list())?;
    }
    DynamicMessage::deserialize_with_options(
        input,
        Json::Object(fields),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))
}

fn parse_body(body: &[u8]) -> Result<Option<Json>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("the body is not JSON: {e}")))
}

/// What a query parameter can set (and the OpenAPI document lists as
/// one): a scalar, an enum, a repeated one of those, or a well-known type
/// that JSON writes as one value (a timestamp, a duration, a field mask, a
/// wrapper).
pub fn settable_from_query(field: &FieldDescriptor) -> bool {
    if field.is_map() {
        return false;
    }
    match field.kind() {
        Kind::Message(m) => matches!(
            m.full_name(),
            "google.protobuf.Timestamp"
                | "google.protobuf.Duration"
                | "google.protobuf.FieldMask"
                | "google.protobuf.StringValue"
                | "google.protobuf.BoolValue"
                | "google.protobuf.BytesValue"
                | "google.protobuf.Int32Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt64Value"
                | "google.protobuf.FloatValue"
                | "google.protobuf.DoubleValue"
        ),
        _ => true,
    }
}

/// A path or query value as the JSON the field's type takes: booleans and
/// enum numbers as such, everything else as a string (proto3 JSON takes
/// numbers in strings).
fn text_value(field: &FieldDescriptor, text: &str) -> Result<Json, Status> {
    Ok(match field.kind() {
        Kind::Bool => match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "{}: {text:?} is not true or false",
                    field.name()
                )));
            }
        },
        Kind::Enum(_) => match text.parse::<i64>() {
            Ok(number) => Json::from(number),
            Err(_) => Json::String(text.to_owned()),
        },
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Uint64
        | Kind::Fixed64
            if text.parse::<i128>().is_err() =>
        {
            return Err(Status::invalid_argument(format!(
                "{}: {text:?} is not an integer",
                field.name()
            )));
        }
        _ => Json::String(text.to_owned()),
    })
}

/// Sets the field at `path` in the JSON object `fields` (creating the
/// messages on the way), replacing what the body had under either of its
/// names, or appending when `append` (a repeated query parameter).
fn set(
    fields: &mut Map<String, Json>,
    message: &MessageDescriptor,
    path: &[String],
    value: Json,
    append: bool,
) -> Result<(), Status> {
    let field = resolve(message, &path[..1]).map_err(Status::invalid_argument)?;
    let key = field.name().to_owned();
    let existing = fields
        .remove(field.json_name())
        .or_else(|| fields.remove(field.name()));
    if path.len() > 1 {
        let mut inner = match existing {
            Some(Json::Object(inner)) => inner,
            None | Some(Json::Null) => Map::new(),
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "{} must be an object",
                    field.name()
                )));
            }
        };
        let nested = field.kind().as_message().expect("resolve checked").clone();
        set(&mut inner, &nested, &path[1..], value, append)?;
        fields.insert(key, Json::Object(inner));
    } else if append {
        let mut list = match existing {
            Some(Json::Array(list)) => list,
            _ => Vec::new(),
        };
        list.push(value);
        fields.insert(key, Json::Array(list));
    } else {
        fields.insert(key, value);
    }
    Ok(())
}

/// `message` as one gRPC frame: uncompressed, its length, its bytes.
pub fn frame(message: &DynamicMessage) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut out)
        .expect("a BytesMut with capacity for the message");
    out.freeze()
}

/// The messages of a gRPC response body, cut from its data as it comes.
#[derive(Debug, Default)]
pub struct Frames {
    buffer: BytesMut,
}

impl Frames {
    /// Adds a chunk of the body.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole message, if one has come; INTERNAL for a compressed
    /// one (the call is made without `grpc-accept-encoding`).
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let compressed = self.buffer[0];
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        if compressed != 0 {
            return Err(Status::internal(
                "the service answered a compressed message",
            ));
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }

    /// Whether part of a message is left over.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }
}

/// A message of type `desc` in protobuf, as JSON.
pub fn message_json(desc: MessageDescriptor, payload: Bytes) -> Result<Json, Status> {
    let message = DynamicMessage::decode(desc, payload)
        .map_err(|e| Status::internal(format!("decoding the service's answer: {e}")))?;
    serde_json::to_value(&message)
        .map_err(|e| Status::internal(format!("writing the answer as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use http::Method;
    use prost_reflect::{DescriptorPool, ReflectMessage as _, Value};

    use super::*;
    use crate::layers::rest::routes::{Found, Routes};

    fn routes() -> Routes {
        let pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).unwrap();
        Routes::of_services(
            &pool,
            &[
                "shop.user.v1.UserService",
                "shop.order.v1.OrderService",
                "shop.inventory.v1.InventoryService",
            ],
        )
        .unwrap()
    }

    fn build(method: Method, path: &str, body: &str) -> Result<DynamicMessage, Status> {
        let routes = routes();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let Found::Route(route, captures) = routes.find(&method, path) else {
            panic!("no route for {method} {path}");
        };
        request_message(route, &captures, query, body.as_bytes())
    }

    fn field(message: &DynamicMessage, name: &str) -> Value {
        message.get_field_by_name(name).unwrap().into_owned()
    }

    #[test]
    fn path_body_and_query_fill_the_request() {
        let cancel = build(
            Method::POST,
            "/v1/orders/0197-abc:cancel",
            r#"{"reason": "changed my mind", "orderId": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(field(&cancel, "order_id"), Value::String("0197-abc".into()));
        assert_eq!(
            field(&cancel, "reason"),
            Value::String("changed my mind".into())
        );

        let list = build(
            Method::GET,
            "/v1/orders?userId=u1&page_size=10&status=ORDER_STATUS_PENDING&page_token=a%2Bb",
            "",
        )
        .unwrap();
        assert_eq!(field(&list, "user_id"), Value::String("u1".into()));
        assert_eq!(field(&list, "page_size"), Value::I32(10));
        assert_eq!(field(&list, "page_token"), Value::String("a+b".into()));
        assert!(matches!(field(&list, "status"), Value::EnumNumber(n) if n > 0));

        let watch = build(Method::GET, "/v1/products:watch?skus=a&skus=b", "").unwrap();
        assert_eq!(
            field(&watch, "skus"),
            Value::List(vec![Value::String("a".into()), Value::String("b".into())])
        );

        let active = build(Method::GET, "/v1/products?active_only=true", "").unwrap();
        assert_eq!(field(&active, "active_only"), Value::Bool(true));
    }

    #[test]
    fn mistakes_are_invalid_argument_and_say_what() {
        for (method, path, body, says) in [
            (Method::GET, "/v1/orders?colour=red", "", "colour"),
            (Method::GET, "/v1/orders?page_size=ten", "", "page_size"),
            (
                Method::GET,
                "/v1/products?active_only=yes",
                "",
                "active_only",
            ),
            (Method::POST, "/v1/orders", "{\"items\": 3", "not JSON"),
            (Method::POST, "/v1/orders", "[1]", "JSON object"),
            (Method::POST, "/v1/orders", r#"{"colour": "red"}"#, "colour"),
            (
                Method::POST,
                "/v1/orders?page_size=1",
                "{}",
                "from the body",
            ),
            (Method::GET, "/v1/orders/x", "{}", "takes no body"),
        ] {
            let error = build(method.clone(), path, body).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{path}");
            assert!(
                error.message().contains(says),
                "{path}: {}",
                error.message()
            );
        }
    }

    #[test]
    fn frames_are_cut_as_they_come_and_compressed_ones_refused() {
        let message = build(Method::GET, "/v1/orders/abc", "").unwrap();
        let framed = frame(&message);
        let mut frames = Frames::default();
        frames.push(&framed[..3]);
        assert!(frames.next_message().unwrap().is_none());
        frames.push(&framed[3..]);
        frames.push(&framed);
        for _ in 0..2 {
            let payload = frames.next_message().unwrap().unwrap();
            let json = message_json(message.descriptor(), payload).unwrap();
            assert_eq!(json, serde_json::json!({"orderId": "abc"}));
        }
        assert!(frames.is_empty());
        frames.push(&[1, 0, 0, 0, 0]);
        assert_eq!(
            frames.next_message().unwrap_err().code(),
            tonic::Code::Internal
        );
    }
}
