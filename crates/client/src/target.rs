//! What a client connects to: a comma-separated list of endpoint URLs, or
//! a DNS name (`dns:///host:port`, gRPC's naming syntax) whose addresses
//! are re-resolved periodically.

use http::Uri;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Fixed endpoints.
    Static(Vec<Uri>),
    /// Every address of a DNS name, re-resolved.
    Dns {
        /// The name to resolve.
        host: String,
        /// The port of every address.
        port: u16,
    },
}

impl Target {
    /// Parses `spec`. Endpoint URLs are `http://host:port` or
    /// `https://host:port` (the scheme must agree with whether TLS is
    /// configured, which the caller checks).
    pub fn parse(spec: &str) -> Result<Target, String> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("dns:") {
            // dns:///host:port, or dns://authority/host:port (the authority
            // names a DNS server in gRPC; the system resolver is used).
            let name = rest
                .strip_prefix("//")
                .map(|r| r.split_once('/').map_or(r, |(_, name)| name))
                .unwrap_or(rest);
            let (host, port) = name
                .rsplit_once(':')
                .ok_or_else(|| format!("{spec:?}: a DNS target needs a port (dns:///host:port)"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{spec:?}: {port:?} is not a port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("{spec:?}: a DNS target needs a host name"));
            }
            return Ok(Target::Dns {
                host: host.to_owned(),
                port,
            });
        }
        let mut uris = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let uri: Uri = part
                .parse()
                .map_err(|e| format!("{part:?} is not a URL: {e}"))?;
            match (uri.scheme_str(), uri.authority()) {
                (Some("http" | "https"), Some(authority)) if authority.port().is_some() => {}
                _ => {
                    return Err(format!(
                        "{part:?}: endpoints are http://host:port or https://host:port"
                    ));
                }
            }
            if !matches!(uri.path(), "" | "/") {
                return Err(format!("{part:?}: an endpoint URL has no path"));
            }
            uris.push(uri);
        }
        if uris.is_empty() {
            return Err("no endpoint given".to_owned());
        }
        Ok(Target::Static(uris))
    }

    /// True when a static endpoint asks for TLS (`https://`).
    pub fn wants_tls(&self) -> bool {
        match self {
            Target::Static(uris) => uris.iter().any(|u| u.scheme_str() == Some("https")),
            Target::Dns { .. } => false,
        }
    }

    /// The host name a server certificate must carry, when the target
    /// names exactly one.
    pub fn host_name(&self) -> Option<String> {
        match self {
            Target::Static(uris) => {
                let hosts: std::collections::BTreeSet<&str> =
                    uris.iter().filter_map(|u| u.host()).collect();
                (hosts.len() == 1).then(|| hosts.into_iter().next().unwrap_or_default().to_owned())
            }
            Target::Dns { host, .. } => Some(host.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_dns_names_parse_and_mistakes_are_named() {
        assert_eq!(
            Target::parse("http://a:1, http://b:2").unwrap(),
            Target::Static(vec![
                "http://a:1".parse().unwrap(),
                "http://b:2".parse().unwrap()
            ])
        );
        assert_eq!(
            Target::parse("dns:///user-service:50051").unwrap(),
            Target::Dns {
                host: "user-service".into(),
                port: 50051
            }
        );
        assert_eq!(
            Target::parse("dns://8.8.8.8/users.svc:7").unwrap(),
            Target::Dns {
                host: "users.svc".into(),
                port: 7
            }
        );
        for bad in [
            "",
            "a:1",
            "http://a",
            "ftp://a:1",
            "http://a:1/path",
            "dns:///a",
            "dns:///:1",
            "dns:///a:x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Target::parse("https://a:1").unwrap().wants_tls());
        assert_eq!(
            Target::parse("https://users:1,https://users:2")
                .unwrap()
                .host_name()
                .as_deref(),
            Some("users")
        );
    }
}
