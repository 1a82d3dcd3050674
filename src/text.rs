//! Messages shown to people (log lines, Events, `spookd check`, /status) are built from hostile
//! text: a config's values, the API server's answers. Each is cut here to a bounded length, so a
//! 900 KB instanceID is a line that says how much was cut, not a 900 KB line.

use std::borrow::Cow;
use std::fmt;

/// The longest message spookd shows whole; an Event's note takes as much.
pub const MAX_MESSAGE: usize = 1024;

/// The longest log line's message. Longer than [`MAX_MESSAGE`]: a log line may list a resource's
/// devices, and values quoted in messages are cut to that already.
pub const MAX_LOG_LINE: usize = 8192;

/// `text` whole if it fits `max` bytes; else its head and its tail with the number of bytes of
/// `text` cut between them, at most `max` bytes in all (or the marker alone, about 40 bytes, for
/// a `max` below that). The head keeps
/// what a message starts with (the file, the field's path, the rule) and the tail its end (the
/// line and column), so a cut inside a quoted value loses only the value's middle.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // Room for the marker at the longest it gets (usize::MAX bytes).
    let marker_room = " …[ bytes cut]… ".len() + 20;
    let room = max.saturating_sub(marker_room);
    let mut head = room / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (room - room / 2);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    let cut = tail - head;
    Cow::Owned(format!(
        "{} …[{cut} bytes cut]… {}",
        &text[..head],
        &text[tail..]
    ))
}

/// [`cut`] of an owned `text`: itself when it fits, without a copy.
pub fn cut_owned(text: String, max: usize) -> String {
    match cut(&text, max) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cut) => cut,
    }
}

/// `text` as one line of at most `max` bytes (as [`cut`]): line breaks and other control
/// characters but tab written as escapes (`\n`, `\u{1b}`) first, so that no text can start a
/// log line of its own or move a terminal's cursor.
pub fn one_line(text: &str, max: usize) -> Cow<'_, str> {
    match escape(text, |c| c.is_control() && c != '\t') {
        Cow::Borrowed(text) => cut(text, max),
        Cow::Owned(escaped) => Cow::Owned(cut_owned(escaped, max)),
    }
}

/// `text` with each character `control` picks written as its escape (`\n`, `\u{1b}`).
pub fn escape(text: &str, control: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if control(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// Displays `T` cut to [`MAX_MESSAGE`] bytes: for error sources whose messages quote input.
pub struct Cut<T>(pub T);

impl<T: fmt::Display> fmt::Display for Cut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&cut(&self.0.to_string(), MAX_MESSAGE))
    }
}

/// Displays a string quoted and escaped as `{:?}` writes it, cut to [`MAX_MESSAGE`] bytes: for
/// an ID, a name or a line that came from outside.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Cut(format_args!("{:?}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_whole_and_long_text_keeps_both_ends_within_the_bound() {
        assert_eq!(cut("abc", 3), "abc");
        let long = format!("start {} end", "é".repeat(500_000));
        for max in [0, 1, 40, 63, 64, 100, MAX_MESSAGE] {
            let c = cut(&long, max);
            assert!(
                c.len() <= max.max(" …[1000011 bytes cut]… ".len()),
                "{max}: {}",
                c.len()
            );
            assert!(c.contains("bytes cut]…"), "{c}");
        }
        let c = cut(&long, MAX_MESSAGE);
        assert!(c.starts_with("start éé") && c.ends_with("éé end"), "{c}");
        let (head, rest) = c.split_once(" …[").unwrap();
        let (n, tail) = rest.split_once(" bytes cut]… ").unwrap();
        assert_eq!(
            head.len() + n.parse::<usize>().unwrap() + tail.len(),
            long.len()
        );
        assert!(long.starts_with(head) && long.ends_with(tail));
    }

    #[test]
    fn a_log_line_is_one_line_within_its_bound() {
        assert_eq!(one_line("plain", 100), "plain");
        assert_eq!(one_line("a\tb", 100), "a\tb");
        assert_eq!(
            one_line(
                "x\n[2026-12-02T00:00:00Z ERROR spookd] forged\r\u{1b}[2J",
                100
            ),
            "x\\n[2026-12-02T00:00:00Z ERROR spookd] forged\\r\\u{1b}[2J"
        );
        let hostile = "\n".repeat(1 << 20);
        let line = one_line(&hostile, MAX_LOG_LINE);
        assert!(
            line.len() <= MAX_LOG_LINE && !line.contains('\n'),
            "{}",
            line.len()
        );
        let wide = "é".repeat(1 << 20);
        let line = one_line(&wide, MAX_LOG_LINE);
        assert!(line.len() <= MAX_LOG_LINE && line.contains(" bytes cut]… "));
    }

    #[test]
    fn the_display_wrapper_cuts_what_it_renders() {
        let long = "x".repeat(10 * MAX_MESSAGE);
        assert_eq!(Cut(&long).to_string(), cut(&long, MAX_MESSAGE));
        assert_eq!(Cut("short").to_string(), "short");
        assert_eq!(Quoted("a\nb").to_string(), "\"a\\nb\"");
        assert_eq!(
            Quoted(&long).to_string(),
            cut(&format!("{long:?}"), MAX_MESSAGE)
        );
        assert_eq!(cut_owned("short".into(), 3), cut("short", 3));
        assert_eq!(cut_owned("abc".into(), 3), "abc");
    }
}
