//! The bounds a config must stay within, and the count before parsing that holds the parser to
//! them: every bound keeps a hostile or mistaken config from costing the node more than a real one
//! (memory, time, gRPC servers), and each is far above what a real config needs.

/// Largest config read: what one ConfigMap can hold (1 MiB of data in all). Checked before
/// parsing, so a huge file (or `/dev/zero`) costs nothing.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Most entries a config may expand to: mappings, hosts, devices and env keys, each counted every
/// time it is read, so a YAML alias used again counts again. A 1 MiB config written out holds at
/// most ~40,000 of them; aliases could otherwise expand it a hundredfold (serde_yaml's own limit)
/// into gigabytes. Counted while parsing: a config past it stops there.
pub const MAX_ENTRIES: usize = 100_000;
/// Most device entries (also counted each time an alias repeats them).
pub const MAX_DEVICE_ENTRIES: usize = 20_000;
/// Most structural tokens (`[ ] { } , :`, list dashes, lines) outside quotes and comments,
/// counted before parsing: about one YAML event each, and serde_yaml holds every event of the
/// document (~200 bytes each) before deserializing anything. A config of 10,000 devices in flow
/// style has ~140,000; a dense 1 MiB file of `[],` would have 500,000 (~100 MB of events).
pub const MAX_TOKENS: usize = 160_000;
/// Deepest nesting (flow brackets, or list dashes on one line): parsing cost grows with depth
/// times length, so 40,000 `[` took seconds and 1 MiB of them hours. A config needs 6.
pub const MAX_DEPTH: usize = 64;
/// Widest indentation, in columns (block nesting): a config needs about 12.
pub const MAX_INDENT: usize = 256;
/// Most resources one node may be given: each is a gRPC server with its socket, ~55 KB and two
/// file descriptors, and the DaemonSet's 64 Mi limit must hold them all.
pub const MAX_NODE_RESOURCES: usize = 256;
/// Most devices one resource may have: its ListAndWatch list must stay well within the 4 MiB a
/// gRPC message may carry (a device takes up to ~80 bytes of it).
pub const MAX_RESOURCE_DEVICES: usize = 10_000;
/// Most bytes of text (names, IDs, env keys and values) a config may expand to: an alias of one
/// 32 KiB env value used 200,000 times would otherwise be 6 GiB of copies.
pub const MAX_TEXT_BYTES: usize = 8 << 20;
/// Most (host, device) pairs, summed over the mappings: what the per-node views hold.
pub const MAX_ASSIGNMENTS: usize = 1_000_000;
/// Most env keys one device may set.
pub const MAX_ENV_KEYS: usize = 128;
/// Longest env value. Linux refuses one env string over 128 KiB at exec (`MAX_ARG_STRLEN`); a
/// device's value is set twice (DEV<n>_ and un-indexed) among other resources' in one container.
pub const MAX_ENV_VALUE: usize = 32 << 10;
/// Most bytes of env keys and values one device may set.
pub const MAX_DEVICE_ENV_BYTES: usize = 64 << 10;

