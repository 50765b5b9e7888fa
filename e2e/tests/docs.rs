//! The documentation names only what exists: every relative link in the Markdown pages (and the heading it points
//! at), every repository path in backticks, and every test named as `module::test_name`. A page that keeps the name
//! of a file that moved, or of a test that was renamed, fails here instead of misleading its reader.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?
        .to_path_buf())
}

/// The pages a newcomer reads.
fn pages(root: &Path) -> Result<Vec<PathBuf>> {
    let mut pages: Vec<PathBuf> = [
        "README.md",
        "vendor/README.md",
        "loadtest/README.md",
        "mock-upstream/README.md",
        "dashboards/README.md",
    ]
    .iter()
    .map(|p| root.join(p))
    .filter(|p| p.is_file())
    .collect();
    for entry in std::fs::read_dir(root.join("docs")).context("docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// Text outside fenced code blocks (configuration and shell examples may name paths of the reader's machine).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// `[text](target)` targets.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

/// Spans between backticks.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

const TOP: [&str; 11] = [
    "relay/",
    "mock-upstream/",
    "testkit/",
    "loadtest/",
    "e2e/",
    "deploy/",
    "dashboards/",
    "docs/",
    "scripts/",
    "vendor/",
    ".ci/",
];

/// Every file of the workspace (not build output), as paths relative to the root.
fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if !matches!(name.to_str(), Some("target" | ".git")) {
                    walk(root, &path, out);
                }
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Names of every function in the workspace's Rust sources (tests included).
fn functions(root: &Path, files: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in files
        .iter()
        .filter(|f| f.ends_with(".rs") && !f.starts_with("vendor/"))
    {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        for part in text.split("fn ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// A file named by a short path (`server/io.rs`, `usage.rs`): some file of the workspace ends with it.
fn short_path_exists(files: &[String], short: &str) -> bool {
    files
        .iter()
        .any(|f| f == short || f.ends_with(&format!("/{short}")))
}

const EXTENSIONS: [&str; 12] = [
    ".rs", ".md", ".toml", ".sh", ".json", ".yml", ".yaml", ".conf", ".py", ".html", ".cfg",
    ".service",
];

#[test]
fn docs_exist() -> Result<()> {
    let root = root()?;
    let files = files(&root);
    let functions = functions(&root, &files);
    let mut missing = Vec::new();
    for page in pages(&root)? {
        let text = std::fs::read_to_string(&page)?;
        let shown = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        let dir = page.parent().context("no page dir")?;
        let body = prose(&text);
        for target in links(&body) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                missing.push(format!("{shown}: link to {target}: no such file"));
                continue;
            }
            if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let linked = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&linked).contains(anchor) {
                    missing.push(format!("{shown}: link to {target}: no such heading"));
                }
            }
        }
        for span in code_spans(&body) {
            let span = span.trim();
            let looks_like_path = TOP.iter().any(|t| span.starts_with(t))
                && !span.contains(|c: char| c.is_whitespace() || "*…<>{}$=".contains(c));
            if looks_like_path {
                // `relay/src/usage.rs:42` or `path/to/file.rs, "Section"`: the path part.
                let path = span.split([':', ',']).next().unwrap_or(span);
                if !root.join(path).exists() {
                    missing.push(format!("{shown}: `{span}`: no such path"));
                }
            }
            let short = span.split([':', ',']).next().unwrap_or(span);
            let looks_like_file = !looks_like_path
                && EXTENSIONS.iter().any(|e| short.ends_with(e))
                && short
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
                && !short.starts_with('.')
                // `/etc/ssegate/relay.toml`: a path on the reader's machine, not in the repository.
                && !short.starts_with('/');
            if looks_like_file && !short_path_exists(&files, short) {
                missing.push(format!("{shown}: `{span}`: no such file"));
            }
            // `it::usage::a_test_name`, `e2e::logs::…`: a test (or function) named by its path.
            if span.contains("::")
                && !span.contains(|c: char| c.is_whitespace() || "…(<{".contains(c))
            {
                let last = span.rsplit("::").next().unwrap_or("");
                let is_test_like = last
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && last.matches('_').count() >= 3;
                if is_test_like && !functions.contains(last) {
                    missing.push(format!("{shown}: `{span}`: no function {last}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the documentation names what does not exist:\n{}",
        missing.join("\n")
    );
    Ok(())
}
