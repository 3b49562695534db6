//! Mutations: byte-level ones (flips, interesting values, inserts, deletes, copies, splices,
//! dictionary tokens), DER-aware ones (lengths, tags, whole TLVs with their parents' lengths
//! fixed) and text-aware ones (numbers, lines), stacked a few at a time.

use crate::der;
use crate::rng::Rng;

const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, 0x1f, 0x20, 0x30, 0x31,
    0x7f, 0x80, 0x81, 0x82, 0x83, 0x84, 0xa0, 0xa1, 0xa2, 0xa3, 0xff, b'"', b'\'', b'\\', b'\n',
    b'{', b'}', b'[', b']', b'.', b'*', b'-', b':', b'=', b',',
];

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "100000",
    "99999",
    "10000000",
    "10000001",
    "65535",
    "2147483647",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "999999999999999999999999999999",
    "1e308",
    "-0",
    "0.0",
    "nan",
    "inf",
    "0x7f",
];

const DER_TAGS: &[u8] = &[
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, 0x30, 0x31, 0x80, 0x81, 0x82,
    0x86, 0x87, 0xa0, 0xa1, 0xa2, 0xa3,
];

/// Applies one to eight stacked mutations to `data`, drawing splices from `others` and tokens
/// from `dict`, and keeps it within `max_len` bytes.
pub fn mutate(
    data: &mut Vec<u8>,
    others: &[Vec<u8>],
    dict: &[&[u8]],
    max_len: usize,
    rng: &mut Rng,
) {
    let rounds = 1 << rng.below(4);
    for _ in 0..rounds {
        mutate_once(data, others, dict, rng);
        if data.len() > max_len {
            data.truncate(max_len);
        }
    }
}

fn mutate_once(data: &mut Vec<u8>, others: &[Vec<u8>], dict: &[&[u8]], rng: &mut Rng) {
    if data.is_empty() {
        let n = 1 + rng.below(16);
        data.extend((0..n).map(|_| rng.byte()));
        return;
    }
    let len = data.len();
    match rng.below(16) {
        0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(len);
            data[i] = *rng.pick(INTERESTING_BYTES);
        }
        2 => {
            let i = rng.below(len);
            let delta = 1 + rng.below(16) as u8;
            data[i] = if rng.one_in(2) {
                data[i].wrapping_add(delta)
            } else {
                data[i].wrapping_sub(delta)
            };
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(at..at, bytes);
        }
        4 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(len / 4 + 1));
            data.drain(at..at + n);
        }
        5 => {
            // Copy a chunk of the input into another place (insertion).
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(64));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        6 => {
            // Repeat a chunk many times: deep nesting, long lists, long labels.
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(8));
            let chunk = data[from..from + n].to_vec();
            let cap = if rng.one_in(4) { 2000 } else { 40 };
            let times = 1 + rng.below(cap);
            let at = rng.below(len + 1);
            data.splice(at..at, chunk.iter().copied().cycle().take(n * times));
        }
        7 | 8 if !dict.is_empty() => {
            let token = *rng.pick(dict);
            let at = rng.below(len + 1);
            if rng.one_in(2) {
                data.splice(at..at, token.iter().copied());
            } else {
                let end = (at + token.len()).min(len);
                data.splice(at..end, token.iter().copied());
            }
        }
        9 if !others.is_empty() => {
            let other = rng.pick(others);
            if !other.is_empty() {
                let a = rng.below(len + 1);
                let b = rng.below(other.len());
                data.truncate(a);
                data.extend_from_slice(&other[b..]);
            }
        }
        10 => {
            data.truncate(rng.below(len));
        }
        11 | 12 => {
            if !der_mutate(data, rng) {
                text_mutate(data, dict, rng);
            }
        }
        13 | 14 => {
            if !text_mutate(data, dict, rng) {
                let i = rng.below(len);
                data[i] = rng.byte();
            }
        }
        _ => {
            let i = rng.below(len);
            data[i] = rng.byte();
        }
    }
}

