//! The docs kept honest where a machine can: README.md and `docs/*.md` against the real binary.
//!
//! - every flag and environment variable `spookd --help` prints is in `docs/cli.md`, each flag in
//!   a table row with its variable, default and range, and every flag that page's tables list is
//!   one the binary has;
//! - every relative link resolves to a file, and a `#anchor` to a heading of it (GitHub's slugs);
//! - every `yaml` block holding a top-level `deviceMapping:` is a config `spookd check` accepts,
//!   or, marked `<!-- invalid -->` on the line before, one it refuses.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{spookd_command, TempDir};

/// The marker before a config block that is invalid on purpose.
const INVALID: &str = "<!-- invalid -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "docs/ holds {} pages", docs.len());
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn name(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Whether `word` occurs in `text` with no name character (`[A-Za-z0-9_-]`) on either side:
/// `--dra` is not mentioned by `--dra-driver`.
fn mentions(text: &str, word: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

// ---- the command line ----

/// One option of `--help`: its flags, and the variable, default and range it prints.
#[derive(Debug)]
struct HelpOption {
    flags: Vec<String>,
    env: Option<String>,
    default: Option<String>,
    range: Option<(String, String)>,
}

fn help() -> String {
    let out = spookd_command().arg("--help").output().unwrap();
    assert!(out.status.success(), "spookd --help: {:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// The options of `--help`: a line starting `  -` and the lines indented under it.
fn options(help: &str) -> Vec<HelpOption> {
    let mut texts: Vec<String> = Vec::new();
    let mut open = false;
    for line in help.lines() {
        if line.starts_with("  -") {
            texts.push(line.trim().to_owned());
            open = true;
        } else if open && line.starts_with("    ") && !line.trim().is_empty() {
            let last = texts.last_mut().unwrap();
            last.push(' ');
            last.push_str(line.trim());
        } else {
            open = false;
        }
    }
    texts.iter().map(|t| option(t)).collect()
}

fn option(text: &str) -> HelpOption {
    let mut flags = Vec::new();
    for token in text.split_whitespace() {
        if token.starts_with('-') {
            flags.push(token.trim_end_matches(',').to_owned());
        } else if !token
            .chars()
            .all(|c| c.is_ascii_uppercase() || "/:_".contains(c))
        {
            // The placeholder (PATH, NAMESPACE/NAME, ADDR:PORT) is skipped; the help begins.
            break;
        }
    }
    let env = text
        .split('[')
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .map(|s| s.split('=').next().unwrap().to_owned())
        .find(|s| s.contains('_') && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    // `(default 30s; from 10ms to 1h)`, `(default: off)`.
    let parenthesis = text
        .split_once("(default")
        .map(|(_, rest)| rest.split(')').next().unwrap());
    let default = parenthesis.map(|p| {
        let p = p.trim_start_matches(':').trim_start();
        p.split(';').next().unwrap().trim().to_owned()
    });
    let range = parenthesis.and_then(|p| {
        let (_, range) = p.split_once("; from ")?;
        let (low, high) = range.split_once(" to ")?;
        Some((low.to_owned(), high.to_owned()))
    });
    HelpOption {
        flags,
        env,
        default,
        range,
    }
}

/// Every `--flag` token of a text.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-') {
            continue;
        }
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        if !name.is_empty() {
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

/// Every environment variable a text names: upper-case words with an underscore.
fn env_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.contains('_') && w.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|w| w.trim_end_matches('_').to_owned())
        .collect()
}

/// The rows of cli.md's tables whose first cell names flags: (the flags, the whole row).
fn flag_rows(cli: &str) -> Vec<(Vec<String>, String)> {
    cli.lines()
        .filter(|l| l.starts_with("| `-"))
        .map(|row| {
            let first = row.split('|').nth(1).unwrap();
            let flags = first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|code| code.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            (flags, row.to_owned())
        })
        .collect()
}

#[test]
fn every_flag_and_variable_of_the_help_is_in_cli_md() {
    let help = help();
    let cli = read(&root().join("docs/cli.md"));
    let options = options(&help);
    assert!(
        options.len() >= 25,
        "{} options read from --help",
        options.len()
    );
    let rows = flag_rows(&cli);
    for o in &options {
        let row = rows
            .iter()
            .find(|(flags, _)| o.flags.iter().all(|f| flags.contains(f)))
            .map(|(_, row)| row)
            .unwrap_or_else(|| panic!("docs/cli.md has no table row for {:?}", o.flags));
        if let Some(env) = &o.env {
            assert!(mentions(row, env), "docs/cli.md, {:?}: not {env}", o.flags);
        }
        if let Some(default) = &o.default {
            assert!(
                row.contains(default.as_str()),
                "docs/cli.md, {:?}: not the default {default:?}",
                o.flags
            );
        }
        if let Some((low, high)) = &o.range {
            assert!(
                row.contains(&format!("from {low} to {high}")),
                "docs/cli.md, {:?}: not the range from {low} to {high}",
                o.flags
            );
        }
    }
    let flags = flags_in(&help);
    assert!(flags.len() >= 25, "{} flags read from --help", flags.len());
    for flag in &flags {
        assert!(mentions(&cli, flag), "docs/cli.md does not mention {flag}");
    }
    let vars = env_in(&help);
    assert!(
        vars.len() >= 25,
        "{} variables read from --help",
        vars.len()
    );
    for var in &vars {
        assert!(mentions(&cli, var), "docs/cli.md does not mention {var}");
    }
    // And nothing the binary no longer has.
    for (row_flags, row) in &rows {
        for flag in row_flags {
            assert!(
                mentions(&help, flag),
                "docs/cli.md documents {flag}, which spookd --help does not print: {row}"
            );
        }
    }
}

// ---- links ----

/// The text outside fenced code blocks, line by line (`None` for a line inside one).
fn prose(text: &str) -> Vec<Option<&str>> {
    let mut fenced = false;
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                None
            } else if fenced {
                None
            } else {
                Some(line)
            }
        })
        .collect()
}

