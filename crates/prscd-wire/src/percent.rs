//! Percent-encoding (`%XX`), for the two places names travel in a URL-like
//! form: the handshake's query string and the mesh's key expressions.

/// Decodes `%XX` escapes; `None` on a broken escape or a non-UTF-8 result.
/// `+` stays `+` (not form encoding).
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes the ASCII characters `escape` selects as `%XX` (upper-case hex);
/// everything else, UTF-8 included, is kept.
pub fn encode(s: &str, escape: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if ch.is_ascii() && escape(ch as u8) {
            out.push_str(&format!("%{:02X}", ch as u8));
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip_and_broken_escapes() {
        let encoded = super::encode("a/b c%é", |b| matches!(b, b'/' | b' ' | b'%'));
        assert_eq!(encoded, "a%2Fb%20c%25é");
        assert_eq!(super::decode(&encoded).as_deref(), Some("a/b c%é"));
        assert_eq!(super::decode("%zz"), None);
        assert_eq!(super::decode("%4"), None);
        assert_eq!(super::decode("%FF"), None, "not UTF-8");
        assert_eq!(super::decode("a+b").as_deref(), Some("a+b"));
    }
}
