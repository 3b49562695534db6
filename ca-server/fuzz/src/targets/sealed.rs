//! `ca_server::sealed::open` on garbage and on mutations of real sealed keys, which must fail
//! closed: a sealed key opens only with its passphrase, in its slot, to exactly what was sealed.
//!
//! Nothing secret is kept in the corpus. The keys sealed here are random bytes and the
//! passphrase is random, both made at start-up; a corpus input is either a mode byte and garbage
//! text, or a mode byte and an edit script applied to the sealed text of this run. The key
//! mutated is sealed with 100 000 PBKDF2 iterations (the fewest `open` accepts, so each attempt
//! costs least) in the format `Sealer` writes; one sealed by `Sealer` itself is checked at
//! start-up.

use std::num::NonZeroU32;

use ca_server::sealed::{self, Passphrase, SealError, Sealer};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Bytes, Target, class};

const SLOT: &str = "dev";
const FAST_ITERATIONS: u32 = 100_000;

pub struct SealedTarget {
    pass: String,
    wrong_pass: String,
    plaintext: Vec<u8>,
    sealed: String,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Seals like `Sealer::seal`, with a chosen iteration count.
fn seal(pass: &str, slot: &str, plaintext: &[u8], iterations: u32) -> String {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt).expect("random");
    rng.fill(&mut nonce).expect("random");
    let mut kek = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).expect("non-zero"),
        &salt,
        pass.as_bytes(),
        &mut kek,
    );
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &kek).expect("key"));
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(slot.as_bytes()),
        &mut buf,
    )
    .expect("seal");
    format!(
        "sealed-v1:pbkdf2-sha256:{iterations}:{}:{}:{}",
        hex(&salt),
        hex(&nonce),
        hex(&buf)
    )
}

impl SealedTarget {
    pub fn new() -> SealedTarget {
        let pass = random_hex(12);
        let wrong_pass = random_hex(12);
        let plaintext = random_hex(24).into_bytes();
        let sealed = seal(&pass, SLOT, &plaintext, FAST_ITERATIONS);
        let p = Passphrase::new(pass.clone());
        let opened =
            sealed::open(SLOT, &sealed, Some(&p)).expect("this target seals as Sealer does");
        assert_eq!(opened.as_slice(), plaintext.as_slice());
        // The production sealer writes the format this target mutates (wrong passphrases and
        // slots are the fuzzing's business, on the cheaper key).
        let real = Sealer::new(&p)
            .expect("sealer")
            .seal(SLOT, &plaintext)
            .expect("sealed");
        assert_eq!(
            sealed::open(SLOT, &real, Some(&p))
                .expect("opens")
                .as_slice(),
            plaintext.as_slice()
        );
        let shape = |s: &str| s.split(':').map(str::len).collect::<Vec<_>>();
        assert_eq!(shape(&real)[3..], shape(&sealed)[3..]);
        SealedTarget {
            pass,
            wrong_pass,
            plaintext,
            sealed,
        }
    }
}

/// Applies an edit script to `text`: (op, position, byte) triples.
fn edit(text: &str, script: &mut Bytes<'_>, steps: usize) -> String {
    let mut t: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..steps {
        let op = script.u8();
        let pos = (usize::from(script.u8()) << 8 | usize::from(script.u8())) % (t.len() + 1);
        let arg = script.u8();
        // Mostly characters of the format, so that most edits keep its shape.
        let c = b"0123456789abcdefABCDEF:-v \n"[usize::from(arg) % 27];
        match op % 6 {
            0 | 1 if pos < t.len() => t[pos] = c,
            2 => t.insert(pos, c),
            3 if pos < t.len() => {
                t.remove(pos);
            }
            4 => t.truncate(pos),
            _ if pos < t.len() => t[pos] = arg,
            _ => {}
        }
    }
    String::from_utf8_lossy(&t).into_owned()
}

impl Target for SealedTarget {
    fn name(&self) -> &'static str {
        "sealed"
    }

    fn max_len(&self) -> usize {
        4096
    }

    fn run(&mut self, input: &[u8]) -> String {
        let mut b = Bytes::new(input);
        let mode = b.u8();
        let slot = if mode & 0x10 == 0 { SLOT } else { "prod" };
        let pass = match (mode >> 1) & 3 {
            0 | 1 => Some(Passphrase::new(self.pass.clone())),
            2 => None,
            _ => Some(Passphrase::new(self.wrong_pass.clone())),
        };
        let right_pass = (mode >> 1) & 3 <= 1;
        let text = if mode & 1 == 0 {
            String::from_utf8_lossy(&input[1.min(input.len())..]).into_owned()
        } else {
            let steps = usize::from(b.u8() % 16);
            edit(&self.sealed, &mut b, steps)
        };
        let r = sealed::open(slot, &text, pass.as_ref());
        let plain_format = text.trim().starts_with("plain-v1:");
        match &r {
            Ok(k) => {
                // Plain keys are text in the clear by design (the caller warns); a sealed one
                // opens only with its passphrase, in its slot, to what was sealed.
                if !plain_format {
                    assert!(
                        right_pass && slot == SLOT,
                        "a sealed key opened with the wrong passphrase or slot"
                    );
                    assert_eq!(
                        k.as_slice(),
                        self.plaintext.as_slice(),
                        "a sealed key opened to other bytes"
                    );
                }
            }
            Err(e) => {
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains(&self.pass), "an error shows the passphrase");
                let secret = String::from_utf8_lossy(&self.plaintext).into_owned();
                assert!(!shown.contains(&secret), "an error shows the key");
                if pass.is_none() && sealed::is_sealed(&text) {
                    assert!(matches!(
                        e,
                        SealError::PassphraseRequired(_) | SealError::Format(_)
                    ));
                }
            }
        }
        if sealed::is_sealed(&text) {
            assert!(sealed::open(slot, &text, None).is_err());
        }
        let what = match &r {
            Ok(_) if plain_format => "plain".to_string(),
            Ok(_) => "opened".to_string(),
            Err(e) => class(&format!("{e:?}")),
        };
        format!("{}:{what}", if mode & 1 == 0 { "text" } else { "edited" })
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut out = vec![
            vec![1, 0],
            vec![1, 1, 0, 0, 30, 5],
            vec![1, 1, 1, 0, 40, 0],
            vec![1, 2, 4, 0, 60, 0, 2, 0, 0, 12],
            vec![1 | 0x10, 0],
            vec![1 | 6, 0],
            vec![1 | 4, 0],
            vec![1, 3, 0, 0, 25, 9, 0, 0, 26, 9, 2, 0, 27, 9],
        ];
        for text in [
            "plain-v1:00ff",
            "plain-v1:0",
            "sealed-v1:pbkdf2-sha256:100000:00:000000000000000000000000:00",
            "sealed-v1:pbkdf2-sha256:99999:00:00:00",
            "sealed-v1:pbkdf2-sha256:+100000:::",
            "sealed-v1:scrypt:1:2:3:4",
            "  sealed-v1  ",
            "",
        ] {
            let mut v = vec![0];
            v.extend_from_slice(text.as_bytes());
            out.push(v);
        }
        out
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"sealed-v1:",
            b"plain-v1:",
            b"pbkdf2-sha256:",
            b"100000",
            b"600000",
            b":",
            b"00",
            b"ff",
        ]
    }
}
