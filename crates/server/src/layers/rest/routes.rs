//! The REST routes of a server, read from the `google.api.http` options of
//! the services it serves: each binding's HTTP method and path template,
//! which part of the request the body fills, and the RPC it calls.
//!
//! Templates are the subset of `google/api/http.proto` that the shop protos
//! use and that maps onto one path segment per variable: literal segments,
//! `{field}` or `{field.sub}` variables (one segment each) and an optional
//! `:verb` at the end. Anything else (`*`, `**`, `{field=pattern}`,
//! `response_body`, a binding on a client-streaming RPC) is refused when the
//! routes are built, so a proto cannot declare a route that is not served.

use http::Method;
use percent_encoding::percent_decode_str;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, MessageDescriptor,
    MethodDescriptor, Value,
};

/// The served routes, in declaration order (first match wins).
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
}

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template as declared, e.g. `/v1/orders/{order_id}:cancel`.
    pub template: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    /// What the request body fills.
    pub body: BodyRule,
    /// The RPC.
    pub rpc: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
}

/// What the HTTP request body of a route fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every field not in the path comes from the query string.
    None,
    /// `body: "*"`: the body is the request message (minus path fields).
    Whole,
    /// `body: "field"`: the body is that field; the rest from the query.
    Field(String),
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    /// A field path of the request message (`user_id`, `a.b`).
    Variable(Vec<String>),
}

/// What a request's method and path matched.
#[derive(Debug)]
pub enum Found<'a> {
    /// The route, and the value of each path variable (percent-decoded).
    Route(&'a Route, Vec<(&'a [String], String)>),
    /// The path has routes, but none for this method.
    OtherMethods(Vec<Method>),
    /// No route has this path.
    Nothing,
}

impl Routes {
    /// The routes of the services named in `services` (full names), read
    /// from `pool`; an error names the method whose binding cannot be
    /// served.
    pub fn of_services(pool: &DescriptorPool, services: &[&str]) -> Result<Routes, String> {
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Routes { routes: Vec::new() });
        };
        let mut routes = Vec::new();
        for service in pool.services() {
            if !services.contains(&service.full_name()) {
                continue;
            }
            for rpc in service.methods() {
                for rule in http_rules(&rpc, &http) {
                    routes.push(
                        Route::new(&rpc, &rule)
                            .map_err(|e| format!("{}: google.api.http: {e}", rpc.full_name()))?,
                    );
                }
            }
        }
        Ok(Routes { routes })
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Whether there is no route at all.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for `method` and the raw (still percent-encoded) `path`.
    pub fn find<'a>(&'a self, method: &Method, path: &str) -> Found<'a> {
        let (rest, verb) = split_verb(path);
        let parts: Vec<&str> = match rest.strip_prefix('/') {
            Some(rest) => rest.split('/').collect(),
            None => return Found::Nothing,
        };
        let mut others = Vec::new();
        for route in &self.routes {
            let Some(captures) = route.matches(&parts, verb) else {
                continue;
            };
            if route.method == *method {
                return Found::Route(route, captures);
            }
            if !others.contains(&route.method) {
                others.push(route.method.clone());
            }
        }
        if others.is_empty() {
            Found::Nothing
        } else {
            Found::OtherMethods(others)
        }
    }
}

