//! The house rules that keep the code easy to change, checked on the
//! source itself: layers of `unrm-user` import downward only, no function
//! outside tests grows past `MAX_FN_LINES`, and every file and design rule
//! a comment names exists.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// `unrm-user`'s top-level modules, lowest first, in the order of the data
/// path: a module may use only those before it.
const LAYERS: &[&str] = &[
    "clock", "access", "xattrs", "budget", "cgroups", "copy", "mounts", "probe", "handle", "anchors",
    "notify", "holders", "record", "pins", "protect", "ingest", "index", "store", "events", "policy", "api",
    "metrics", "daemon", "cli",
];

const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The file's text before its `#[cfg(test)]` module, if any.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// The top-level modules of the crate a file names through `crate::`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the names at depth 0.
            let (mut depth, mut name, mut expect_name) = (0, String::new(), true);
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect_name = true,
                    c if depth == 0 && expect_name && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ if depth == 0 && !name.is_empty() => {
                        found.insert(std::mem::take(&mut name));
                        expect_name = false;
                    }
                    _ => {}
                }
            }
            found.extend((!name.is_empty()).then_some(name));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn unrm_user_layers_import_downward_only() {
    let src = root().join("unrm-user/src");
    let mut wrong = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(level) = LAYERS.iter().position(|l| *l == top) else {
            assert!(top == "main", "{} is in no layer: add its module to LAYERS", relative.display());
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        for import in crate_imports(without_tests(&text)) {
            if import == top {
                continue;
            }
            match LAYERS.iter().position(|l| *l == import) {
                Some(other) if other < level => {}
                Some(_) => {
                    wrong.push(format!("{} uses crate::{import}, a layer above it", relative.display()))
                }
                None => {
                    wrong.push(format!("{} uses crate::{import}, which is in no layer", relative.display()))
                }
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

/// Functions (by the indentation of their `fn` line and closing brace)
/// longer than `MAX_FN_LINES`, outside test modules.
fn long_functions(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = without_tests(&text).lines().collect();
    let mut long = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = line.len() - code.len();
        let signature = code
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ")
            .trim_start_matches("extern \"C\" ");
        if !signature.starts_with("fn ") || code.ends_with(';') {
            continue;
        }
        let close = " ".repeat(indent) + "}";
        let Some(end) = lines[at..].iter().position(|l| l.starts_with(&close) && l.trim_end() == "}") else {
            continue;
        };
        if end + 1 > MAX_FN_LINES {
            long.push(format!("{}:{} is {} lines", file.display(), at + 1, end + 1));
        }
    }
    long
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let mut long = Vec::new();
    for dir in ["unrm-user/src", "unrm-ebpf/src", "unrm-abi/src", "xtask/src"] {
        for file in rust_files(&root().join(dir)) {
            long.extend(long_functions(&file));
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FN_LINES} lines:\n{}", long.join("\n"));
}

/// The text of a `//`, `///` or `//!` comment line.
fn comment_text(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix("//").map(|c| c.trim_start_matches(['/', '!']))
}

/// Every `something.rs` and `docs/….md` a comment or README names, and
/// every `docs/design.md: <rule>` a comment cites, exists.
#[test]
fn files_and_rules_named_in_comments_exist() {
    let root = root();
    let mut known = BTreeSet::new();
    let mut texts = Vec::new();
    for dir in ["unrm-user", "unrm-ebpf", "unrm-abi", "xtask", "tests"] {
        for file in rust_files(&root.join(dir)) {
            known.insert(file.file_name().unwrap().to_string_lossy().into_owned());
            texts.push((file.clone(), fs::read_to_string(&file).unwrap()));
        }
    }
    texts.push((root.join("README.md"), fs::read_to_string(root.join("README.md")).unwrap()));
    let design = fs::read_to_string(root.join("docs/design.md")).unwrap().to_lowercase();
    let mut missing = Vec::new();
    // This file spells out the patterns it looks for.
    texts.retain(|(file, _)| !file.ends_with("tests/tests/layout.rs"));
    for (file, text) in &texts {
        let comments: String = if file.extension().is_some_and(|e| e == "md") {
            text.clone()
        } else {
            text.lines().filter_map(comment_text).collect::<Vec<_>>().join("\n")
        };
        for word in comments.split(|c: char| c.is_whitespace() || "`()[],;".contains(c)) {
            let word = word.trim_end_matches(['.', ':']);
            let name = word.rsplit('/').next().unwrap_or(word);
            if word.ends_with(".rs") && name.len() > 3 && !known.contains(name) {
                missing.push(format!("{} names {word}", file.display()));
            }
            if word.starts_with("docs/") && word.ends_with(".md") && !root.join(word).exists() {
                missing.push(format!("{} names {word}", file.display()));
            }
        }
        for cite in comments.split("design.md:").skip(1) {
            let rule: String =
                cite.split([')', '.', ';']).next().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
            if !design.contains(&format!("### {}", rule.to_lowercase())) {
                missing.push(format!(
                    "{} cites the rule {rule:?}, not a heading of docs/design.md",
                    file.display()
                ));
            }
        }
        for gone in ["principle 1", "principle 2", "principle 3", "principle 4", "principle 5", "kernel.md"] {
            if comments.contains(gone) {
                missing
                    .push(format!("{} cites {gone:?}, which the repository does not have", file.display()));
            }
        }
    }
    assert!(missing.is_empty(), "named but missing:\n{}", missing.join("\n"));
}
