//! The coarse error kinds every module error maps to. Only the API layer turns a kind into an
//! HTTP status and only the CLI turns it into an exit code; modules never speak either.

use std::fmt;

/// What kind of failure an error is, independent of the module that raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is malformed or unacceptable (a bad CSR, an unparsable name, a weak key).
    BadRequest,
    /// The input is well-formed but policy refuses it.
    Denied,
    /// The caller did not prove who it is (bad token, no client certificate, wrong passphrase).
    Unauthorized,
    /// The named thing does not exist.
    NotFound,
    /// The request conflicts with existing state (a CA already initialised, a reused token).
    Conflict,
    /// Something failed inside the CA; details go to the log, not to the caller.
    Internal,
    /// The CA cannot store anything right now (its disk is full or failing); the same request
    /// succeeds once the operator has fixed the storage, without a restart.
    Unavailable,
}

impl ErrorKind {
    /// The stable, machine-readable name of the kind (also the suffix of problem `type` URIs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Denied => "denied",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    /// The process exit code the CLI uses for this kind (documented in the README).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::BadRequest => 2,
            ErrorKind::Denied => 3,
            ErrorKind::Unauthorized => 4,
            ErrorKind::NotFound => 5,
            ErrorKind::Conflict => 6,
            ErrorKind::Unavailable => 7,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every module error so callers can classify it without matching variants.
pub trait Classify {
    /// The coarse kind of this error.
    fn kind(&self) -> ErrorKind;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_nonzero() {
        let kinds = [
            ErrorKind::BadRequest,
            ErrorKind::Denied,
            ErrorKind::Unauthorized,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Internal,
            ErrorKind::Unavailable,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        assert!(codes.iter().all(|c| *c != 0));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }
}