/// Counts what the YAML parser would have to hold, without parsing: structural tokens outside
/// quotes and comments, flow nesting, list dashes on one line, indentation. The error is (line,
/// what, limit). Conservative where the YAML is unusual (a comma inside a block scalar counts).
pub(super) fn prescan(text: &[u8]) -> Result<(), (usize, &'static str, usize)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Double,
        Single,
        Comment,
    }
    let (mut tokens, mut depth, mut line) = (0usize, 0usize, 1usize);
    let mut state = In::Plain;
    let mut at_line_start = true;
    let (mut indent, mut dashes) = (0usize, 0usize);
    let mut prev = b'\n';
    let mut escaped = false;
    for &b in text {
        if b == b'\n' {
            line += 1;
            tokens += 1;
            if state == In::Comment {
                state = In::Plain;
            }
            at_line_start = true;
            (indent, dashes) = (0, 0);
            prev = b;
            continue;
        }
        match state {
            In::Comment => {}
            In::Double => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    state = In::Plain;
                }
            }
            In::Single => {
                if b == b'\'' {
                    state = In::Plain;
                }
            }
            In::Plain => {
                if at_line_start {
                    match b {
                        b' ' => {
                            indent += 1;
                            if indent > MAX_INDENT {
                                return Err((line, "columns of indentation", MAX_INDENT));
                            }
                            prev = b;
                            continue;
                        }
                        b'-' => {}
                        _ => at_line_start = false,
                    }
                }
                match b {
                    b'#' if prev.is_ascii_whitespace() => state = In::Comment,
                    b'"' | b'\'' if prev.is_ascii_whitespace() || b"[{,:-?".contains(&prev) => {
                        state = if b == b'"' { In::Double } else { In::Single };
                    }
                    b'[' | b'{' => {
                        tokens += 1;
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err((line, "levels of nesting", MAX_DEPTH));
                        }
                    }
                    b']' | b'}' => {
                        tokens += 1;
                        depth = depth.saturating_sub(1);
                    }
                    b',' | b':' => tokens += 1,
                    b'-' if at_line_start => {
                        tokens += 1;
                        dashes += 1;
                        if dashes > MAX_DEPTH {
                            return Err((line, "levels of nesting", MAX_DEPTH));
                        }
                    }
                    _ => {}
                }
            }
        }
        if tokens > MAX_TOKENS {
            return Err((
                line,
                "structural tokens (list items, keys, commas, lines)",
                MAX_TOKENS,
            ));
        }
        prev = b;
    }
    if tokens > MAX_TOKENS {
        return Err((
            line,
            "structural tokens (list items, keys, commas, lines)",
            MAX_TOKENS,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn dense_deep_and_wide_texts_are_refused_before_parsing() {
        // 40,000 `[`: seconds of parsing (1 MiB of them: hours). Refused at once.
        let e = err(&format!("deviceMapping: {}", "[".repeat(40_000)));
        assert_eq!(
            e,
            "test.yaml: line 1: the config has more than 64 levels of nesting; no config needs \
             that many (refused before parsing)"
        );
        assert!(
            err(&format!("deviceMapping: {}", "{a: ".repeat(100))).contains("levels of nesting")
        );
        assert!(
            err(&format!("deviceMapping:\n{}x\n", "- ".repeat(100))).contains("levels of nesting")
        );
        assert!(err(&format!("deviceMapping:\n{}- x\n", " ".repeat(300)))
            .contains("columns of indentation"));
        // 1 MiB of tiny list items: ~100 MB of parser events before any other bound applied.
        let hosts = format!(
            "deviceMapping:\n- hosts: [{}]\n  devices: []\n",
            vec!["a"; 200_000].join(",")
        );
        assert!(err(&hosts).contains("more than 160000 structural tokens"));
        // Brackets, commas and colons in quotes and comments are text, not structure.
        let quoted = format!(
            "# {}\ndeviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"{}\", env: {{K: '{}'}}}}\n",
            "[".repeat(1000),
            "[[[[",
            ",:[{".repeat(8_000)
        );
        assert!(
            parse(&quoted).is_ok(),
            "{:?}",
            parse(&quoted).err().map(|e| e.to_string())
        );
        // The largest config the bench measures (10,000 devices in flow style) passes.
        let mut big = String::from("deviceMapping:\n  - hosts: [n]\n    devices:\n");
        for r in 0..200 {
            for d in 0..50 {
                big.push_str(&format!("      - {{resourceName: bench.example.com/r{r:03}, instanceID: \"d{d:02}\", env: {{IP: 127.0.0.1, PORT: \"{}\"}}}}\n", 9000 + d));
            }
        }
        assert!(
            parse(&big).is_ok(),
            "{:?}",
            parse(&big).err().map(|e| e.to_string())
        );
    }
}
