//! A config in block style, cut into pieces serde_yaml can parse one at a time: serde_yaml holds
//! every event of what it parses before deserializing any (~100 bytes each, ~130,000 for a 1 MB
//! config of 10,000 devices), so a whole config cost ~12 MiB at once, the largest part of a
//! reload's peak. Parsed a group, or a run of [`DEVICES_A_PIECE`] devices, at a time, it costs
//! what the largest piece does.
//!
//! The cut is only an optimisation, and never changes what a config means:
//! - Only the layout every config example uses is cut: `deviceMapping:` alone on its line at
//!   column 0, then its items (`- ` at one column), each a mapping whose last key is `devices:`
//!   followed by its items. Anything else (a flow-style config, keys after `devices:`, a CR or
//!   another line break than LF, a directive or a document marker) is parsed whole: a document
//!   marker ends a piece's document cleanly even where the lexer misjudged a quote.
//! - A line is a cut only where a lexer finds it outside quotes and brackets. Inside a block,
//!   YAML puts every line of an item's content right of the item's dash, so a line starting `- `
//!   at the items' column is the next item. A lexer that misjudged a quote or bracket could only
//!   cut inside one, leaving a piece that ends in an open quote or bracket, which does not parse.
//! - Any piece that does not parse sends the whole config to the whole parse, so every error, and
//!   its line, is the whole parse's. The lines before the list are parsed too (for the parser's
//!   checks of every character, comments included). A config with an alias is parsed whole:
//!   serde_yaml bounds an alias's repetitions by a hundred times the events of what it parses,
//!   which pieces would loosen.

use std::ops::Range;

/// Devices parsed at a time: a piece of ~13 events a device stays ~170 KB of events.
pub(super) const DEVICES_A_PIECE: usize = 128;

/// One piece of a config: the lines before the list, a whole `deviceMapping` item, or one cut at
/// its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Piece {
    /// The lines before the first item (`deviceMapping:` and comments): parsed only for the
    /// parser's checks of every character (a control character in a comment is refused).
    Header(Range<usize>),
    /// An item parsed whole (a one-item list).
    Whole(Range<usize>),
    /// An item whose last key is `devices:`: the item up to its first device (`devices:` with
    /// nothing after it yet), then its devices, each range a list of some of them.
    Cut {
        head: Range<usize>,
        devices: Vec<Range<usize>>,
    },
}

/// A line: where it starts and ends (before its `\n`), its indentation, and whether the lexer
/// found it outside quotes and brackets at its start.
struct Line {
    start: usize,
    end: usize,
    indent: usize,
    clean: bool,
}

impl Line {
    fn text<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.start + self.indent..self.end]
    }
    /// Only spaces, or a comment.
    fn blank(&self, text: &[u8]) -> bool {
        let t = self.text(text);
        t.is_empty() || t[0] == b'#'
    }
    /// Starts with a dash followed by a space or nothing: a block sequence item.
    fn item(&self, text: &[u8]) -> bool {
        let t = self.text(text);
        t.first() == Some(&b'-') && matches!(t.get(1), None | Some(b' '))
    }
    /// Exactly `key:`, perhaps with spaces and a comment after it.
    fn key(&self, text: &[u8], key: &[u8]) -> bool {
        let t = self.text(text);
        let Some(rest) = t.strip_prefix(key).and_then(|r| r.strip_prefix(b":")) else {
            return false;
        };
        // `key:#x` is one plain scalar; a comment needs a space before it.
        rest.is_empty()
            || (matches!(rest[0], b' ' | b'\t')
                && matches!(rest.trim_ascii_start().first(), None | Some(b'#')))
    }
}