/// A structure-aware mutation of DER: a TLV's length or tag made wrong, or the TLV deleted,
/// duplicated, emptied, grown or given other content with every enclosing length fixed, or the
/// input cut inside it. False when `data` has no TLV to work on.
pub fn der_mutate(data: &mut Vec<u8>, rng: &mut Rng) -> bool {
    let all = der::walk(data, 1024);
    if all.is_empty() {
        return false;
    }
    let t = *rng.pick(&all);
    let up = der::ancestors(&all, &t);
    let content = data[t.content_start()..t.end()].to_vec();
    match rng.below(9) {
        0 => {
            let weird: Vec<u8> = match rng.below(7) {
                0 => vec![0x80],
                1 => vec![0x84, 0xff, 0xff, 0xff, 0xff],
                2 => vec![0x81, rng.byte()],
                3 => vec![0x85, 1, 0, 0, 0, 0],
                4 => der::encode_len(t.len + 1),
                5 => der::encode_len(t.len.saturating_sub(1)),
                _ => vec![0x82, 0x00, t.len.min(255) as u8],
            };
            data.splice(t.start + 1..t.content_start(), weird);
        }
        1 => data[t.start] = *rng.pick(DER_TAGS),
        2 => {
            // Delete the TLV (lengths of its parents fixed).
            match up.last() {
                Some(parent) => {
                    let mut c = data[parent.content_start()..t.start].to_vec();
                    c.extend_from_slice(&data[t.end()..parent.end()]);
                    *data = der::replace_content(data, &up[..up.len() - 1], parent, &c);
                }
                None => {
                    data.drain(t.start..t.end());
                }
            }
        }
        3 => {
            // Duplicate it in place (a second extension, CertID, nonce, ...).
            let copy = data[t.start..t.end()].to_vec();
            match up.last() {
                Some(parent) => {
                    let mut c = data[parent.content_start()..t.end()].to_vec();
                    let times = if rng.one_in(8) { 40 } else { 1 };
                    for _ in 0..times {
                        c.extend_from_slice(&copy);
                    }
                    c.extend_from_slice(&data[t.end()..parent.end()]);
                    *data = der::replace_content(data, &up[..up.len() - 1], parent, &c);
                }
                None => {
                    data.splice(t.end()..t.end(), copy);
                }
            }
        }
        4 => *data = der::replace_content(data, &up, &t, &[]),
        5 => {
            let mut c = content;
            let cap = if rng.one_in(8) { 300 } else { 8 };
            let n = 1 + rng.below(cap);
            let at = rng.below(c.len() + 1);
            c.splice(at..at, (0..n).map(|_| rng.byte()));
            *data = der::replace_content(data, &up, &t, &c);
        }
        6 => {
            // Another TLV's content in this one.
            let other = *rng.pick(&all);
            let c = data[other.content_start()..other.end()].to_vec();
            *data = der::replace_content(data, &up, &t, &c);
        }
        7 => {
            let cut = t.start + rng.below(t.end() - t.start + 1);
            data.truncate(cut);
        }
        _ => {
            if let Some(i) = (t.content_start()..t.end()).nth(rng.below(t.len.max(1))) {
                data[i] = rng.byte();
            }
        }
    }
    true
}

/// A text mutation: a number replaced by an interesting one, or a line duplicated, deleted,
/// swapped or prefixed with a dictionary token. False when `data` has no number nor line break.
pub fn text_mutate(data: &mut Vec<u8>, dict: &[&[u8]], rng: &mut Rng) -> bool {
    if rng.one_in(2) {
        let numbers = digit_runs(data);
        if !numbers.is_empty() {
            let (a, b) = *rng.pick(&numbers);
            let n = rng.pick(INTERESTING_NUMBERS).as_bytes();
            data.splice(a..b, n.iter().copied());
            return true;
        }
    }
    let lines: Vec<(usize, usize)> = line_spans(data);
    if lines.len() < 2 {
        return false;
    }
    let (a, b) = *rng.pick(&lines);
    match rng.below(4) {
        0 => {
            let line = data[a..b].to_vec();
            data.splice(a..a, line);
        }
        1 => {
            data.drain(a..b);
        }
        2 => {
            let (c, d) = *rng.pick(&lines);
            if (c, d) != (a, b) {
                let (first, second) = if a < c {
                    ((a, b), (c, d))
                } else {
                    ((c, d), (a, b))
                };
                let l1 = data[first.0..first.1].to_vec();
                let l2 = data[second.0..second.1].to_vec();
                data.splice(second.0..second.1, l1);
                data.splice(first.0..first.1, l2);
            }
        }
        _ => {
            if let Some(token) = (!dict.is_empty()).then(|| *rng.pick(dict)) {
                data.splice(a..a, token.iter().copied());
            }
        }
    }
    true
}

fn digit_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() && out.len() < 256 {
        if data[i].is_ascii_digit() {
            let start = i;
            while i < data.len() && data[i].is_ascii_digit() {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

fn line_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
            if out.len() >= 512 {
                return out;
            }
        }
    }
    if start < data.len() {
        out.push((start, data.len()));
    }
    out
}
