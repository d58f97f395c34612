//! The one way the core builds a `reqwest` client (peer probes and pushes,
//! the fleet view, Alertmanager): reqwest 0.13 comes without a crypto
//! provider of its own (aws-lc-rs is a C build), so rustls's process default
//! is set to `ring`, the provider the rest of clustermon uses, first.

/// A client builder with the `ring` provider installed as rustls's process
/// default (an error means one is installed already, which is as good).
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// The innermost cause of an error chain ("connection reset by peer"),
/// without the layers above it (which repeat the URL).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut root = e;
    while let Some(c) = root.source() {
        root = c;
    }
    root.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_builds_without_any_other_provider_set_up() {
        assert!(super::client_builder().build().is_ok());
    }
}
