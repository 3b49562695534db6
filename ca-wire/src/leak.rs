//! The check that no `Debug` output shows a secret, shared by the redaction tests of every crate
//! (feature `test-support`; never compiled into a release binary).

use std::fmt::Debug;

/// The first text form of `secret` found in `rendered` (whitespace ignored, so `{:#?}` layouts
/// count): 12-byte windows of the bytes as text, as hex in either case and as a `[1, 2, ...]`
/// byte list, and aligned 12-byte windows in standard or URL-safe base64, so that a partial
/// print is caught too.
pub fn leaked_form(rendered: &str, secret: &[u8]) -> Option<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let flat: String = rendered.chars().filter(|c| !c.is_whitespace()).collect();
    let mut forms: Vec<String> = Vec::new();
    for w in secret.windows(secret.len().clamp(1, 12)) {
        if let Ok(text) = std::str::from_utf8(w) {
            forms.push(text.chars().filter(|c| !c.is_whitespace()).collect());
        }
        let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
        forms.push(hex.to_uppercase());
        forms.push(hex);
        forms.push(w.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
    }
    for start in (0..secret.len()).step_by(3) {
        let w = &secret[start..secret.len().min(start + 12)];
        forms.push(STANDARD_NO_PAD.encode(w));
        forms.push(URL_SAFE_NO_PAD.encode(w));
    }
    forms
        .into_iter()
        .find(|f| f.len() >= 12.min(secret.len()) && flat.contains(f.as_str()))
}

/// Fails when `{:?}` or `{:#?}` of `value` shows any form of `secret`.
pub fn assert_redacted<T: Debug + ?Sized>(what: &str, value: &T, secret: &[u8]) {
    for rendered in [format!("{value:?}"), format!("{value:#?}")] {
        if let Some(form) = leaked_form(&rendered, secret) {
            panic!("Debug of {what} shows its secret ({form}): {rendered}");
        }
    }
}

/// The private scalar of a P-256 PKCS#8 key as ring writes it. The rest is structure and the
/// public key, which certificates (and so a `Debug` showing one) rightly contain.
pub fn p256_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an ECPrivateKey")
        + 5;
    pkcs8[at..at + 32].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_check_sees_every_form() {
        use base64::Engine;
        let secret = b"0123456789-SECRET-BYTES";
        for shown in [
            format!("{:?}", String::from_utf8_lossy(secret)),
            format!("{:#?}", secret.to_vec()),
            format!("{:?}", &secret[3..15]),
            secret
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>(),
            base64::engine::general_purpose::STANDARD.encode(secret),
            base64::engine::general_purpose::URL_SAFE.encode(&secret[6..]),
        ] {
            assert!(leaked_form(&shown, secret).is_some(), "{shown}");
        }
        assert!(leaked_form("CaKey(<redacted>)", secret).is_none());
    }
}