/// A line without its inline code spans.
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// GitHub's anchor for a heading: lower-cased, links reduced to their text, every character but
/// letters, digits, `-`, `_` and spaces dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(i) = rest.find("](") {
        let Some(end) = rest[i..].find(')') else {
            break;
        };
        text.push_str(&rest[..i]);
        rest = &rest[i + end + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings, duplicates numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for line in prose(text).into_iter().flatten() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    anchors
}

/// The targets of a page's inline links, outside code, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (n, line) in prose(text).into_iter().enumerate() {
        let Some(line) = line else { continue };
        let line = without_code(line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            links.push((n + 1, rest[..end].trim().to_owned()));
            rest = &rest[end..];
        }
    }
    links
}

/// What is wrong with each relative link of `page`, if anything.
fn broken_links(page: &Path) -> Vec<String> {
    let text = read(page);
    let dir = page.parent().unwrap();
    let mut broken = Vec::new();
    for (line, target) in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let file = if path.is_empty() {
            page.to_path_buf()
        } else {
            dir.join(path)
        };
        let at = format!("{}:{line}: ({target})", name(page));
        if !file.exists() {
            broken.push(format!("{at}: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            if file.extension().is_some_and(|e| e == "md")
                && !anchors(&read(&file)).contains(anchor)
            {
                broken.push(format!("{at}: no heading #{anchor} in {}", name(&file)));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut count = 0;
    for page in pages() {
        count += links(&read(&page)).len();
        broken.extend(broken_links(&page));
    }
    assert!(count >= 100, "{count} links read");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("`spookd status`"), "spookd-status");
    assert_eq!(
        slug("DRA driver (Kubernetes 1.34 or later)"),
        "dra-driver-kubernetes-134-or-later"
    );
    assert_eq!(
        slug("What the DaemonSet asks for, and why"),
        "what-the-daemonset-asks-for-and-why"
    );
    let page = "# A\n## B\n```\n## not a heading\n```\n## B\n";
    let want: BTreeSet<String> = ["a", "b", "b-1"].map(String::from).into();
    assert_eq!(anchors(page), want);
    // A link whose target or anchor is missing is reported.
    let tmp = TempDir::new();
    let page = tmp.join("page.md");
    fs::write(
        &page,
        "# Here\n[ok](#here) [gone](#there) [none](nothing.md) `[code](skipped.md)`\n",
    )
    .unwrap();
    let broken = broken_links(&page);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("no heading #there"), "{broken:?}");
    assert!(broken[1].contains("no such file"), "{broken:?}");
}

// ---- configs ----

/// A `yaml` block of a page: where it starts, whether it is marked invalid, its text.
struct Block {
    line: usize,
    invalid: bool,
    text: String,
}

fn yaml_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - fence.len();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
            i += 1;
        }
        i += 1;
        if fence.trim() != "```yaml" {
            continue;
        }
        let before = lines[..start].iter().rev().find(|l| !l.trim().is_empty());
        blocks.push(Block {
            line: start + 1,
            invalid: before.is_some_and(|l| l.trim() == INVALID),
            text: body.join("\n") + "\n",
        });
    }
    blocks
}

#[test]
fn every_config_shown_is_one_spookd_check_takes_or_refuses_as_marked() {
    let tmp = TempDir::new();
    let (mut valid, mut invalid) = (0, 0);
    for page in pages() {
        for (n, block) in yaml_blocks(&read(&page)).into_iter().enumerate() {
            let at = format!("{}:{}", name(&page), block.line);
            if !block.text.lines().any(|l| l.starts_with("deviceMapping:")) {
                assert!(!block.invalid, "{at}: marked invalid, but holds no config");
                continue;
            }
            let file = tmp.join(&format!("{}-{n}.yaml", name(&page).replace('/', "-")));
            fs::write(&file, &block.text).unwrap();
            let out = spookd_command().arg("check").arg(&file).output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            if block.invalid {
                invalid += 1;
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{at}: marked invalid, but spookd check took it"
                );
                assert!(said.contains("invalid config"), "{at}: {said}");
            } else {
                valid += 1;
                assert!(
                    out.status.success(),
                    "{at}: spookd check refused it: {said}"
                );
            }
        }
    }
    assert!(valid >= 3, "{valid} valid configs checked");
    assert!(invalid >= 1, "{invalid} invalid configs checked");
}
