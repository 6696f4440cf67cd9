//! The browser page (`web/`, built into `web/dist` by
//! `npm --prefix web ci && npm --prefix web run build`), served next to the
//! services with `/config.json` telling it their gRPC ports. The page calls
//! the services over gRPC-Web from its own origin, so devstack allows that
//! origin on them (`CORS_ALLOWED_ORIGINS`) unless told otherwise.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use axum::{Router, http::header, routing::get};
use tokio::net::TcpListener;
use tower_http::services::ServeDir;

/// Whether `dir` holds a built page.
pub(crate) fn is_built(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

/// The origins the page is loaded from when served on `port` of `host`.
pub(crate) fn origins(host: IpAddr, port: u16) -> String {
    let mut origins = vec![
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
    ];
    if !host.is_loopback() && !host.is_unspecified() {
        origins.push(format!("http://{}", SocketAddr::new(host, port)));
    }
    origins.join(",")
}

/// `/config.json`: each service's gRPC port by name.
pub(crate) fn config(ports: &[(&str, u16)]) -> String {
    let fields: Vec<String> = ports
        .iter()
        .map(|(name, port)| format!("{name:?}:{port}"))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Serves `dir` and `config` on `listener` until `stop` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    dir: PathBuf,
    config: String,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/config.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], config) }),
        )
        .fallback_service(ServeDir::new(dir));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_every_port_and_the_origins_every_host() {
        assert_eq!(
            config(&[("user-service", 50051), ("order-service", 50052)]),
            r#"{"user-service":50051,"order-service":50052}"#
        );
        assert_eq!(
            origins("127.0.0.1".parse().unwrap(), 8080),
            "http://localhost:8080,http://127.0.0.1:8080"
        );
        assert!(
            origins("192.168.1.5".parse().unwrap(), 8080).ends_with(",http://192.168.1.5:8080")
        );
    }
}
