//! Talking to the Kubernetes API: one HTTPS client ([`client`]) every API user shares (the
//! ConfigMap source, the Leases, the pruning of stale resources), one Node read ([`node`]), and one list-then-watch loop
//! with one watch-event parser ([`watch`]) every watcher shares (the ConfigMap source, the Leases).

pub mod client;
pub mod node;
pub mod watch;

/// `s` as a JSON string literal: quotes, backslashes, control characters and whatever else YAML
/// does not count as printable (C1 controls but NEL, U+FFFE, U+FFFF) escaped, so a YAML reader
/// (serde_yaml reads our JSON) takes every string we write. For bodies written by hand, where a YAML serialiser would leave
/// a timestamp unquoted for a YAML 1.1 reader to take as a time.
pub fn json_string(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20
                || ('\u{7f}'..='\u{9f}').contains(&c) && c != '\u{85}'
                || matches!(c, '\u{fffe}' | '\u{ffff}') =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_strings_round_trip() {
        for s in [
            "plain",
            "q\"uote\\",
            "line\nfeed\ttab\u{1}\u{7f}",
            "é日本\u{1F600}",
            "",
        ] {
            let quoted = super::json_string(s);
            let back: String = serde_yaml::from_str(&quoted).unwrap();
            assert_eq!(back, s, "{quoted}");
        }
    }
}
