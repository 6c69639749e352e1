//! The docs stay true to the tree: every relative link and anchor of the README, the book
//! (`docs/src`, listed in its `SUMMARY.md`) and `docs/layout.md` resolves (a book page's link
//! stays inside `docs/src`, all that mdBook publishes); every `kvsqlite …`
//! command line shown in a shell block parses with the real command line (the binary run with
//! `KVSQLITE_PARSE_ONLY=1`); and every page with a Rust block is compiled as a doctest (listed in
//! `src/lib.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every Markdown file the checks read: the README, the changelog, the format and the book.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut out = vec![
        root.join("README.md"),
        root.join("CHANGELOG.md"),
        root.join("docs/layout.md"),
    ];
    let mut stack = vec![root.join("docs/src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read docs/src") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The file's text with mdBook's `{{#include PATH}}` lines replaced by the file they name.
fn text_of(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    raw.lines()
        .map(|l| match l.trim().strip_prefix("{{#include ") {
            Some(rest) => {
                let inc = rest.trim_end_matches("}}").trim();
                text_of(&path.parent().expect("a parent").join(inc))
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One fenced block: its info string and its lines.
struct Block {
    info: String,
    lines: Vec<String>,
}

/// The prose lines (outside fences) and the fenced blocks of a document.
fn split(text: &str) -> (Vec<String>, Vec<Block>) {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for l in text.lines() {
        match (&mut open, l.trim_start().strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    lines: Vec::new(),
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(b), None) => b.lines.push(l.to_string()),
            (None, None) => prose.push(l.to_string()),
        }
    }
    (prose, blocks)
}

/// A heading's anchor as GitHub and mdBook make it: lower case, letters, digits, `-` and `_`
/// kept, spaces to `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a document defines (its headings; a repeated one gets `-1`, `-2`, …).
fn anchors(path: &Path) -> BTreeSet<String> {
    let (prose, _) = split(&text_of(path));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for l in prose {
        let t = l.trim_start_matches('#');
        if t.len() < l.len() && t.starts_with(' ') {
            let s = slug(t);
            let n = seen.entry(s.clone()).or_insert(0);
            out.insert(if *n == 0 {
                s.clone()
            } else {
                format!("{s}-{n}")
            });
            *n += 1;
        }
    }
    out
}

/// The link targets of a prose line (inline code spans removed): `[text](target)` and images.
fn links(line: &str) -> Vec<String> {
    let mut no_code = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            no_code.push_str(part);
        }
    }
    let mut out = Vec::new();
    let mut rest = no_code.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_string());
        rest = &after[end..];
    }
    out
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let book = canonical(&Path::new(ROOT).join("docs/src"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let (prose, _) = split(&text_of(&doc));
        for line in prose {
            for target in links(&line) {
                if target.is_empty()
                    || target.starts_with("http://")
                    || target.starts_with("https://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let path = if file.is_empty() {
                    doc.clone()
                } else {
                    doc.parent().expect("a parent").join(file)
                };
                if !path.exists() {
                    broken.push(format!("{}: {target}: no such file", doc.display()));
                    continue;
                }
                // mdBook publishes only what is under docs/src: a book page's link that leaves
                // it is broken on the published site.
                if doc.starts_with(&book) && !canonical(&path).starts_with(&book) {
                    broken.push(format!(
                        "{}: {target}: outside docs/src (mdBook does not publish it)",
                        doc.display()
                    ));
                    continue;
                }
                if let Some(a) = anchor {
                    if !anchors(&path).contains(a) {
                        broken.push(format!("{}: {target}: no such anchor", doc.display()));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 100,
        "only {checked} links found: is the parser right?"
    );
}

#[test]
fn the_summary_lists_every_page_of_the_book_and_only_pages_that_exist() {
    let src = Path::new(ROOT).join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("SUMMARY.md");
    let listed: BTreeSet<PathBuf> = summary
        .lines()
        .flat_map(links)
        .map(|l| src.join(l))
        .collect();
    for p in &listed {
        assert!(
            p.exists(),
            "SUMMARY.md lists {} which does not exist",
            p.display()
        );
    }
    for doc in documents() {
        if doc.starts_with(&src) && doc.file_name().is_some_and(|n| n != "SUMMARY.md") {
            assert!(
                listed.contains(&doc),
                "{} is not in SUMMARY.md (mdBook would not show it)",
                doc.display()
            );
        }
    }
}

/// Shell words of a command line up to its first unquoted `|`, `>`, `<`, `&`, `;` or comment.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        q => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            '|' | '>' | '<' | '&' | ';' => break,
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The arguments after the program of a `kvsqlite` command line (`kvsqlite`, `$K` as the docs
/// name a built binary, a path ending in `/kvsqlite`, or `cargo run --release --`), with
/// leading `VAR=value` assignments skipped; `None` for any other line.
fn kvsqlite_args(line: &str) -> Option<Vec<String>> {
    let line = line.trim().trim_start_matches("$ ");
    let w = words(line);
    let mut i = w.iter().take_while(|x| {
        x.contains('=') && !x.starts_with('-') && x.chars().next().is_some_and(char::is_alphabetic)
    });
    let skip = i.by_ref().count();
    let w = &w[skip..];
    let first = w.first()?;
    if first == "kvsqlite" || first == "$K" || first.ends_with("/kvsqlite") {
        return Some(w[1..].to_vec());
    }
    if first == "cargo" && w.get(1).is_some_and(|x| x == "run") {
        let dd = w.iter().position(|x| x == "--")?;
        return Some(w[dd + 1..].to_vec());
    }
    None
}

/// True for a usage synopsis rather than a command (optional parts, repetition, alternatives).
fn synopsis(line: &str) -> bool {
    line.contains("[-") || line.contains("...") || line.contains('…') || line.contains("] ")
}

/// Runs the binary on `args` in parse-only mode: `Ok` when it parses, else clap's message.
fn parses(args: &[String]) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .env("KVSQLITE_PARSE_ONLY", "1")
        .env_remove("KVSQLITE_KV")
        .output()
        .expect("the kvsqlite binary runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_command_line_shown_parses_with_the_real_cli() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let (prose, blocks) = split(&text_of(&doc));
        // Whole command lines in shell blocks (a trailing `\` joins the next line).
        for b in blocks.iter().filter(|b| {
            let lang = b.info.split(',').next().unwrap_or("");
            ["sh", "bash", "shell", "console"].contains(&lang)
        }) {
            let mut joined = Vec::new();
            let mut cur = String::new();
            for l in &b.lines {
                match l.trim_end().strip_suffix('\\') {
                    Some(head) => cur.push_str(head),
                    None => {
                        cur.push_str(l);
                        joined.push(std::mem::take(&mut cur));
                    }
                }
            }
            for line in joined {
                let Some(args) = kvsqlite_args(&line) else {
                    continue;
                };
                if synopsis(&line) {
                    continue;
                }
                checked += 1;
                if let Err(e) = parses(&args) {
                    failures.push(format!("{}: {}\n{e}", doc.display(), line.trim()));
                }
            }
        }
        // Command lines in inline code (`kvsqlite bench commit`): what they name must exist, a
        // shortened line may leave required arguments out.
        for line in prose {
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 0 || synopsis(span) {
                    continue;
                }
                let Some(args) = kvsqlite_args(span) else {
                    continue;
                };
                if args.is_empty() {
                    continue;
                }
                checked += 1;
                if let Err(e) = parses(&args) {
                    // A placeholder (`SHELL`, `BOOKMARK`) stands for a value the reader picks.
                    let placeholder = args.iter().any(|a| {
                        a.len() > 1
                            && a.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                            && e.contains(&format!("'{a}'"))
                    });
                    let shortened = e.contains("required arguments were not provided")
                        || (e.starts_with("Usage:") || !e.contains("error:"));
                    if !placeholder && !shortened {
                        failures.push(format!("{}: `{span}`\n{e}", doc.display()));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "command lines that do not parse:\n{}",
        failures.join("\n")
    );
    assert!(checked > 20, "only {checked} command lines found");
}

#[test]
fn every_page_with_rust_blocks_is_compiled_as_a_doctest() {
    let lib = std::fs::read_to_string(Path::new(ROOT).join("src/lib.rs")).expect("src/lib.rs");
    for doc in documents() {
        let (_, blocks) = split(&text_of(&doc));
        let runs = blocks.iter().any(|b| {
            let mut parts = b.info.split(',');
            parts.next() == Some("rust") && !parts.any(|p| p == "ignore")
        });
        if !runs {
            continue;
        }
        let rel = doc
            .strip_prefix(ROOT)
            .expect("under the crate")
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        assert!(
            lib.contains(&format!("include_str!(\"../{rel}\")")),
            "{rel} has Rust blocks that no doctest compiles: add it to src/lib.rs"
        );
    }
}

#[test]
fn the_word_splitter_and_the_program_finder_read_shell_lines() {
    assert_eq!(
        words("kvsqlite --kv 'a b' run \"x\\\"y\" f.sql # comment"),
        ["kvsqlite", "--kv", "a b", "run", "x\"y", "f.sql"]
    );
    assert_eq!(words("kvsqlite bench | tee out"), ["kvsqlite", "bench"]);
    assert_eq!(
        kvsqlite_args("RUST_LOG=kvsqlite=debug cargo run --release -- run a.sql"),
        Some(vec!["run".to_string(), "a.sql".to_string()])
    );
    assert_eq!(kvsqlite_args("curl -s localhost"), None);
    assert!(parses(&[
        "--kv".into(),
        "memory:".into(),
        "run".into(),
        "x.sql".into()
    ])
    .is_ok());
    let e = parses(&["bench".into(), "no-such".into()]).expect_err("an unknown subcommand");
    assert!(e.contains("no-such"), "{e}");
}
