//! How a YAML scalar was written (quoted or plain) and what a YAML reader may take a plain one for:
//! an unquoted `0001` is a number to many readers, and an instanceID read back as "1" would name
//! another device.

use super::scope::with_text;

/// How a scalar was written, judged from where the string serde_yaml borrowed from the input
/// sits in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    /// Unquoted and untagged: YAML readers resolve it (`0001` may be a number, `yes` a boolean).
    Plain,
    /// Quoted, a block scalar, or tagged `!!str`: a string to every reader.
    Explicit,
}

/// The style of a scalar serde_yaml lent as `s`. A string that is not a slice of the input had
/// escapes, folding or a block style: not plain.
pub(super) fn style_of(s: &str) -> Style {
    with_text(|text| {
        let Some(text) = text else {
            return Style::Explicit;
        };
        let start = (s.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        let Some((before, rest)) = text.split_at_checked(start) else {
            return Style::Explicit;
        };
        let Some((lent, after)) = rest.split_at_checked(s.len()) else {
            return Style::Explicit;
        };
        if lent != s.as_bytes() {
            return Style::Explicit;
        }
        // A quoted scalar's string ends at its closing quote (serde_yaml lends the text before
        // it, even when escapes came earlier); no plain scalar can end just before a quote.
        if matches!(after.first(), Some(b'"' | b'\'')) {
            return Style::Explicit;
        }
        // The tokens before it on its line, nearest first: an anchor (`&x`) says nothing; a tag
        // `!!str` (or the non-specific `!`) makes it a string.
        let line = before.rsplit(|b| *b == b'\n').next().unwrap_or_default();
        for token in line
            .split(|b| b.is_ascii_whitespace())
            .rev()
            .filter(|t| !t.is_empty())
        {
            match token {
                b"!!str" | b"!<tag:yaml.org,2002:str>" | b"!" => return Style::Explicit,
                t if t.starts_with(b"&") => continue,
                _ => break,
            }
        }
        Style::Plain
    })
}

/// What a YAML 1.1 or 1.2 reader may take a plain scalar for other than a string: `0001` and
/// `0x1F` (numbers), `yes` and `off` (YAML 1.1 booleans), `~` (null).
pub(super) fn reads_as_non_string(s: &str) -> Option<&'static str> {
    let words = |list: &[&str]| list.iter().any(|w| s.eq_ignore_ascii_case(w));
    if s.is_empty() || words(&["~", "null"]) {
        return Some("null");
    }
    if words(&["true", "false", "yes", "no", "on", "off", "y", "n"]) {
        return Some("a boolean");
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits = |t: &str, radix: u32| {
        t.chars().any(|c| c.is_digit(radix)) && t.chars().all(|c| c.is_digit(radix) || c == '_')
    };
    let prefixed = [("0x", 16), ("0o", 8), ("0b", 2)]
        .iter()
        .any(|(p, radix)| unsigned.strip_prefix(p).is_some_and(|t| digits(t, *radix)));
    // Sexagesimal (YAML 1.1): 1:30, 1:30:00.5.
    let sexagesimal = unsigned.contains(':') && {
        let parts: Vec<&str> = unsigned.split(':').collect();
        let (last, rest) = parts.split_last().unwrap_or((&"", &[]));
        rest.iter().all(|t| digits(t, 10)) && (digits(last, 10) || is_float(last))
    };
    let number = digits(unsigned, 10)
        || prefixed
        || sexagesimal
        || is_float(unsigned)
        || words(&[".inf", "+.inf", "-.inf", ".nan"]);
    if number {
        return Some("a number");
    }
    // YAML 1.1 timestamps: 2001-12-14, 2001-12-14t21:59:43.10-05:00.
    let b = s.as_bytes();
    let date = b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && s[5..]
            .split(['-', 't', 'T', ' '])
            .take(2)
            .all(|t| !t.is_empty() && t.len() <= 2 && t.bytes().all(|c| c.is_ascii_digit()));
    date.then_some("a timestamp")
}

/// `1.5`, `.5`, `1.`, `1e3`, `1.5E-3` (digits may carry `_`).
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mantissa_ok = (!int.is_empty() || !frac.is_empty())
        && digits(int)
        && digits(frac)
        && int.bytes().chain(frac.bytes()).any(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && (mantissa.contains('.') || exponent.is_some()) && exponent_ok
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn unquoted_instance_ids_are_refused_not_converted() {
        let e = err(&device_with_id("0001"));
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0].devices[0].instanceID: instanceID 0001 must be a quoted \
             string (YAML readers may take it for a number): write instanceID: \"0001\" at line 5 \
             column 21"
        );
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: 007}\n");
        assert!(e.contains("instanceID 007 must be a quoted string"), "{e}");
        assert!(e.ends_with("at line 4 column 44"), "{e}");
        // Quoted, tagged as a string, a block scalar, or not a number: fine.
        for ok in [
            "\"0001\"",
            "'0001'",
            "sg-1",
            "0001a",
            "A1234",
            "x # 0001",
            "!!str 0001",
            "!!str &x 0001",
            "&y !!str 0002",
            "! 0003",
            "0x_",
            "\"\\x30001\"",
            "|-\n          0001",
        ] {
            assert!(
                parse(&device_with_id(ok)).is_ok(),
                "{ok}: {:?}",
                parse(&device_with_id(ok))
            );
        }
        // Whatever a YAML reader takes for a number, boolean or null, wherever it is written.
        for (bad, kind) in [
            ("7", "a number"),
            ("0x1F", "a number"),
            ("0o17", "a number"),
            ("1_000", "a number"),
            ("1.5", "a number"),
            ("1e3", "a number"),
            ("1:30", "a number"),
            ("1:30:00.5", "a number"),
            ("2001-12-14", "a timestamp"),
            (".inf", "a number"),
            ("99999999999999999999", "a number"),
            ("true", "a boolean"),
            ("yes", "a boolean"),
            ("Off", "a boolean"),
            ("&x 0001", "a number"),
            ("\n          0001", "a number"),
        ] {
            let e = err(&device_with_id(bad));
            assert!(
                e.contains(&format!("may take it for {kind})")),
                "{bad:?}: {e}"
            );
            assert!(
                e.contains("deviceMapping[0].devices[0].instanceID"),
                "{bad:?}: {e}"
            );
        }
        // An alias to a plain number is that number, found where the anchor is.
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: \"1\", env: {A: &n 0001}}\n      - {resourceName: a.io/x, instanceID: *n}\n");
        assert!(e.contains("instanceID 0001 must be a quoted string"), "{e}");
        // The old text scan refused these valid configs.
        let comment = "deviceMapping:\n  - hosts: [a]\n    devices:\n      # was: instanceID: 0001\n      - resourceName: a.io/x\n        instanceID: \"0001\"\n";
        assert!(parse(comment).is_ok());
        let block = "deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env:\n          NOTE: |\n            instanceID: 42\n";
        assert!(parse(block).is_ok(), "{:?}", parse(block));
    }
}