/// The binding and its `additional_bindings` (one level deep, as the
/// option's documentation requires).
fn http_rules(rpc: &MethodDescriptor, http: &ExtensionDescriptor) -> Vec<DynamicMessage> {
    let options = rpc.options();
    if !options.has_extension(http) {
        return Vec::new();
    }
    let Value::Message(rule) = options.get_extension(http).into_owned() else {
        return Vec::new();
    };
    let mut rules = vec![rule.clone()];
    if let Some(Value::List(more)) = rule
        .get_field_by_name("additional_bindings")
        .map(|v| v.into_owned())
    {
        rules.extend(more.into_iter().filter_map(|v| match v {
            Value::Message(m) => Some(m),
            _ => None,
        }));
    }
    rules
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    match message.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

impl Route {
    fn new(rpc: &MethodDescriptor, rule: &DynamicMessage) -> Result<Route, String> {
        let mut binding = None;
        for (name, method) in [
            ("get", Method::GET),
            ("put", Method::PUT),
            ("post", Method::POST),
            ("delete", Method::DELETE),
            ("patch", Method::PATCH),
        ] {
            if rule.has_field_by_name(name) {
                binding = Some((method, string_field(rule, name)));
            }
        }
        let (method, template) =
            binding.ok_or("only get, put, post, delete and patch are served")?;
        if rpc.is_client_streaming() {
            return Err("client-streaming RPCs have no REST binding".into());
        }
        if !string_field(rule, "response_body").is_empty() {
            return Err("response_body is not served".into());
        }
        let input = rpc.input();
        let body = match string_field(rule, "body").as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::Whole,
            field => {
                resolve(&input, &[field.to_owned()])?;
                BodyRule::Field(field.to_owned())
            }
        };
        if body != BodyRule::None && method == Method::GET {
            return Err("a GET binding cannot have a body".into());
        }
        let (path, verb) = split_verb(&template);
        let path = path
            .strip_prefix('/')
            .ok_or_else(|| format!("{template:?} does not start with /"))?;
        let mut segments = Vec::new();
        for part in path.split('/') {
            if let Some(inner) = part.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("{template:?}: unclosed variable"))?;
                if name.contains('=') {
                    return Err(format!("{template:?}: variable patterns are not served"));
                }
                let path: Vec<String> = name.split('.').map(str::to_owned).collect();
                let field = resolve(&input, &path)?;
                if field.is_list() || field.is_map() {
                    return Err(format!("{template:?}: {name} is repeated"));
                }
                segments.push(Segment::Variable(path));
            } else if part.is_empty() || part.contains(['{', '}', '*']) {
                return Err(format!("{template:?}: segment {part:?} is not served"));
            } else {
                segments.push(Segment::Literal(part.to_owned()));
            }
        }
        Ok(Route {
            method,
            template: template.clone(),
            segments,
            verb: verb.map(str::to_owned),
            body,
            grpc_path: format!("/{}/{}", rpc.parent_service().full_name(), rpc.name()),
            rpc: rpc.clone(),
        })
    }

    /// The path variables' field paths, in template order.
    pub fn variables(&self) -> impl Iterator<Item = &[String]> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Variable(path) => Some(path.as_slice()),
            Segment::Literal(_) => None,
        })
    }

    /// The template with each variable replaced by `value(field path)`.
    pub fn expand(&self, mut value: impl FnMut(&[String]) -> String) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Variable(path) => out.push_str(&value(path)),
            }
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    fn matches<'a>(
        &'a self,
        parts: &[&str],
        verb: Option<&str>,
    ) -> Option<Vec<(&'a [String], String)>> {
        if parts.len() != self.segments.len() || verb != self.verb.as_deref() {
            return None;
        }
        let mut captures = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(text) if text == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(path) => {
                    if part.is_empty() {
                        return None;
                    }
                    let value = percent_decode_str(part).decode_utf8().ok()?;
                    captures.push((path.as_slice(), value.into_owned()));
                }
            }
        }
        Some(captures)
    }
}

/// `/v1/orders/x:cancel` → (`/v1/orders/x`, `cancel`): the verb is what
/// follows the last `:` of the last segment.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let last = path.rfind('/').map_or(0, |i| i + 1);
    match path[last..].rfind(':') {
        Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
        None => (path, None),
    }
}

