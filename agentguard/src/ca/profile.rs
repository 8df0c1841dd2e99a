//! The certificate profiles: what the CA's certificate and each leaf's say
//! (names, key usages, validity). Both the CA (`authority`), which signs
//! them, and the leaf cache (`leaf`), which needs a leaf's lifetime, read
//! them here, so neither has to reach into the other.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber, string::Ia5String,
};
use rustls::pki_types::DnsName;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Error)]
#[error("invalid server name {name:?}: not a DNS name or an IP address")]
pub struct InvalidServerName {
    pub name: String,
}

const CA_COMMON_NAME: &str = "agentguard local CA";
const CA_ORGANIZATION: &str = "agentguard";

/// Every certificate starts this long before it is made: a client whose clock
/// runs a little behind the daemon's would otherwise reject it as not yet valid.
pub(super) const CLOCK_SKEW: Duration = Duration::hours(1);
/// Two years: long enough not to surprise operators, who rotate it in two
/// steps ([`super::rotation`]; the daemon warns 90 days ahead), and still
/// bounds how long a leaked key is worth anything.
pub(super) const CA_LIFETIME: Duration = Duration::days(730);

/// The CA's profile. Everything a leaf's issuer field and authority key
/// identifier are made from is here, so both creating and loading use it.
pub(super) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = name;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A leaf's key lives only in the daemon's memory, and a day bounds what a
/// leaked one is worth, while a busy host costs one mint a day.
pub const LEAF_LIFETIME: Duration = Duration::hours(24);
/// RFC 5280 appendix A.1, ub-common-name. The SAN is what clients check; a
/// longer name simply goes without a CN.
const MAX_COMMON_NAME_LEN: usize = 64;

/// The leaf profile for `server_name`: SAN and CN are the name, serverAuth
/// only, valid from an hour ago (clock skew) for [`LEAF_LIFETIME`].
pub(super) fn leaf_params(
    server_name: &str,
    now: OffsetDateTime,
    serial: SerialNumber,
) -> Result<CertificateParams, InvalidServerName> {
    let invalid = || InvalidServerName {
        name: server_name.to_owned(),
    };
    let san = match server_name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => {
            // The rules rustls applies to SNI, so every name a client can
            // send is accepted, and nothing else (no wildcards, no spaces).
            DnsName::try_from(server_name).map_err(|_| invalid())?;
            SanType::DnsName(Ia5String::try_from(server_name).map_err(|_| invalid())?)
        }
    };

    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![san];
    let mut name = DistinguishedName::new();
    if server_name.len() <= MAX_COMMON_NAME_LEN {
        name.push(DnType::CommonName, server_name);
    }
    params.distinguished_name = name;
    // CA:FALSE stated outright, so no validator can take a leaf for a CA.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Lets clients pick the right CA when two share a name (during rotation).
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial);
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + LEAF_LIFETIME;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_validity_follows_the_profile() {
        let now = OffsetDateTime::now_utc();
        let serial = SerialNumber::from_slice(&[1]);
        let params = leaf_params("a.example.com", now, serial).unwrap();
        assert_eq!(params.not_before, now - CLOCK_SKEW);
        assert_eq!(params.not_after, now + LEAF_LIFETIME);
        let long = format!("{}.example.com", "a".repeat(60));
        let params = leaf_params(&long, now, SerialNumber::from_slice(&[1])).unwrap();
        assert!(params.distinguished_name.get(&DnType::CommonName).is_none());
    }
}
