//! Just enough DER to mutate it by structure: find every TLV of an input, rewrite lengths, and
//! build small encodings. Lenient on purpose: it must cope with the broken inputs it creates.

/// One TLV found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv {
    /// Offset of the tag byte.
    pub start: usize,
    /// Bytes of tag and length.
    pub header_len: usize,
    /// Bytes of content, as the length field says (clamped to the buffer).
    pub len: usize,
    /// The tag byte (low-tag-number form only).
    pub tag: u8,
}

impl Tlv {
    /// Offset just past the content.
    pub fn end(&self) -> usize {
        self.start + self.header_len + self.len
    }

    /// Offset of the content.
    pub fn content_start(&self) -> usize {
        self.start + self.header_len
    }

    /// Whether the constructed bit is set.
    pub fn constructed(&self) -> bool {
        self.tag & 0x20 != 0
    }
}

/// Reads the tag and length at `at`: (tag, header length, content length). `None` when the
/// header is cut off, uses a multi-byte tag, or claims more than the buffer holds.
pub fn header(buf: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *buf.get(at)?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *buf.get(at + 1)?;
    let (len, header_len) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = buf.get(at + 2..at + 2 + n)?;
        let len = bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, 2 + n)
    };
    if at + header_len + len > buf.len() {
        return None;
    }
    Some((tag, header_len, len))
}

/// Every TLV reachable from the start of `buf` (siblings, and children of constructed ones),
/// in document order; stops at the first header that does not parse. At most `limit` entries.
pub fn walk(buf: &[u8], limit: usize) -> Vec<Tlv> {
    let mut out = Vec::new();
    walk_range(buf, 0, buf.len(), 0, limit, &mut out);
    out
}

fn walk_range(
    buf: &[u8],
    mut at: usize,
    end: usize,
    depth: usize,
    limit: usize,
    out: &mut Vec<Tlv>,
) {
    while at < end && out.len() < limit {
        let Some((tag, header_len, len)) = header(&buf[..end], at) else {
            return;
        };
        let tlv = Tlv {
            start: at,
            header_len,
            len,
            tag,
        };
        out.push(tlv);
        // BIT STRING and OCTET STRING often wrap DER (keys, extension values): look inside.
        let content = tlv.content_start();
        if depth < 12 {
            let wraps_der = tag == 0x04 && len > 2 && buf[content] & 0x20 != 0;
            if tlv.constructed() || wraps_der {
                walk_range(buf, content, tlv.end(), depth + 1, limit, out);
            } else if tag == 0x03 && len > 3 && buf[content] == 0 && buf[content + 1] & 0x20 != 0 {
                walk_range(buf, content + 1, tlv.end(), depth + 1, limit, out);
            }
        }
        at = tlv.end();
    }
}

/// The DER length octets for `len`.
pub fn encode_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = (len as u64)
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// A TLV with `tag` around `content`.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(encode_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// The direct children of the constructed TLV `parent` in `buf`.
pub fn children(buf: &[u8], parent: &Tlv) -> Vec<Tlv> {
    let mut out = Vec::new();
    let mut at = parent.content_start();
    while at < parent.end() {
        let Some((tag, header_len, len)) = header(&buf[..parent.end()], at) else {
            break;
        };
        let t = Tlv {
            start: at,
            header_len,
            len,
            tag,
        };
        out.push(t);
        at = t.end();
    }
    out
}

/// Replaces the content of `t` in `buf` with `content`, fixing the length of `t` and of every
/// enclosing TLV in `ancestors` (outermost first).
pub fn replace_content(buf: &[u8], ancestors: &[Tlv], t: &Tlv, content: &[u8]) -> Vec<u8> {
    let mut inner = tlv(t.tag, content);
    let mut lo = t.start;
    let mut hi = t.end();
    for a in ancestors.iter().rev() {
        let mut c = buf[a.content_start()..lo].to_vec();
        c.extend_from_slice(&inner);
        c.extend_from_slice(&buf[hi..a.end()]);
        inner = tlv(a.tag, &c);
        lo = a.start;
        hi = a.end();
    }
    let mut out = buf[..lo].to_vec();
    out.extend(inner);
    out.extend_from_slice(&buf[hi..]);
    out
}

/// The TLVs of `all` that enclose `t`, outermost first.
pub fn ancestors(all: &[Tlv], t: &Tlv) -> Vec<Tlv> {
    all.iter()
        .filter(|a| a.constructed_or_wrapping() && a.start < t.start && t.end() <= a.end())
        .copied()
        .collect()
}

impl Tlv {
    fn constructed_or_wrapping(&self) -> bool {
        self.constructed() || self.tag == 0x04 || self.tag == 0x03
    }
}
