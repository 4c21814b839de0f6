//! The README's backend table lists exactly the backends the facade knows:
//! a backend added to `backends()` without its row (or a row left behind
//! after one is removed) fails here.

use std::collections::BTreeSet;

/// (feature, URL column) of every row of the table under "## Backends and
/// feature flags"; `None` when there is no such table or a row has no
/// `feature` cell.
fn readme_rows(readme: &str) -> Option<Vec<(String, String)>> {
    let section = readme.split("## Backends and feature flags").nth(1)?;
    section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let feature = cells[0].trim_start_matches("| ").split('`').nth(1)?;
            Some((feature.to_owned(), cells.get(1).copied().unwrap_or_default().to_owned()))
        })
        .collect()
}

#[test]
fn readme_backend_table_matches_backends() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md next to the workspace");
    let rows = readme_rows(&readme).expect("a backend table whose rows each name a `feature`");
    let listed: BTreeSet<&str> = rows.iter().map(|(feature, _)| feature.as_str()).collect();
    let compiled: BTreeSet<&str> = registry::backends().iter().map(|b| b.name).collect();
    assert_eq!(listed, compiled, "README backend table vs registry::backends() (built with every backend)");
    for backend in registry::backends() {
        let (_, url) = rows.iter().find(|(feature, _)| feature == backend.name).expect("listed");
        let scheme = format!("`{}://", backend.schemes[0]);
        assert!(url.contains(&scheme), "the README row of `{}` shows no {scheme}… URL: {url}", backend.name);
    }
}
