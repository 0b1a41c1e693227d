//! Reading the workspace's own Rust sources, for the tests that check what the code says about
//! itself: the import graph between modules (no cycles, doors never import doors), which
//! modules name which types, and every SQL statement `common` sends.
//!
//! A light lexer, not a parser: it knows comments, string and character literals, and
//! `crate::` paths, which is all those checks read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's root (the folder of the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// A module of a crate: its path (`verbs::accept`; `` for the crate root) and its file.
#[derive(Debug, Clone)]
pub struct Module {
    pub path: String,
    pub file: PathBuf,
    /// The source without its `#[cfg(test)] mod tests` block and without comments.
    pub code: String,
}

/// Every module of the crate in folder `krate` (`ingress`, `common`, …), binaries left out.
pub fn modules(krate: &str) -> Vec<Module> {
    let src = workspace_root().join(krate).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            let rel = file.strip_prefix(&src).ok()?.with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.first().is_some_and(|p| p == "bin") {
                return None;
            }
            if parts
                .last()
                .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
            {
                parts.pop();
            }
            let raw = std::fs::read_to_string(&file).ok()?;
            Some(Module {
                path: parts.join("::"),
                file,
                code: strip_comments(&without_tests(&raw)),
            })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source up to its unit tests (`#[cfg(test)]` followed by `mod tests`).
pub fn without_tests(src: &str) -> String {
    let mut from = 0;
    while let Some(at) = src[from..].find("#[cfg(test)]") {
        let at = from + at;
        if src[at..]
            .trim_start_matches("#[cfg(test)]")
            .trim_start()
            .starts_with("mod tests")
        {
            return src[..at].to_owned();
        }
        from = at + 1;
    }
    src.to_owned()
}

/// The source with `//` and `/* */` comments blanked out (string literals kept).
pub fn strip_comments(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == '"' {
            let (literal, end) = read_string(&chars, i);
            out.push('"');
            out.push_str(&escape_back(&literal));
            out.push('"');
            i = end;
            continue;
        }
        if c == '\''
            && let Some(end) = char_literal_end(&chars, i)
        {
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Where a character literal starting at `start` ends, or `None` for a lifetime.
fn char_literal_end(chars: &[char], start: usize) -> Option<usize> {
    match (chars.get(start + 1), chars.get(start + 2)) {
        (Some('\\'), _) => {
            let mut i = start + 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            Some(i + 1)
        }
        (Some(_), Some('\'')) => Some(start + 3),
        _ => None,
    }
}

/// Reads the string literal opening at `start` (a `"`): its value, with escapes and `\`-newline
/// continuations applied, and the index after its closing quote.
fn read_string(chars: &[char], start: usize) -> (String, usize) {
    let mut value = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return (value, i + 1),
            '\\' => {
                match chars.get(i + 1) {
                    Some('\n') => {
                        i += 2;
                        while i < chars.len() && chars[i].is_whitespace() {
                            i += 1;
                        }
                        continue;
                    }
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('0') => value.push('\0'),
                    Some(other) => value.push(*other),
                    None => {}
                }
                i += 2;
            }
            other => {
                value.push(other);
                i += 1;
            }
        }
    }
    (value, i)
}

fn escape_back(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Every string literal of `code` (as produced by [`strip_comments`]), with its value.
pub fn string_literals(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '"' {
            let (literal, end) = read_string(&chars, i);
            out.push(literal);
            i = end;
        } else if chars[i] == '\''
            && let Some(end) = char_literal_end(&chars, i)
        {
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// `code` with the insides of its string literals blanked (same length), so that what reads
/// paths does not read text.
pub fn blank_strings(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '"' {
            let (_, end) = read_string(&chars, i);
            out.push('"');
            for c in &chars[i + 1..end.saturating_sub(1).max(i + 1)] {
                out.push(if *c == '\n' { '\n' } else { ' ' });
            }
            out.push('"');
            i = end;
        } else if chars[i] == '\''
            && let Some(end) = char_literal_end(&chars, i)
        {
            out.extend(std::iter::repeat_n(' ', end - i));
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The string values `code` names: its `const NAME: &str = "…";` items and its
/// `let name = "…";` bindings, by name.
pub fn string_bindings(code: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for keyword in ["const ", "let "] {
        let mut from = 0;
        while let Some(at) = code[from..].find(keyword) {
            let at = from + at;
            from = at + keyword.len();
            let boundary = code[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if !boundary {
                continue;
            }
            let after = &code[from..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let mut tail = after[name.len()..].trim_start();
            if let Some(typed) = tail.strip_prefix(": &str") {
                tail = typed.trim_start();
            } else if keyword == "const " {
                continue;
            }
            if let Some(value) = tail.strip_prefix('=')
                && value.trim_start().starts_with('"')
                && let Some(value) = literal_at(value.trim_start())
            {
                out.insert(name, value);
            }
        }
    }
    out
}

/// The value of the string literal `code` starts with, if it starts with one.
fn literal_at(code: &str) -> Option<String> {
    if !code.starts_with('"') {
        return None;
    }
    let chars: Vec<char> = code.chars().collect();
    Some(read_string(&chars, 0).0)
}

/// Every string literal of `code` that is the template of a `format!` (the first argument).
pub fn format_templates(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("format!(") {
        let start = from + at + "format!(".len();
        let rest = code[start..].trim_start();
        if let Some(template) = literal_at(rest) {
            out.push(template);
        }
        from = start;
    }
    out
}

/// The arguments, as written, of every call of function `name` in `code` (`name(` after a
/// non-identifier character: `super::name(` and `name(` both count; its definition does not).
pub fn call_arguments(code: &str, name: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let text: String = chars.iter().collect();
    let needle = format!("{name}(");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(&needle) {
        let at = from + at;
        from = at + needle.len();
        let before = text[..at].trim_end();
        let ident_before = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident_before || before.ends_with("fn") {
            continue;
        }
        // Byte offset to char index: the sources are ASCII where calls are.
        let mut i = text[..from].chars().count();
        let (mut depth, mut args, mut current) = (0usize, Vec::new(), String::new());
        while i < chars.len() {
            let c = chars[i];
            if c == '"' {
                let (_, end) = read_string(&chars, i);
                current.extend(&chars[i..end]);
                i = end;
                continue;
            }
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => break,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(current.trim().to_owned());
                    current.clear();
                    i += 1;
                    continue;
                }
                _ => {}
            }
            current.push(c);
            i += 1;
        }
        if !current.trim().is_empty() {
            args.push(current.trim().to_owned());
        }
        out.push(args);
    }
    out
}

/// The value of `expression` when it is a string literal, or the name of one of `bindings`.
pub fn string_value(expression: &str, bindings: &BTreeMap<String, String>) -> Option<String> {
    literal_at(expression.trim()).or_else(|| bindings.get(expression.trim()).cloned())
}

/// The modules of `modules` that `module` names through a `crate::` or `super::` path (itself,
/// its ancestors and its descendants left out): its imports, as the module graph sees them.
pub fn references(module: &Module, modules: &[Module]) -> BTreeSet<String> {
    let known: BTreeSet<&str> = modules.iter().map(|m| m.path.as_str()).collect();
    let mut out = BTreeSet::new();
    for path in paths(module) {
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        let best = (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|candidate| known.contains(candidate.as_str()));
        if let Some(best) = best {
            let related = best == module.path
                || module.path.starts_with(&format!("{best}::"))
                || best.starts_with(&format!("{}::", module.path))
                || best.is_empty();
            if !related {
                out.insert(best);
            }
        }
    }
    out
}

/// Every path `module` names from its crate's root, `crate::` and `super::` ones resolved and
/// `use` trees (`crate::{a::{b, c}, d}`) expanded.
pub fn paths(module: &Module) -> Vec<String> {
    let code = &blank_strings(&module.code);
    let mut out = Vec::new();
    let mut from = 0;
    while from < code.len() {
        let rest = &code[from..];
        let next = [rest.find("crate::"), rest.find("super::")]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = next else { break };
        let at = from + at;
        let boundary = code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        if !boundary {
            from = at + 1;
            continue;
        }
        let mut base: Vec<&str> = Vec::new();
        let mut i = at;
        if code[i..].starts_with("crate::") {
            i += "crate::".len();
        } else {
            base = module.path.split("::").filter(|p| !p.is_empty()).collect();
            while code[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
        }
        let (tree, end) = use_tree(code, i);
        for leaf in tree {
            let mut full = base.clone();
            full.extend(leaf.split("::").filter(|p| !p.is_empty() && *p != "self"));
            out.push(full.join("::"));
        }
        from = end.max(at + 1);
    }
    out
}

/// The paths of the use tree starting at `start` (`a::b`, `a::{b, c::{d}}`), and where it ends.
fn use_tree(code: &str, start: usize) -> (Vec<String>, usize) {
    let bytes = code.as_bytes();
    let mut i = start;
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
    {
        i += 1;
    }
    let prefix = code[start..i].trim_end_matches("::").to_owned();
    if i < bytes.len() && bytes[i] == b'{' && code[start..i].ends_with("::")
        || (i == start && bytes.get(i) == Some(&b'{'))
    {
        let mut leaves = Vec::new();
        i += 1;
        loop {
            while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'}' {
                i += 1;
                break;
            }
            let (inner, end) = use_tree(code, i);
            for leaf in inner {
                leaves.push(if prefix.is_empty() {
                    leaf
                } else {
                    format!("{prefix}::{leaf}")
                });
            }
            // Skip an `as name` or anything else up to the next separator.
            i = end;
            while i < bytes.len() && bytes[i] != b',' && bytes[i] != b'}' {
                i += 1;
            }
        }
        (leaves, i)
    } else {
        (vec![prefix], i.max(start + 1))
    }
}

/// The import cycles among `modules`: each a set of modules that reach one another.
pub fn cycles(modules: &[Module]) -> Vec<Vec<String>> {
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.path.clone(), references(m, modules)))
        .collect();
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(at) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for (module, reaches) in &reached {
        if !reaches.contains(*module) {
            continue;
        }
        let mut members: Vec<String> = reaches
            .iter()
            .filter(|other| reached.get(other).is_some_and(|r| r.contains(*module)))
            .cloned()
            .collect();
        members.sort();
        if !out.contains(&members) {
            out.push(members);
        }
    }
    out
}
