//! The OpenAPI 3.0 document of a server's REST routes, generated from the
//! same descriptors the routes come from (never written by hand): one
//! operation per binding, its summary and description from the proto
//! comments, its parameters from the path template and the request fields
//! the query may set, its body and answer as JSON schemas of the messages
//! in the proto3 JSON mapping, `google.rpc.Status` for every failure, and
//! bearer auth unless the RPC is public. Served at `GET /openapi.json` on
//! the gRPC port.

use std::collections::BTreeMap;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;
use serde_json::{Map, Value as Json, json};
use shop_proto::policy::{Access, lookup};

use super::routes::{BodyRule, Route, Routes};

/// The document for `routes`, titled after `service` (the binary's name).
pub fn document(service: &str, routes: &Routes) -> Json {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for route in routes.iter() {
        let base = format!("{}_{}", route.rpc.parent_service().name(), route.rpc.name());
        let n = seen.entry(base.clone()).or_default();
        *n += 1;
        let operation_id = if *n == 1 { base } else { format!("{base}_{n}") };
        let operation = operation(route, operation_id, &mut schemas);
        paths
            .entry(route.template.clone())
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    schemas.status();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": format!("{service} REST API"),
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Generated from the google.api.http options of the protos this \
                service serves. Every route is also a gRPC method on the same port; \
                docs/rest.md describes the mapping.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.done,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}

fn operation(route: &Route, operation_id: String, schemas: &mut Schemas) -> Json {
    let rpc = &route.rpc;
    let input = rpc.input();
    let comment =
        comments(rpc.parent_file().file_descriptor_proto(), rpc.path()).unwrap_or_default();
    let summary = comment.lines().next().unwrap_or_default().to_owned();
    let mut parameters = Vec::new();
    let bound: Vec<String> = route.variables().map(|p| p.join(".")).collect();
    for path in route.variables() {
        let field = super::routes::resolve(&input, path).expect("checked when routes were built");
        parameters.push(json!({
            "name": path.join("."),
            "in": "path",
            "required": true,
            "description": field_comment(&field),
            "schema": schemas.field(&field),
        }));
    }
    let query_fields = match &route.body {
        BodyRule::Whole => Vec::new(),
        BodyRule::None => input.fields().collect(),
        BodyRule::Field(name) => input.fields().filter(|f| f.name() != name).collect(),
    };
    for field in query_fields {
        if bound.iter().any(|b| b == field.name()) || !super::transcode::settable_from_query(&field)
        {
            continue;
        }
        parameters.push(json!({
            "name": field.json_name(),
            "in": "query",
            "required": false,
            "description": field_comment(&field),
            "schema": schemas.field(&field),
            "explode": true,
        }));
    }
    let mut op = json!({
        "operationId": operation_id,
        "summary": summary,
        "description": comment,
        "tags": [rpc.parent_service().name()],
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "OK",
                "content": response_content(route, schemas),
            },
            "default": {
                "description": "The call failed: a google.rpc.Status, under the HTTP status \
                    google/rpc/code.proto gives its code",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}},
            },
        },
    });
    let body_schema = match &route.body {
        BodyRule::None => None,
        BodyRule::Whole => Some(schemas.message(&input)),
        BodyRule::Field(name) => input.get_field_by_name(name).map(|f| schemas.field(&f)),
    };
    if let Some(schema) = body_schema {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    let public = lookup(&route.grpc_path).is_some_and(|p| p.access == Access::Public);
    op["security"] = if public {
        json!([])
    } else {
        json!([{"bearer": []}])
    };
    op
}

fn response_content(route: &Route, schemas: &mut Schemas) -> Json {
    let output = schemas.message(&route.rpc.output());
    if route.rpc.is_server_streaming() {
        json!({"application/x-ndjson": {"schema": {
            "description": "One line per message: {\"result\": message}; a stream that fails \
                after it started ends with {\"error\": google.rpc.Status}",
            "type": "object",
            "properties": {
                "result": output,
                "error": {"$ref": "#/components/schemas/google.rpc.Status"},
            },
        }}})
    } else {
        json!({"application/json": {"schema": output}})
    }
}

fn field_comment(field: &FieldDescriptor) -> String {
    comments(field.parent_file().file_descriptor_proto(), field.path()).unwrap_or_default()
}

/// The leading comment of the element at `path` in `file`, trimmed.
fn comments(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    let location = file
        .source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?;
    Some(
        text.lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_owned(),
    )
}

/// The schemas the document refers to, by full proto name.
#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Json>,
}

