//! CA private keys at rest: sealed with a passphrase (PBKDF2-HMAC-SHA256 → AES-256-GCM, ring),
//! or, only when the operator explicitly chose it for development, stored in the clear.
//!
//! A sealed key is bound to its slot (the authority id is the AEAD's associated data), so a sealed
//! dev key pasted into the prod slot fails to open instead of silently signing as prod.

use std::fmt;
use std::num::NonZeroU32;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{Classify, ErrorKind};

/// PBKDF2-HMAC-SHA256 iterations for new keys (OWASP's 2023 figure for this PRF).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Shortest passphrase accepted when creating a CA.
pub const MIN_PASSPHRASE_LEN: usize = 12;

const SEALED_PREFIX: &str = "sealed-v1";
const PLAIN_PREFIX: &str = "plain-v1";

/// A passphrase: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase, removing one trailing newline (as left by `echo` into a file).
    pub fn new(mut s: String) -> Passphrase {
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        }
        Passphrase(Zeroizing::new(s))
    }

    /// Refuses passphrases too short to protect a CA.
    pub fn check_strength(&self) -> Result<(), SealError> {
        if self.0.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(SealError::WeakPassphrase);
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Why a key could not be sealed or opened. Never carries key or passphrase material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The passphrase is shorter than [`MIN_PASSPHRASE_LEN`].
    #[error("passphrase too short: use at least {MIN_PASSPHRASE_LEN} characters")]
    WeakPassphrase,
    /// Decryption failed: wrong passphrase, or a key from another slot, or corruption.
    #[error("wrong passphrase for the CA key of {0:?} (or the stored key is corrupted)")]
    WrongPassphrase(String),
    /// The key is sealed but no passphrase was given.
    #[error("the CA key of {0:?} is encrypted: give --passphrase-file or set CA_PASSPHRASE")]
    PassphraseRequired(String),
    /// The stored text is not a sealed or plain key of a known version.
    #[error("stored CA key of {0:?} is not in a recognised format")]
    Format(String),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

impl Classify for SealError {
    fn kind(&self) -> ErrorKind {
        match self {
            SealError::WeakPassphrase | SealError::Format(_) => ErrorKind::BadRequest,
            SealError::WrongPassphrase(_) | SealError::PassphraseRequired(_) => {
                ErrorKind::Unauthorized
            }
            SealError::Random => ErrorKind::Internal,
        }
    }
}

/// A key-encryption key derived from a passphrase and salt; reused to seal several keys at once.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
    salt: [u8; 16],
    iterations: u32,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

fn derive(pass: &Passphrase, salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    let iters = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        salt,
        pass.bytes(),
        key.as_mut(),
    );
    key
}

impl Sealer {
    /// Derives a fresh key-encryption key with a new random salt.
    pub fn new(pass: &Passphrase) -> Result<Sealer, SealError> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| SealError::Random)?;
        Ok(Sealer {
            key: derive(pass, &salt, PBKDF2_ITERATIONS),
            salt,
            iterations: PBKDF2_ITERATIONS,
        })
    }

    /// Seals `plaintext` for the slot `slot`.
    pub fn seal(&self, slot: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let key = aead_key(&self.key)?;
        // Room for the tag up front, so appending it never moves the plaintext to a new buffer.
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(plaintext);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(slot.as_bytes()),
            &mut *buf,
        )
        .map_err(|_| SealError::Random)?;
        Ok(format!(
            "{SEALED_PREFIX}:pbkdf2-sha256:{}:{}:{}:{}",
            self.iterations,
            hex::encode(self.salt),
            hex::encode(nonce),
            hex::encode(&*buf)
        ))
    }
}

fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Random)
}

/// Stores a key in the clear (development only; the caller warns). The text is the key, so it
/// is zeroized when dropped too.
pub fn plain(plaintext: &[u8]) -> Zeroizing<String> {
    let hexed = Zeroizing::new(hex::encode(plaintext));
    let mut out = Zeroizing::new(String::with_capacity(PLAIN_PREFIX.len() + 1 + hexed.len()));
    out.push_str(PLAIN_PREFIX);
    out.push(':');
    out.push_str(&hexed);
    out
}

