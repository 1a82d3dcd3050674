//! One parse's context, per thread: the text being parsed, for the leaf types' visitors, and the
//! alias budget (what its entries have cost so far), so an alias bomb stops while it expands.

use super::bounds::{MAX_DEVICE_ENTRIES, MAX_ENTRIES, MAX_TEXT_BYTES};

/// The text being parsed and what its entries have cost so far, for the leaf types' visitors.
///
/// serde's derived visitors pass no context down, and serde_yaml tells a visitor neither a
/// scalar's style nor its position: only that a string is borrowed from the input. The scope
/// keeps the input (one copy, small beside the parse) so a visitor can look at the bytes around a
/// borrowed scalar, and counts entries so an alias bomb stops at [`MAX_ENTRIES`] instead of
/// expanding first. Per thread: parses on other threads have their own.
pub(super) struct ParseScope {
    text: std::rc::Rc<[u8]>,
}

#[derive(Default)]
struct Scope {
    text: Option<std::rc::Rc<[u8]>>,
    entries: usize,
    devices: usize,
    text_bytes: usize,
}

thread_local! {
    static SCOPE: std::cell::RefCell<Scope> = std::cell::RefCell::new(Scope::default());
}

impl ParseScope {
    pub(super) fn enter(text: &[u8]) -> ParseScope {
        let text: std::rc::Rc<[u8]> = text.into();
        SCOPE.with(|s| {
            *s.borrow_mut() = Scope {
                text: Some(text.clone()),
                ..Scope::default()
            }
        });
        ParseScope { text }
    }

    pub(super) fn text(&self) -> &[u8] {
        &self.text
    }
}

impl Drop for ParseScope {
    fn drop(&mut self) {
        SCOPE.with(|s| *s.borrow_mut() = Scope::default());
    }
}

/// Counts one entry (and one device when `device`); the error once a bound is passed.
pub(super) fn spend(device: bool) -> Result<(), String> {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        s.entries += 1;
        s.devices += usize::from(device);
        if s.entries > MAX_ENTRIES {
            Err(format!(
                "the config expands to more than {MAX_ENTRIES} entries (mappings, hosts, devices \
                 and env keys; a YAML alias counts each time it is used)"
            ))
        } else if s.devices > MAX_DEVICE_ENTRIES {
            Err(format!(
                "the config expands to more than {MAX_DEVICE_ENTRIES} device entries (a YAML \
                 alias counts each time it is used)"
            ))
        } else {
            Ok(())
        }
    })
}

/// Counts `len` bytes of text kept from the config; the error once [`MAX_TEXT_BYTES`] is passed.
pub(super) fn spend_text(len: usize) -> Result<(), String> {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        s.text_bytes = s.text_bytes.saturating_add(len);
        if s.text_bytes > MAX_TEXT_BYTES {
            Err(format!(
                "the config expands to more than {MAX_TEXT_BYTES} bytes of names, IDs and env \
                 (a YAML alias counts each time it is used)"
            ))
        } else {
            Ok(())
        }
    })
}

/// The text being parsed on this thread (`None` outside a parse), for a visitor to look at the
/// bytes around a scalar serde_yaml lent it.
pub(super) fn with_text<R>(f: impl FnOnce(Option<&[u8]>) -> R) -> R {
    SCOPE.with(|s| f(s.borrow().text.as_deref()))
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn alias_expansion_is_bounded_while_parsing() {
        // 1,000 hosts and 1,000 devices behind aliases, used by 30,000 mappings: 931 KB that
        // expanded to 1.9 GB before the bound.
        let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        let devices: Vec<String> = (0..1000)
            .map(|i| format!("{{resourceName: a.io/x, instanceID: \"{i}\"}}"))
            .collect();
        let mut text = format!(
            "deviceMapping:\n- hosts: &H [{}]\n  devices: &D [{}]\n",
            hosts.join(", "),
            devices.join(", ")
        );
        // Within the token bound (a few hundred short lines), the expansion is what stops it.
        let small = text.clone() + &"- {hosts: *H, devices: *D}\n".repeat(200);
        let e = err(&small);
        assert!(e.contains("the config expands to more than"), "{e}");
        // The 931 KB: refused before parsing, by its density alone.
        while text.len() < 931_000 {
            text.push_str("- {hosts: *H, devices: *D}\n");
        }
        let e = err(&text);
        assert!(e.contains("more than 160000 structural tokens"), "{e}");
        // Env maps behind an alias count too.
        let env: Vec<String> = (0..100).map(|i| format!("K{i}: v")).collect();
        let mut text = format!(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"0\", env: &E {{{}}}}}\n",
            env.join(", ")
        );
        for i in 1..3000 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i}\", env: *E}}\n"
            ));
        }
        let e = err(&text);
        assert!(e.contains("more than 100000 entries"), "{e}");
        // One long value behind an alias, used over and over.
        let mut text = format!(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"0\", env: {{K: &V {}}}}}\n",
            "v".repeat(30_000)
        );
        for i in 1..400 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i}\", env: {{K: *V}}}}\n"
            ));
        }
        let e = err(&text);
        assert!(
            e.contains("more than 8388608 bytes of names, IDs and env"),
            "{e}"
        );
    }
}
