//! TLS for `https://` nodes: one rustls client configuration, shared by the
//! REST client (reqwest) and the WebSocket (`wss://`, tokio-tungstenite),
//! so both trust exactly the same certificates: the Mozilla roots that
//! reqwest trusts by default, plus an optional extra CA file for nodes
//! with a private or self-signed certificate (`--ca-cert FILE`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::cli::CliError;

/// A client configuration trusting the public roots and every certificate
/// in `ca_cert` (a PEM file), if given.
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CliError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        add_pem_file(&mut roots, path)?;
    }
    // The provider is named rather than taken from the process default:
    // ring is the one the whole dependency tree is built with.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::Other(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Add the certificates of a PEM file to `roots`; how many were added.
fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, CliError> {
    let bad = |why: String| {
        CliError::Usage(format!(
            "--ca-cert {}: {why} (expected a PEM file with one or more CERTIFICATE blocks)",
            path.display()
        ))
    };
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e:?}")))?;
    if certs.is_empty() {
        return Err(bad("it holds no certificate".into()));
    }
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(format!(
            "none of its {ignored} certificate(s) could be used as a trust anchor"
        )));
    }
    Ok(added)
}

/// The TLS failure behind a connection error, if that is what it was:
/// rustls errors travel inside an `io::Error` (sometimes inside another
/// one), which `source()` skips, so each `io::Error` in the chain is
/// opened too.
pub fn tls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(t) = inner.and_then(|i| tls_cause(i)) {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Words for a TLS failure, with the fix when the certificate is the
/// problem.
pub fn describe(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(why) => format!(
            "the node's TLS certificate is not trusted ({why:?}); if it is signed by a private \
             CA or self-signed, pass --ca-cert FILE (or set SWITCHBOARD_CA_CERT) with that CA"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not a PEM certificate is a usage error naming it.
    #[test]
    fn bad_ca_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        assert!(matches!(e, CliError::Usage(_)), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        assert!(client_config(None).is_ok());
    }

    /// A rustls error wrapped in an `io::Error` is found.
    #[test]
    fn finds_wrapped_tls_errors() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let found = tls_cause(&io).expect("found");
        assert!(describe(found).contains("--ca-cert"));
        let twice = std::io::Error::other(io);
        assert!(tls_cause(&twice).is_some());
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(tls_cause(&plain).is_none());
    }
}