/// The lines of `text`, each marked clean or not by a lexer of quotes, brackets and comments.
fn lines(text: &[u8]) -> Vec<Line> {
    let (mut single, mut double, mut depth) = (false, false, 0usize);
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = text[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(text.len(), |i| start + i);
        let indent = text[start..end].iter().take_while(|b| **b == b' ').count();
        out.push(Line {
            start,
            end,
            indent,
            clean: !single && !double && depth == 0,
        });
        let mut prev = b' ';
        let mut i = start;
        while i < end {
            let b = text[i];
            if double {
                if b == b'\\' {
                    i += 1;
                } else if b == b'"' {
                    double = false;
                }
            } else if single {
                if b == b'\'' {
                    // `''` is a quote inside the scalar.
                    if text.get(i + 1) == Some(&b'\'') && i + 1 < end {
                        i += 1;
                    } else {
                        single = false;
                    }
                }
            } else {
                match b {
                    b'#' if matches!(prev, b' ' | b'\t') => break,
                    b'"' | b'\'' if b" \t[{,:-?".contains(&prev) => {
                        double = b == b'"';
                        single = b == b'\'';
                    }
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            prev = b;
            i += 1;
        }
        start = end + 1;
    }
    out
}

/// The pieces of `text`, or `None` where it is not in the layout cut (see the module doc).
pub(super) fn pieces(text: &[u8]) -> Option<Vec<Piece>> {
    // A CR, and the line breaks YAML takes besides LF (NEL, LS, PS), would hide a line from the
    // lexer.
    let breaks: [&[u8]; 4] = [
        b"\r",
        "\u{85}".as_bytes(),
        "\u{2028}".as_bytes(),
        "\u{2029}".as_bytes(),
    ];
    if breaks
        .iter()
        .any(|b| text.windows(b.len()).any(|w| w == *b))
    {
        return None;
    }
    let lines = lines(text);
    // A document marker or a directive ends a document cleanly wherever it is, even where the
    // lexer misjudged a quote: one inside a piece would end the piece's document, not the
    // config's, and the whole config is refused for holding two.
    let marker = |l: &Line| {
        let t = &text[l.start..l.end];
        t.starts_with(b"%")
            || [b"---", b"..."].iter().any(|m| {
                t.strip_prefix(*m)
                    .is_some_and(|rest| matches!(rest.first(), None | Some(b' ' | b'\t')))
            })
    };
    if lines.iter().any(marker) {
        return None;
    }
    // An alias expands in its piece against that piece's share of serde_yaml's repetition limit
    // (a hundred times its events), which is looser than the whole's: a config with an alias is
    // parsed whole. (A `*` that starts a token; one inside a value is not an alias.)
    let alias = text
        .windows(2)
        .any(|w| w[1] == b'*' && b" \t\n[{,:-".contains(&w[0]))
        || text.first() == Some(&b'*');
    if alias {
        return None;
    }
    // Before the list: blank lines and comments, then `deviceMapping:` at column 0.
    let at = content(text, &lines, 0)?;
    let key = &lines[at];
    if key.indent != 0 || !key.clean || !key.key(text, b"deviceMapping") {
        return None;
    }
    // The items: each from its dash to the next at the same column; past them, only blank lines.
    let starts = list(text, &lines, content(text, &lines, at + 1)?)?;
    let mut out = vec![Piece::Header(0..lines[starts[0]].start)];
    for (i, &first) in starts.iter().enumerate() {
        let last = starts.get(i + 1).map_or(lines.len(), |&n| n);
        out.push(item(text, &lines[first..last]));
    }
    Some(out)
}

/// The first line from `from` on that is not blank or a comment.
fn content(text: &[u8], lines: &[Line], from: usize) -> Option<usize> {
    (from..lines.len()).find(|&n| !lines[n].blank(text))
}

/// The items of the block list whose first line is `lines[first]`: each item's first line (a dash
/// at the list's column), to its end or the next. `None` unless that line is a clean item and
/// only blank lines, lines right of the list's column, or items stand from there on.
fn list(text: &[u8], lines: &[Line], first: usize) -> Option<Vec<usize>> {
    let column = lines[first].indent;
    if !lines[first].clean || !lines[first].item(text) {
        return None;
    }
    let mut starts = Vec::new();
    for (n, line) in lines.iter().enumerate().skip(first) {
        if line.blank(text) || line.indent > column || !line.clean {
            continue;
        }
        if line.indent == column && line.item(text) {
            starts.push(n);
        } else {
            return None;
        }
    }
    Some(starts)
}

/// One item of the list, cut at its devices where `devices:` is its last key.
fn item(text: &[u8], lines: &[Line]) -> Piece {
    let end = lines.last().map_or(0, |l| (l.end + 1).min(text.len()));
    let whole = Piece::Whole(lines[0].start..end);
    // The item's keys are at the column right of its dash (`- hosts:` puts `hosts` there).
    let dash = lines[0].indent;
    let Some(column) = lines[0].text(text)[1..]
        .iter()
        .position(|b| *b != b' ')
        .map(|p| dash + 1 + p)
    else {
        return whole;
    };
    let Some(key) = (lines.iter().skip(1))
        .position(|l| l.clean && l.indent == column && l.key(text, b"devices"))
        .map(|p| p + 1)
    else {
        return whole;
    };
    // Its devices: right of the keys or at their column, each from its dash to the next; nothing
    // else at their column or left of it.
    let Some(first) = content(text, lines, key + 1).filter(|&n| lines[n].indent >= column) else {
        return whole;
    };
    let Some(starts) = list(text, lines, first) else {
        return whole;
    };
    let ranges = (starts.chunks(DEVICES_A_PIECE).enumerate())
        .map(|(i, run)| {
            let next = starts.get((i + 1) * DEVICES_A_PIECE);
            lines[run[0]].start..next.map_or(end, |&n| lines[n].start)
        })
        .collect();
    Piece::Cut {
        head: lines[0].start..lines[first].start,
        devices: ranges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> Option<Vec<Vec<String>>> {
        let s = |r: &Range<usize>| text[r.clone()].to_owned();
        Some(
            pieces(text.as_bytes())?
                .iter()
                .skip(1)
                .map(|p| match p {
                    Piece::Header(r) | Piece::Whole(r) => vec![s(r)],
                    Piece::Cut { head, devices } => std::iter::once(s(head))
                        .chain(devices.iter().map(s))
                        .collect(),
                })
                .collect(),
        )
    }

    #[test]
    fn cuts_items_and_devices_where_devices_come_last() {
        let text = "# lab\ndeviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: '1'}\n      # between\n      - resourceName: a.io/x\n        instanceID: '2'\n  - devices: []\n    hosts: [b]\n";
        assert_eq!(
            shown(text).unwrap(),
            [
                vec![
                    "  - hosts: [a]\n    devices:\n".to_owned(),
                    "      - {resourceName: a.io/x, instanceID: '1'}\n      # between\n      - resourceName: a.io/x\n        instanceID: '2'\n".to_owned(),
                ],
                vec!["  - devices: []\n    hosts: [b]\n".to_owned()],
            ]
        );
        // Indentless lists, no final newline.
        let text = "deviceMapping:\n- hosts:\n  - a\n  devices:\n  - {resourceName: a.io/x, instanceID: '1'}";
        assert_eq!(
            shown(text).unwrap(),
            [vec![
                "- hosts:\n  - a\n  devices:\n".to_owned(),
                "  - {resourceName: a.io/x, instanceID: '1'}".to_owned(),
            ]]
        );
    }

    #[test]
    fn devices_are_cut_in_runs() {
        let mut text = String::from("deviceMapping:\n  - hosts: [a]\n    devices:\n");
        for i in 0..(DEVICES_A_PIECE * 2 + 1) {
            text.push_str(&format!(
                "      - {{resourceName: a.io/x, instanceID: '{i}'}}\n"
            ));
        }
        let cut = shown(&text).unwrap();
        let runs: Vec<usize> = cut[0][1..].iter().map(|r| r.lines().count()).collect();
        assert_eq!(runs, [DEVICES_A_PIECE, DEVICES_A_PIECE, 1]);
        assert_eq!(cut[0].concat(), text["deviceMapping:\n".len()..]);
    }

    /// What is not the layout cut, or where a line at an item's column is inside quotes or
    /// brackets, is not cut there.
    #[test]
    fn anything_else_is_whole() {
        for text in [
            "{deviceMapping: []}",
            "deviceMapping: []\n",
            "---\ndeviceMapping:\n  - hosts: [a]\n    devices: []\n",
            "deviceMapping:\n  - hosts: [a]\n    devices: []\nother: 1\n",
            "deviceMapping:\r\n  - hosts: [a]\r\n    devices: []\r\n",
            "deviceMapping:\n\t- hosts: [a]\n",
            "deviceMapping:\n  - hosts: [a]\n    devices: []\u{85}...\n  - hosts: [b]\n    devices: []\n",
            "deviceMapping:\n  - hosts: [a]\n    devices: []\u{2028}  - hosts: [b]\n    devices: []\n",
            "deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: '1', env: {A: b:'c}}\n...\n# '\n  - hosts: [b]\n    devices: []\n",
            "deviceMapping:\n  - hosts: [a]\n    devices: []\n--- # x\n",
            "deviceMapping:\n  - hosts: [a]\n    devices: []\n%YAML 1.2\n",
            "deviceMapping:\n  - hosts: [&h a]\n    devices: []\n  - hosts: [*h]\n    devices: []\n",
            "  deviceMapping:\n  - hosts: [a]\n",
            "deviceMapping: &a\n  - hosts: [a]\n",
        ] {
            assert_eq!(shown(text), None, "{text:?}");
        }
        // Keys after devices: the item whole.
        let text = "deviceMapping:\n  - devices:\n      - {resourceName: a.io/x, instanceID: '1'}\n    hosts: [a]\n";
        assert_eq!(shown(text).unwrap(), [vec![text[15..].to_owned()]]);
        // A quoted scalar or a flow list running over lines that look like items.
        for inner in ["\"a\n  - b\"", "'it''s\n  - b'", "[a,\n  - b]"] {
            let text = format!("deviceMapping:\n  - hosts: {inner}\n    devices: []\n  - hosts: [c]\n    devices: []\n");
            let cut = shown(&text).unwrap();
            assert_eq!(cut.len(), 2, "{text:?}: {cut:?}");
        }
    }
}
