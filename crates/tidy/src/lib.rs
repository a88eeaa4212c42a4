//! The workspace's house rules, read from the sources as text and checked by this crate's
//! test (`cargo test -p perennial-tidy`):
//!
//! - every Rust source file opens with a `//!` line saying what it owns;
//! - no library source file is longer than [`MAX_LINES`] lines unless it says why, in a
//!   comment that starts with [`LONG_FILE_MARK`];
//! - the modules of a crate do not import each other in a circle ([`import_cycles`]).
//!
//! Why: a newcomer reads a file's first line to know what it is for, reads a module in one
//! sitting, and can read a crate bottom-up, each module after the ones it uses.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest a library source file may be without saying why.
pub const MAX_LINES: usize = 800;

/// How a long file says why it is long: a comment line that starts with this.
pub const LONG_FILE_MARK: &str = "// Long file: ";

/// Every `.rs` file below `dir`, sorted.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Whether the file's first line is a module doc line (`//!`).
pub fn opens_with_module_doc(source: &str) -> bool {
    source.lines().next().is_some_and(|l| l.starts_with("//!"))
}

/// Whether the file is over [`MAX_LINES`] lines without a [`LONG_FILE_MARK`] comment.
pub fn too_long(source: &str) -> bool {
    source.lines().count() > MAX_LINES
        && !source
            .lines()
            .any(|l| l.trim_start().starts_with(LONG_FILE_MARK))
}

/// The module graph of a crate's sources in `src`: for each top-level module (a file
/// `src/x.rs` or a folder `src/x/`), the top-level modules it names through `crate::`, either
/// directly (`crate::x::…`) or through a name the crate root re-exports (`crate::Name`, where
/// `lib.rs` says `pub use x::Name`). Test modules (`#[cfg(test)] mod tests`) are left out.
pub fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let root = fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let exported = root_exports(&strip_comments(&root));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Ok(relative) = file.strip_prefix(src) else {
            continue;
        };
        let Some(first) = relative.components().next() else {
            continue;
        };
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let source = fs::read_to_string(&file).unwrap_or_default();
        let code = without_tests(&strip_comments(&source));
        let uses = graph.entry(module.clone()).or_default();
        for path in crate_paths(&code) {
            let Some(head) = path.first() else {
                continue;
            };
            let target = exported.get(head).cloned().unwrap_or_else(|| head.clone());
            if target != module {
                uses.insert(target);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    graph
}

/// The circles in a module graph: each a list of modules that reach one another, sorted.
pub fn import_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one circle when each reaches the other.
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = graph.get(from).into_iter().flatten().collect();
        while let Some(m) = stack.pop() {
            if seen.insert(m.clone()) {
                stack.extend(graph.get(m).into_iter().flatten());
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut cycles: Vec<Vec<String>> = Vec::new();
    let mut placed = BTreeSet::new();
    for (m, from_m) in &reaches {
        if placed.contains(*m) || !from_m.contains(*m) {
            continue;
        }
        let circle: Vec<String> = from_m
            .iter()
            .filter(|other| reaches.get(other).is_some_and(|r| r.contains(*m)))
            .cloned()
            .collect();
        placed.extend(circle.iter().cloned());
        cycles.push(circle);
    }
    cycles
}

/// The source without `//` and `/* */` comments (doc comments included) and without the
/// contents of string literals, so that what is left is code.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The code before a `#[cfg(test)]` item: tests may use anything.
fn without_tests(code: &str) -> String {
    match code.find("#[cfg(test)]") {
        Some(at) => code[..at].to_owned(),
        None => code.to_owned(),
    }
}

/// Every path that starts with `crate::` in the code, as its segments after `crate`, with
/// `use crate::{a, b::c}` groups expanded (one path per leaf).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let (tree, used) = path_tree(rest);
        rest = &rest[used..];
        expand(&tree, &mut Vec::new(), &mut paths);
    }
    paths
}

/// A path or a `{…}` group, as written after `crate::`.
enum Tree {
    Path(Vec<String>, Option<Vec<Tree>>),
}

/// Reads a path tree from the start of `text`; returns it and the bytes read.
fn path_tree(text: &str) -> (Tree, usize) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut segments = Vec::new();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            i += 1;
            let mut group = Vec::new();
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    i += 1;
                    break;
                }
                let (tree, used) = path_tree(&text[i..]);
                group.push(tree);
                i += used.max(1);
            }
            return (Tree::Path(segments, Some(group)), i);
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if start == i {
            return (Tree::Path(segments, None), i);
        }
        segments.push(text[start..i].to_owned());
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            // `as` renames and anything else end the path.
            return (Tree::Path(segments, None), i);
        }
    }
}

fn expand(tree: &Tree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Tree::Path(segments, group) = tree;
    let depth = prefix.len();
    prefix.extend(segments.iter().cloned());
    match group {
        None => out.push(prefix.clone()),
        Some(group) => {
            for tree in group {
                expand(tree, prefix, out);
            }
        }
    }
    prefix.truncate(depth);
}

/// What the crate root re-exports: each name, with the module it comes from.
fn root_exports(code: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut rest = code;
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        let (tree, used) = path_tree(rest);
        rest = &rest[used..];
        let mut paths = Vec::new();
        expand(&tree, &mut Vec::new(), &mut paths);
        for path in paths {
            if let (Some(module), Some(name)) = (path.first(), path.last())
                && path.len() > 1
            {
                names.insert(name.clone(), module.clone());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            g.entry((*from).into()).or_default().insert((*to).into());
            g.entry((*to).into()).or_default();
        }
        g
    }

    #[test]
    fn use_groups_are_expanded_and_comments_and_strings_ignored() {
        let code = strip_comments(
            "use crate::{a::X, b, c::{D, e::F}};\n// crate::commented\n\
             let s = \"crate::quoted\"; let y = crate::g::h(); mycrate::not_ours();",
        );
        let heads: Vec<String> = crate_paths(&code)
            .into_iter()
            .map(|p| p[0].clone())
            .collect();
        assert_eq!(heads, ["a", "b", "c", "c", "g"]);
    }

    #[test]
    fn root_exports_map_names_to_their_modules() {
        let exports =
            root_exports("pub use runtime::{Runtime, Stats};\npub use entity_ref::EntityRef;");
        assert_eq!(exports.get("Stats").map(String::as_str), Some("runtime"));
        assert_eq!(
            exports.get("EntityRef").map(String::as_str),
            Some("entity_ref")
        );
    }

    #[test]
    fn circles_are_found_and_layers_are_not() {
        let layered = graph(&[
            ("runtime", "entity"),
            ("entity", "engine"),
            ("runtime", "engine"),
        ]);
        assert!(import_cycles(&layered).is_empty());
        let tangled = graph(&[
            ("kind", "entity"),
            ("entity", "journal"),
            ("journal", "kind"),
            ("a", "b"),
        ]);
        assert_eq!(import_cycles(&tangled), [vec!["entity", "journal", "kind"]]);
    }

    #[test]
    fn a_long_file_must_say_why() {
        let long = "//! x\n".to_owned() + &"fn f() {}\n".repeat(MAX_LINES);
        assert!(too_long(&long));
        assert!(!too_long(&format!("{long}{LONG_FILE_MARK}it is a table\n")));
        assert!(opens_with_module_doc(&long));
        assert!(!opens_with_module_doc("use std::fs;\n"));
    }
}
