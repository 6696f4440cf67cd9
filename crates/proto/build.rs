//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed), generates the tonic/prost code, writes the
//! encoded descriptor set for reflection, and turns each RPC's
//! `shop.options.v1.access`, `shop.options.v1.max_request_bytes` and
//! `idempotency_level` options into the method policy table that the kits
//! read.
//!
//! Every `.proto` under `proto/shop` is compiled, and the module tree of
//! the generated code is generated too, so a new service's proto needs no
//! line here or in `lib.rs`. `proto/google` holds the googleapis protos
//! they use (`google.api.http` for the REST routes, `google.rpc.Status` and
//! its details for error bodies), copied unchanged from the
//! googleapis-common-protos release; no code is generated for them here
//! (a shop message holding a `google.rpc.Status` gets tonic-types' type).

use std::{
    collections::BTreeMap,
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use prost_reflect::{DescriptorPool, Value};

/// The `.proto` files under `dir`, relative to `root`, sorted.
fn proto_files(root: &Path, dir: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(proto_files(root, &path)?);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(
                path.strip_prefix(root)?
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
    files.sort();
    Ok(files)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = proto_files(&proto_root, &proto_root.join("shop"))?;
    // Not imported by a shop proto, but in the descriptor set: the REST
    // gateway writes error bodies and their details as JSON from them.
    files.extend([
        "google/rpc/status.proto".into(),
        "google/rpc/error_details.proto".into(),
    ]);
    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    // `encode_file_descriptor_set` keeps extension options (our `access`),
    // which the prost_types conversion would drop.
    fs::write(
        out_dir.join("shop_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let pool = compiler.descriptor_pool();
    fs::write(
        out_dir.join("method_policy.rs"),
        method_policy_table(&pool)?,
    )?;
    fs::write(
        out_dir.join("generated_servers.rs"),
        generated_server_impls(&pool)?,
    )?;
    fs::write(out_dir.join("modules.rs"), module_tree(&pool)?)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::ShopCodec")
        // google.rpc.Status (ReserveStocks' per-reservation errors) is
        // tonic-types' own, so that tonic_types::StatusExt reads it.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Renders the module tree of the generated code: `shop.user.v1` becomes
/// `user::v1`, each including its file from `OUT_DIR`, documented with the
/// services it defines.
fn module_tree(pool: &DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in pool.files() {
        let package = file.package_name();
        if package.starts_with("shop.") {
            packages.entry(package.to_owned()).or_default();
        }
    }
    for service in pool.services() {
        if let Some(services) = packages.get_mut(service.package_name()) {
            services.push(service.name().to_owned());
        }
    }
    // Nested modules, opened and closed as the sorted package paths go.
    let mut out = String::new();
    let mut open: Vec<String> = Vec::new();
    for (package, services) in &packages {
        let path: Vec<String> = package
            .trim_start_matches("shop.")
            .split('.')
            .map(str::to_owned)
            .collect();
        let common = open.iter().zip(&path).take_while(|(a, b)| a == b).count();
        for _ in common..open.len() {
            out.push_str("}\n");
        }
        open.truncate(common);
        for (depth, segment) in path.iter().enumerate().skip(common) {
            let shown = format!("shop.{}", path[..=depth].join("."));
            if depth + 1 == path.len() {
                let what = if services.is_empty() {
                    String::new()
                } else {
                    format!(": {}", services.join(", "))
                };
                writeln!(out, "/// `{shown}`{what}.")?;
            } else {
                writeln!(out, "/// `{shown}`.")?;
            }
            writeln!(out, "pub mod {segment} {{")?;
            open.push(segment.clone());
        }
        writeln!(out, "tonic::include_proto!({package:?});")?;
    }
    for _ in 0..open.len() {
        out.push_str("}\n");
    }
    Ok(out)
}

/// Renders one `impl GeneratedServer` per service of the shop protos, so
/// that the server kit registers any of them without naming it.
fn generated_server_impls(pool: &DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let mut out = String::new();
    for service in pool.services() {
        let Some(package) = service.package_name().strip_prefix("shop.") else {
            continue;
        };
        if package.starts_with("options.") {
            continue;
        }
        let module = format!(
            "crate::{}::{}_server",
            package.replace('.', "::"),
            snake_case(service.name())
        );
        let name = service.name();
        writeln!(
            out,
            "impl<T: {module}::{name}> crate::GeneratedServer for {module}::{name}Server<T> {{\n\
             \x20   fn with_message_limit(self, max: usize) -> Self {{\n\
             \x20       self.max_decoding_message_size(max).max_encoding_message_size(max)\n\
             \x20   }}\n\
             }}"
        )?;
    }
    Ok(out)
}

/// `UserService` -> `user_service`, as prost and tonic name modules.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders `static METHODS: &[MethodPolicy]`, sorted by path for binary
/// search. A method without an `access` option gets `Access::Unspecified`,
/// which the middleware refuses and a test in this crate rejects.
fn method_policy_table(pool: &DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let access_ext = pool
        .get_extension_by_name("shop.options.v1.access")
        .ok_or("shop.options.v1.access extension not found")?;
    let max_request_ext = pool
        .get_extension_by_name("shop.options.v1.max_request_bytes")
        .ok_or("shop.options.v1.max_request_bytes extension not found")?;

    let mut rows = Vec::new();
    for service in pool.services() {
        if !service.full_name().starts_with("shop.") {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            let access = if options.has_extension(&access_ext) {
                match options.get_extension(&access_ext).as_ref() {
                    Value::EnumNumber(1) => "Public",
                    Value::EnumNumber(2) => "Authenticated",
                    Value::EnumNumber(3) => "Admin",
                    Value::EnumNumber(4) => "Service",
                    _ => "Unspecified",
                }
            } else {
                "Unspecified"
            };
            // 0 (not declared) is refused by a test in this crate.
            let max_request_bytes = match options.get_extension(&max_request_ext).as_ref() {
                Value::U32(n) => *n,
                _ => 0,
            };
            let idempotency = match options.get_field_by_name("idempotency_level").as_deref() {
                Some(Value::EnumNumber(1)) => "NoSideEffects",
                Some(Value::EnumNumber(2)) => "Idempotent",
                _ => "Unknown",
            };
            rows.push((
                format!("/{}/{}", service.full_name(), method.name()),
                service.full_name().to_owned(),
                method.name().to_owned(),
                access,
                idempotency,
                method.is_client_streaming(),
                method.is_server_streaming(),
                max_request_bytes,
            ));
        }
    }
    rows.sort();

    // The positions of the rows ordered by the path's length first: a
    // lookup then compares lengths and reads a path's bytes only among
    // those of the length it looks for (see `policy::position`).
    let mut by_length: Vec<usize> = (0..rows.len()).collect();
    by_length.sort_by(|&a, &b| (rows[a].0.len(), &rows[a].0).cmp(&(rows[b].0.len(), &rows[b].0)));

    let mut out = String::from(
        "/// Positions in [`METHODS`] ordered by the length of the path, then the\n\
         /// path. Generated by build.rs.\n\
         static BY_LENGTH: &[u16] = &[",
    );
    for (i, position) in by_length.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write!(out, "{position}")?;
    }
    out.push_str("];\n\n");
    out.push_str(
        "/// Every RPC of every shop service, sorted by path. Generated by build.rs\n\
         /// from the `shop.options.v1` and `idempotency_level` options.\n\
         pub static METHODS: &[MethodPolicy] = &[\n",
    );
    for (
        path,
        service,
        method,
        access,
        idempotency,
        client_streaming,
        server_streaming,
        max_request_bytes,
    ) in rows
    {
        writeln!(
            out,
            "    MethodPolicy {{ path: {path:?}, service: {service:?}, method: {method:?}, \
             access: Access::{access}, idempotency: Idempotency::{idempotency}, \
             client_streaming: {client_streaming}, server_streaming: {server_streaming}, \
             max_request_bytes: {max_request_bytes} }},"
        )?;
    }
    out.push_str("];\n");
    Ok(out)
}
