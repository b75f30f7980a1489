//! Which transports a client may trust keys over.
//!
//! A client that fetches token-signing keys (JWKS), tokens or released keys over plain HTTP trusts whoever
//! answers: a network attacker can substitute the JWKS and then mint tokens for its own TLS key, or hand a guest a
//! key of its choice. So `http://` is accepted only for loopback addresses (a local `cinfer-attest serve` on the
//! same machine or in the same container group), or when the operator passes an option whose name says it is
//! dangerous. Host names other than `localhost` count as remote: a name can resolve anywhere.

use std::net::IpAddr;

/// A URL whose transport is not trustworthy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// Plain HTTP to a host that is not loopback.
    #[error(
        "{what}: plain http:// to {host}, which is not a loopback address: keys and tokens fetched over it could be \
         substituted by anyone on the network; use https://, a loopback address, or the option that accepts plain \
         HTTP dangerously"
    )]
    PlainHttp {
        /// What the URL is for (`attestation service`, `key vault`, ...).
        what: String,
        /// Its host.
        host: String,
    },
    /// Not a URL this client can use.
    #[error("{what}: {detail}")]
    Invalid {
        /// What the URL is for.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

/// Whether `host` (a URL host, IPv6 in brackets or not) is a loopback address or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks an endpoint (`host`, `https://…` or `http://…`; a bare host means `https://`): plain HTTP is refused
/// unless its host is loopback or `allow_plain_http` is set (then a warning is logged).
pub fn check_endpoint(what: &str, endpoint: &str, allow_plain_http: bool) -> Result<(), TransportError> {
    let e = endpoint.trim();
    if !e.to_ascii_lowercase().starts_with("http://") {
        return Ok(());
    }
    let url = reqwest::Url::parse(e).map_err(|err| TransportError::Invalid {
        what: what.to_owned(),
        detail: format!("not a URL: {err}"),
    })?;
    let host = url.host_str().unwrap_or_default().to_owned();
    if is_loopback_host(&host) {
        return Ok(());
    }
    if allow_plain_http {
        tracing::warn!(
            what,
            host,
            "!!! plain http:// to a non-loopback host accepted on request: keys and tokens over it can be substituted !!!"
        );
        return Ok(());
    }
    Err(TransportError::PlainHttp {
        what: what.to_owned(),
        host,
    })
}

/// Azure's instance metadata address, link-local and answered by the host itself: IMDS (managed identity tokens)
/// and THIM (the VCEK chain) listen there, over plain HTTP only.
pub const AZURE_METADATA_HOST: &str = "169.254.169.254";

/// As [`check_endpoint`], and plain HTTP to [`AZURE_METADATA_HOST`] is accepted too: the one documented exception,
/// for answers whose every byte is verified end to end whatever the transport. THIM's VCEK chain is one: the
/// attestation service verifies it to the pinned AMD root and the report's signature with it, so a substituted
/// chain makes attestation fail (which anyone on the host's link can cause anyway) and never makes a report pass.
/// Any other link-local or private address stays refused.
pub fn check_metadata_endpoint(what: &str, endpoint: &str, allow_plain_http: bool) -> Result<(), TransportError> {
    let e = endpoint.trim();
    if e.to_ascii_lowercase().starts_with("http://")
        && let Ok(url) = reqwest::Url::parse(e)
        && url.host_str() == Some(AZURE_METADATA_HOST)
    {
        return Ok(());
    }
    check_endpoint(what, endpoint, allow_plain_http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "maa.example.net",
            "https://maa.example.net",
            "http://127.0.0.1:8443",
            "http://127.9.9.9",
            "http://[::1]:9000",
            "http://localhost:1",
            "HTTP://LOCALHOST",
        ] {
            assert_eq!(check_endpoint("attestation service", ok, false), Ok(()), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:8443",
            "http://maa.example.net",
            "http://localhost.evil.example",
            "http://[fd00::1]",
        ] {
            let e = check_endpoint("attestation service", bad, false).unwrap_err();
            assert!(matches!(e, TransportError::PlainHttp { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with("attestation service: plain http://"), "{e}");
            assert_eq!(
                check_endpoint("x", bad, true),
                Ok(()),
                "{bad} with the dangerous option"
            );
        }
    }

    #[test]
    fn the_metadata_address_is_the_only_plain_http_exception() {
        let thim = "http://169.254.169.254/metadata/THIM/amd/certification";
        assert_eq!(check_metadata_endpoint("THIM", thim, false), Ok(()));
        assert_eq!(check_metadata_endpoint("THIM", "http://127.0.0.1:9/x", false), Ok(()));
        assert!(
            check_endpoint("THIM", thim, false).is_err(),
            "check_endpoint itself keeps refusing it"
        );
        for bad in [
            "http://169.254.169.253/metadata/THIM/amd/certification",
            "http://169.254.169.254.evil.example/x",
            "http://10.0.0.1/metadata/THIM/amd/certification",
        ] {
            let e = check_metadata_endpoint("THIM", bad, false).unwrap_err();
            assert!(matches!(e, TransportError::PlainHttp { .. }), "{bad}: {e}");
        }
    }
}
