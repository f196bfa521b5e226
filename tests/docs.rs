//! The operator's manual (`docs/`) stays true to the code: every message
//! the troubleshooting table quotes is one trustplane still prints, every
//! metric a page names is in the metric reference, and every link between
//! the pages (and from the README) points at a file that exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every file under `dir` whose name ends with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The backticked spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The first cell of every table row of `page` (not the header or the rule).
fn first_cells(page: &str) -> Vec<String> {
    page.lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split(" | ").next())
        .map(|cell| cell.trim_start_matches("| ").to_string())
        .collect()
}

#[test]
fn every_message_the_troubleshooting_table_quotes_is_printed_by_the_code() {
    let sources: String = files(&root().join("src"), ".rs")
        .iter()
        .map(|path| read(path))
        .collect();
    let page = read(&root().join("docs/troubleshooting.md"));
    let cells = first_cells(&page);
    assert!(
        cells.len() >= 20,
        "the troubleshooting tables lost rows: {cells:?}"
    );
    let missing: Vec<&str> = cells
        .iter()
        .flat_map(|cell| code_spans(cell))
        .filter(|message| !sources.contains(message))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md quotes messages no file in src/ prints any more: {missing:?}"
    );
}

#[test]
fn every_metric_a_page_names_is_in_the_metric_reference() {
    let reference = read(&root().join("docs/metrics.md"));
    let mut pages = files(&root().join("docs"), ".md");
    pages.extend(files(&root().join("docs"), ".yaml"));
    pages.push(root().join("README.md"));
    let mut unknown = BTreeSet::new();
    for page in &pages {
        let text = read(page);
        for (start, _) in text.match_indices("trustplane_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // A histogram's series carry suffixes the reference names once.
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            // A counter's family is declared without `_total` (`# TYPE`).
            let documented = [base.to_string(), name.clone(), format!("{name}_total")]
                .iter()
                .any(|known| reference.contains(&format!("`{known}`")));
            if !documented {
                unknown.insert(format!("{}: {name}", page.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics named in the docs but not in docs/metrics.md: {unknown:?}"
    );
}

#[test]
fn every_relative_link_in_the_docs_and_the_readme_points_at_a_file() {
    let mut pages = files(&root().join("docs"), ".md");
    pages.push(root().join("README.md"));
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(page);
        for (start, _) in text.match_indices("](") {
            let target: String = text[start + 2..]
                .chars()
                .take_while(|c| *c != ')')
                .collect();
            if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let dir = page.parent().unwrap();
            if !dir.join(file).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to missing files: {broken:?}");
}
