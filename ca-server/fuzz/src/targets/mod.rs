//! The targets: one per parser of untrusted input or pure decision, each with its properties,
//! its seed generator and its mutation dictionary.

mod agent;
mod api;
mod csr;
mod ocsp;
mod policy;
mod sealed;

use crate::rng::Rng;

/// One fuzz target.
pub trait Target {
    /// Its name on the command line and under `corpus/`.
    fn name(&self) -> &'static str;

    /// Largest input worth trying (the code under test caps its input at about this size).
    fn max_len(&self) -> usize;

    /// Runs one input through the code under test and checks the properties that must hold for
    /// every input, panicking when one does not. Returns the outcomes reached (which error, which
    /// decision), `|`-separated; an input reaching one not seen before is kept.
    fn run(&mut self, input: &[u8]) -> String;

    /// Valid and interesting inputs made by code: the seed corpus.
    fn seeds(&mut self) -> Vec<Vec<u8>>;

    /// Tokens that mutations splice into inputs.
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[]
    }

    /// A format-aware mutation (e.g. DER inside PEM); false when it did nothing.
    fn mutate(&self, _input: &mut Vec<u8>, _rng: &mut Rng) -> bool {
        false
    }
}

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const NAMES: &[&str] = &[
    "csr",
    "policy",
    "api_body",
    "ocsp",
    "sealed",
    "agent_config",
    "agent_status",
];

/// The target called `name`, set up (keys and throwaway CA generated now).
pub fn make(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "csr" => Box::new(csr::CsrTarget::new()),
        "policy" => Box::new(policy::PolicyTarget::new()),
        "api_body" => Box::new(api::ApiBodyTarget::new()),
        "ocsp" => Box::new(ocsp::OcspTarget::new()),
        "sealed" => Box::new(sealed::SealedTarget::new()),
        "agent_config" => Box::new(agent::ConfigTarget::new()),
        "agent_status" => Box::new(agent::StatusTarget::new()),
        _ => return None,
    })
}

/// The shape of a message: digits and quoted text blanked, cut to a few dozen characters, so
/// that messages naming different values count as one outcome.
pub fn class(message: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut last_digit = false;
    let mut escaped = false;
    for c in message.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                out.push(c);
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '`' => {
                out.push(c);
                quote = Some(c);
                last_digit = false;
            }
            '0'..='9' => {
                if !last_digit {
                    out.push('#');
                }
                last_digit = true;
            }
            _ => {
                out.push(c);
                last_digit = false;
            }
        }
        if out.len() >= 60 {
            break;
        }
    }
    out
}

/// The kind of a serde message (from serde_json or toml), without the values it quotes:
/// `invalid type: string "x", expected a string` is `invalid type/a string`. Fuzzed keys and
/// values may hold quotes of any kind, so the kind and what was expected are kept rather than
/// unquoting.
pub fn message_class(m: &str) -> String {
    let m = m.split(" at line ").next().unwrap_or(m).trim();
    match m.rsplit_once(", expected ") {
        Some((head, expected)) => {
            let kind: Vec<&str> = head
                .split([' ', ':', ','])
                .filter(|w| !w.is_empty())
                .take(2)
                .collect();
            format!(
                "{}/{}",
                kind.join(" "),
                class(expected).chars().take(30).collect::<String>()
            )
        }
        None => class(m).chars().take(48).collect(),
    }
}

/// The message of a TOML error that was rendered with its context (position, the offending
/// line of `text`, a caret line) and had its newlines replaced by spaces.
pub fn rendered_toml_class(rendered: &str, text: &str) -> String {
    let position = rendered
        .strip_prefix("TOML parse error at line ")
        .and_then(|r| r.split_once(','))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    let message = position
        .and_then(|line| {
            let content = text.split('\n').nth(line.checked_sub(1)?)?;
            let marker = format!("{line} | {content}");
            let at = rendered.find(&marker)? + marker.len();
            Some(
                rendered[at..]
                    .trim_start_matches([' ', '|'])
                    .trim_start_matches('^')
                    .trim_start(),
            )
        })
        .unwrap_or(rendered);
    message_class(message)
}

/// Reads structured values from fuzz bytes; past the end every read yields zero, so any input
/// decodes.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, pos: 0 }
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        &self.data[start..end]
    }

    /// The next 8 bytes as a big-endian integer.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for (i, x) in self.take(8).iter().enumerate() {
            b[i] = *x;
        }
        u64::from_be_bytes(b)
    }

    /// A string of up to `max` bytes (invalid UTF-8 replaced).
    pub fn string(&mut self, max: usize) -> String {
        let n = usize::from(self.u8()) % (max + 1);
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}