/// The field at `path` (proto names) in `message`.
pub fn resolve(message: &MessageDescriptor, path: &[String]) -> Result<FieldDescriptor, String> {
    let mut message = message.clone();
    let mut found = None;
    for (i, name) in path.iter().enumerate() {
        let field = message
            .get_field_by_name(name)
            .or_else(|| message.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name:?}", message.full_name()))?;
        if i + 1 < path.len() {
            message = field
                .kind()
                .as_message()
                .filter(|_| !field.is_list() && !field.is_map())
                .ok_or_else(|| format!("{} is not a message field", field.full_name()))?
                .clone();
        }
        found = Some(field);
    }
    found.ok_or_else(|| "empty field path".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn all() -> Routes {
        let pool = pool();
        let names: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Routes::of_services(&pool, &names).unwrap()
    }

    #[test]
    fn verbs_split_only_in_the_last_segment() {
        assert_eq!(
            split_verb("/v1/orders/a:cancel"),
            ("/v1/orders/a", Some("cancel"))
        );
        assert_eq!(
            split_verb("/v1/users:lookup"),
            ("/v1/users", Some("lookup"))
        );
        assert_eq!(split_verb("/v1/a:b/c"), ("/v1/a:b/c", None));
        assert_eq!(split_verb("/v1/orders"), ("/v1/orders", None));
    }

    /// Every binding declared in the protos is served: a request built from
    /// its own template finds that route and no other, with its variables.
    #[test]
    fn every_http_rule_in_the_protos_has_its_route() {
        let pool = pool();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        let routes = all();
        let mut declared = 0;
        for service in pool.services() {
            for rpc in service.methods() {
                for rule in http_rules(&rpc, &http) {
                    declared += 1;
                    let route = Route::new(&rpc, &rule).unwrap();
                    let path = route.expand(|field| format!("v-{}", field.join(".")));
                    match routes.find(&route.method, &path) {
                        Found::Route(found, captures) => {
                            assert_eq!(found.grpc_path, route.grpc_path, "{path}");
                            assert_eq!(found.template, route.template);
                            for (field, value) in captures {
                                assert_eq!(value, format!("v-{}", field.join(".")));
                            }
                        }
                        other => panic!("{} {path}: {other:?}", route.method),
                    }
                }
            }
        }
        assert_eq!(declared, routes.iter().count());
        // The REST surface the docs promise, at least.
        assert!(declared >= 20, "{declared} bindings");
    }

    /// HTTP GET is safe (RFC 9110), and the stack reads the same promise
    /// from `idempotency_level`: a method not declared `NO_SIDE_EFFECTS` is
    /// not retried and its handler runs in the write lane, at a lower
    /// priority. A GET route on such a method is a declaration missed.
    #[test]
    fn every_get_route_is_a_method_without_side_effects() {
        let routes = all();
        let undeclared: Vec<_> = routes
            .iter()
            .filter(|route| route.method == Method::GET)
            .filter(|route| {
                shop_proto::policy::lookup(&route.grpc_path).map(|m| m.idempotency)
                    != Some(shop_proto::policy::Idempotency::NoSideEffects)
            })
            .map(|route| format!("GET {} ({})", route.template, route.grpc_path))
            .collect();
        assert!(
            undeclared.is_empty(),
            "declare `option idempotency_level = NO_SIDE_EFFECTS;` on: {undeclared:?}"
        );
        assert!(routes.iter().any(|route| route.method == Method::GET));
    }

    #[test]
    fn a_path_without_its_method_lists_the_methods_it_has() {
        let routes = all();
        match routes.find(&Method::PUT, "/v1/users/abc") {
            Found::OtherMethods(methods) => {
                for m in [Method::GET, Method::PATCH, Method::DELETE] {
                    assert!(methods.contains(&m), "{methods:?}");
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            routes.find(&Method::GET, "/v1/nothing"),
            Found::Nothing
        ));
        assert!(matches!(
            routes.find(&Method::GET, "/v1/users/"),
            Found::Nothing
        ));
        assert!(matches!(
            routes.find(&Method::GET, "v1/users"),
            Found::Nothing
        ));
        // A verb the template does not have does not match it.
        assert!(matches!(
            routes.find(&Method::GET, "/v1/orders/a:ship"),
            Found::Nothing
        ));
    }

    #[test]
    fn variables_are_percent_decoded() {
        let routes = all();
        let Found::Route(route, captures) = routes.find(&Method::GET, "/v1/products/sku%2D1%20x")
        else {
            panic!("no route");
        };
        assert_eq!(
            route.grpc_path,
            "/shop.inventory.v1.InventoryService/GetProduct"
        );
        assert_eq!(captures[0].1, "sku-1 x");
    }

    #[test]
    fn only_the_served_services_get_routes() {
        let pool = pool();
        let routes = Routes::of_services(&pool, &["shop.user.v1.UserService"]).unwrap();
        assert!(
            routes
                .iter()
                .all(|r| r.grpc_path.starts_with("/shop.user.v1.UserService/"))
        );
        assert!(matches!(
            routes.find(&Method::POST, "/v1/orders"),
            Found::Nothing
        ));
    }
}