/// Whether stored key text is sealed (needs a passphrase).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// Opens stored key text for `slot`.
pub fn open(
    slot: &str,
    stored: &str,
    pass: Option<&Passphrase>,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let format_err = || SealError::Format(slot.to_string());
    let stored = stored.trim();
    if let Some(hexed) = stored
        .strip_prefix(PLAIN_PREFIX)
        .and_then(|r| r.strip_prefix(':'))
    {
        return hex::decode(hexed)
            .map(Zeroizing::new)
            .map_err(|_| format_err());
    }
    let parts: Vec<&str> = stored.split(':').collect();
    let [prefix, kdf, iters, salt, nonce, ct] = parts.as_slice() else {
        return Err(format_err());
    };
    if *prefix != SEALED_PREFIX || *kdf != "pbkdf2-sha256" {
        return Err(format_err());
    }
    let pass = pass.ok_or_else(|| SealError::PassphraseRequired(slot.to_string()))?;
    let iterations: u32 = iters.parse().map_err(|_| format_err())?;
    // Refuse absurd counts from a tampered file rather than spin for hours or accept a weak one.
    if !(100_000..=10_000_000).contains(&iterations) {
        return Err(format_err());
    }
    let salt = hex::decode(salt).map_err(|_| format_err())?;
    let nonce: [u8; 12] = hex::decode(nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(format_err)?;
    let mut buf = Zeroizing::new(hex::decode(ct).map_err(|_| format_err())?);
    let kek = derive(pass, &salt, iterations);
    let key = aead_key(&kek)?;
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(slot.as_bytes()),
            &mut buf,
        )
        .map_err(|_| SealError::WrongPassphrase(slot.to_string()))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_string())
    }

    #[test]
    fn seals_and_opens() {
        let p = pass("correct horse battery staple\n");
        let sealer = Sealer::new(&p).expect("sealer");
        let stored = sealer.seal("dev", b"secret key bytes").expect("sealed");
        assert!(is_sealed(&stored));
        assert!(!stored.contains(&hex::encode(b"secret key bytes")));
        let opened =
            open("dev", &stored, Some(&pass("correct horse battery staple"))).expect("opens");
        assert_eq!(opened.as_slice(), b"secret key bytes");
    }

    #[test]
    fn wrong_passphrase_wrong_slot_and_missing_passphrase_are_refused() {
        let sealer = Sealer::new(&pass("correct horse battery staple")).expect("sealer");
        let stored = sealer.seal("dev", b"k").expect("sealed");
        assert_eq!(
            open("dev", &stored, Some(&pass("incorrect horse battery"))),
            Err(SealError::WrongPassphrase("dev".into()))
        );
        assert_eq!(
            open("prod", &stored, Some(&pass("correct horse battery staple"))),
            Err(SealError::WrongPassphrase("prod".into()))
        );
        assert_eq!(
            open("dev", &stored, None),
            Err(SealError::PassphraseRequired("dev".into()))
        );
        let tampered = stored.replace("600000", "1");
        assert_eq!(
            open("dev", &tampered, Some(&pass("x"))),
            Err(SealError::Format("dev".into()))
        );
    }

    #[test]
    fn plain_keys_open_without_passphrase() {
        let stored = plain(b"k");
        assert!(!is_sealed(&stored));
        assert_eq!(open("root", &stored, None).expect("opens").as_slice(), b"k");
        assert_eq!(
            open("root", "garbage", None),
            Err(SealError::Format("root".into()))
        );
    }

    #[test]
    fn short_passphrases_are_refused_and_never_printed() {
        assert_eq!(
            pass("short").check_strength(),
            Err(SealError::WeakPassphrase)
        );
        assert!(pass("long enough passphrase").check_strength().is_ok());
        assert!(!format!("{:?}", pass("hunter2hunter2")).contains("hunter2"));
    }
}
