//! OCSP (RFC 6960) request parsing and response signing.
