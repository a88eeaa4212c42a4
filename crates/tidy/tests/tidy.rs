//! The house rules, checked over the workspace's sources (see the crate's docs).

use std::fs;
use std::path::{Path, PathBuf};

use perennial_tidy::{
    LONG_FILE_MARK, MAX_LINES, import_cycles, module_graph, opens_with_module_doc, rust_files,
    too_long,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folders of Rust sources the rules cover: every crate's `src`, `tests`, `benches` and
/// `examples`, and the fuzz harness.
fn source_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(workspace().join("crates")).unwrap().flatten() {
        for sub in ["src", "tests", "benches", "examples"] {
            let dir = entry.path().join(sub);
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs.push(workspace().join("fuzz"));
    dirs.sort();
    dirs
}

fn relative(path: &Path) -> String {
    let root = workspace().canonicalize().unwrap();
    let path = path.canonicalize().unwrap();
    path.strip_prefix(&root)
        .unwrap_or(&path)
        .display()
        .to_string()
}

#[test]
fn every_source_file_opens_with_a_module_doc_line() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for dir in source_dirs() {
        for file in rust_files(&dir) {
            if file.components().any(|c| c.as_os_str() == "target") {
                continue;
            }
            checked += 1;
            if !opens_with_module_doc(&fs::read_to_string(&file).unwrap()) {
                missing.push(relative(&file));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} files found: is the workspace where it was?"
    );
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` line saying what they own:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_library_file_is_long_without_saying_why() {
    let mut long = Vec::new();
    for entry in fs::read_dir(workspace().join("crates")).unwrap().flatten() {
        for file in rust_files(&entry.path().join("src")) {
            if too_long(&fs::read_to_string(&file).unwrap()) {
                long.push(relative(&file));
            }
        }
    }
    assert!(
        long.is_empty(),
        "these library files are over {MAX_LINES} lines: split them by job, or say why they \
         are long in a comment that starts with {LONG_FILE_MARK:?}:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_modules_of_core_and_the_gateway_import_no_circle() {
    for krate in ["core", "gateway"] {
        let src = workspace().join("crates").join(krate).join("src");
        let graph = module_graph(&src);
        assert!(
            graph.len() > 5,
            "{krate}: only {} modules found",
            graph.len()
        );
        let cycles = import_cycles(&graph);
        assert!(
            cycles.is_empty(),
            "crates/{krate}: these modules import each other in a circle: {cycles:?}\n\
             the graph: {graph:#?}"
        );
    }
}

/// The workspace crates a crate's `Cargo.toml` names under `[dependencies]`, by folder name.
fn normal_dependencies(krate: &str) -> Vec<String> {
    let manifest = fs::read_to_string(workspace().join("crates").join(krate).join("Cargo.toml"))
        .unwrap_or_default();
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or("");
        if in_dependencies && (name == "perennial" || name.starts_with("perennial-")) {
            let folder = name.strip_prefix("perennial-").unwrap_or(name);
            found.push(folder.to_owned());
        }
    }
    found
}

#[test]
fn the_code_map_lists_each_crate_after_the_crates_it_depends_on() {
    let map = fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
    // Each `### ` heading names one or more crates as `crates/x`, in the map's order.
    let mut order: Vec<String> = Vec::new();
    for heading in map.lines().filter(|l| l.starts_with("### `crates/")) {
        for part in heading.split("`crates/").skip(1) {
            order.push(part.split('`').next().unwrap().to_owned());
        }
    }
    let mut unlisted = Vec::new();
    for entry in fs::read_dir(workspace().join("crates")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("Cargo.toml").is_file() && !order.contains(&name) {
            unlisted.push(name);
        }
    }
    assert!(
        unlisted.is_empty(),
        "ARCHITECTURE.md's Code Map does not list {unlisted:?}"
    );
    let mut misplaced = Vec::new();
    for (at, krate) in order.iter().enumerate() {
        for dependency in normal_dependencies(krate) {
            let listed = order.iter().position(|c| *c == dependency);
            if listed.is_none_or(|listed| listed >= at) {
                misplaced.push(format!("{krate} depends on {dependency}, listed after it"));
            }
        }
    }
    assert!(
        misplaced.is_empty(),
        "ARCHITECTURE.md's Code Map must list each crate after those it depends on:\n{}",
        misplaced.join("\n")
    );
}