impl Schemas {
    fn reference(name: &str) -> Json {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// A schema for `message`: a `$ref`, or inline for the well-known types
    /// JSON writes as something else than an object.
    fn message(&mut self, message: &MessageDescriptor) -> Json {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.done.contains_key(&name) {
            // Placed first, so a recursive message refers to itself.
            self.done.insert(name.clone(), Json::Null);
            let mut properties = Map::new();
            for field in message.fields() {
                let mut schema = self.field(&field);
                let comment = field_comment(&field);
                if !comment.is_empty()
                    && let Some(object) = schema.as_object_mut()
                    && !object.contains_key("$ref")
                {
                    object.insert("description".into(), Json::String(comment));
                }
                properties.insert(field.json_name().to_owned(), schema);
            }
            let mut schema = json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": false,
            });
            if let Some(comment) = comments(message.parent_file_descriptor_proto(), message.path())
                && !comment.is_empty()
            {
                schema["description"] = Json::String(comment);
            }
            self.done.insert(name.clone(), schema);
        }
        Schemas::reference(&name)
    }

    fn field(&mut self, field: &FieldDescriptor) -> Json {
        if field.is_map() {
            let value = field
                .kind()
                .as_message()
                .and_then(|entry| entry.get_field_by_name("value"))
                .map(|v| self.kind(&v.kind()))
                .unwrap_or_else(|| json!({}));
            return json!({"type": "object", "additionalProperties": value});
        }
        let one = self.kind(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": one})
        } else {
            one
        }
    }

    fn kind(&mut self, kind: &Kind) -> Json {
        match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
            }
            // proto3 JSON writes 64-bit integers as strings.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => enum_schema(e),
            Kind::Message(m) => self.message(m),
        }
    }

    /// `google.rpc.Status`, the body of every failure.
    fn status(&mut self) {
        self.done.insert(
            "google.rpc.Status".into(),
            json!({
                "type": "object",
                "description": "A failed call: its gRPC code, a message for the developer, and \
                    typed details (google.rpc.BadRequest, RetryInfo, …), each with its @type.",
                "properties": {
                    "code": {"type": "integer", "format": "int32"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"@type": {"type": "string"}},
                        "required": ["@type"],
                        "additionalProperties": true,
                    }},
                },
                "required": ["code", "message"],
            }),
        );
    }
}

fn enum_schema(e: &EnumDescriptor) -> Json {
    let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
    json!({"type": "string", "enum": names})
}

/// The JSON of the well-known types that is not an object of their fields.
fn well_known(name: &str) -> Option<Json> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({"type": "string"}),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::rest::descriptor_pool;

    fn users() -> Json {
        let routes = Routes::of_services(
            descriptor_pool(),
            &["shop.user.v1.UserService", "shop.auth.v1.AuthService"],
        )
        .unwrap();
        document("user-service", &routes)
    }

    #[test]
    fn every_route_is_an_operation_with_its_parameters_body_and_auth() {
        let doc = users();
        let get = &doc["paths"]["/v1/users/{user_id}"]["get"];
        assert_eq!(get["operationId"], "UserService_GetUser");
        assert!(
            get["summary"]
                .as_str()
                .unwrap()
                .starts_with("Returns one user"),
            "{get}"
        );
        assert_eq!(get["parameters"][0]["name"], "user_id");
        assert_eq!(get["parameters"][0]["in"], "path");
        assert_eq!(get["security"], json!([{"bearer": []}]));
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/shop.user.v1.User"
        );
        let lookup = &doc["paths"]["/v1/users:lookup"]["get"];
        assert_eq!(lookup["operationId"], "UserService_GetUser_2");
        let names: Vec<&str> = lookup["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["userId", "email", "username"]);

        let create = &doc["paths"]["/v1/users"]["post"];
        assert_eq!(create["security"], json!([]), "sign-up is public");
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/shop.user.v1.CreateUserRequest"
        );
        let stream = &doc["paths"]["/v1/users:stream"]["get"]["responses"]["200"]["content"];
        assert!(stream.get("application/x-ndjson").is_some(), "{stream}");
        // Every operation of the routes, no more.
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, 11);
    }

    #[test]
    fn schemas_follow_the_proto3_json_mapping() {
        let doc = users();
        let schemas = &doc["components"]["schemas"];
        let user = &schemas["shop.user.v1.User"];
        assert_eq!(user["additionalProperties"], false);
        assert_eq!(user["properties"]["createdAt"]["format"], "date-time");
        assert_eq!(user["properties"]["status"]["type"], "string");
        assert!(
            user["properties"]["status"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("USER_STATUS_ACTIVE"))
        );
        let tokens = &schemas["shop.auth.v1.TokenPair"];
        assert_eq!(
            tokens["properties"]["expiresIn"]["type"], "string",
            "int64 as a string"
        );
        // Every reference resolves.
        let text = doc.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.get(name).is_some_and(Json::is_object), "{name}");
        }
    }
}
