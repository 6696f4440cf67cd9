//! mTLS name pinning: a client certificate must not only chain to
//! `TLS_CLIENT_CA_FILE` but also name one of `TLS_CLIENT_ALLOWED_NAMES`,
//! so that a certificate the CA issued to one service cannot be used to
//! call a service that only that service's peers may call.
//!
//! The names are compared with the certificate's subject alternative names
//! exactly as a client compares a server's (webpki's rules: DNS names,
//! IP addresses, no common-name fallback).

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::{danger::HandshakeSignatureValid, verify_server_name},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ParsedCertificate,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

/// Parses the allowed names of `TLS_CLIENT_ALLOWED_NAMES`.
pub(crate) fn allowed_names(names: &[String]) -> Result<Vec<ServerName<'static>>, String> {
    names
        .iter()
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .map(|name| {
            ServerName::try_from(name.to_owned())
                .map_err(|e| format!("TLS_CLIENT_ALLOWED_NAMES: {name:?}: {e}"))
        })
        .collect()
}

/// A client certificate verifier that runs `inner` (chain, validity, key
/// usage) and then requires one of `allowed` among the certificate's names.
#[derive(Debug)]
pub(crate) struct PinnedNames {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl PinnedNames {
    pub(crate) fn new(
        inner: Arc<dyn ClientCertVerifier>,
        allowed: Vec<ServerName<'static>>,
    ) -> Self {
        PinnedNames { inner, allowed }
    }
}

impl ClientCertVerifier for PinnedNames {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        if self
            .allowed
            .iter()
            .any(|name| verify_server_name(&parsed, name).is_ok())
        {
            Ok(verified)
        } else {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_names_are_trimmed_and_empty_entries_skipped() {
        let names =
            allowed_names(&[" order-service".into(), String::new(), "127.0.0.1".into()]).unwrap();
        assert_eq!(
            names,
            vec![
                ServerName::try_from("order-service").unwrap(),
                ServerName::try_from("127.0.0.1").unwrap(),
            ]
        );
    }

    #[test]
    fn a_name_that_is_not_a_host_name_is_refused() {
        let error = allowed_names(&["order service".into()]).unwrap_err();
        assert!(error.contains("order service"), "{error}");
    }
}
