//! The README's server and gateway snippets are the `readme_server` and
//! `readme_gateway` examples, which cargo builds with the tests: this checks
//! that the README shows them exactly, so a snippet that no longer compiles
//! fails the build instead of a new user.

use std::path::Path;

/// An example's code: the file without its leading `//!` header.
fn example_code(name: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.rs"));
    let text = std::fs::read_to_string(&path)?;
    Ok(text.lines().skip_while(|l| l.starts_with("//!")).skip_while(|l| l.is_empty()).collect::<Vec<_>>().join("\n"))
}

/// The README's ```rust blocks.
fn readme_blocks() -> anyhow::Result<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) if line.trim_start().starts_with("```rust") => current = Some(Vec::new()),
            (Some(block), true) => {
                blocks.push(block.join("\n"));
                current = None;
            }
            (Some(block), false) => block.push(line),
            _ => {}
        }
    }
    Ok(blocks)
}

fn assert_shown(example: &str) -> anyhow::Result<()> {
    let code = example_code(example)?;
    let blocks = readme_blocks()?;
    anyhow::ensure!(
        blocks.iter().any(|b| b.trim() == code.trim()),
        "README.md has no ```rust block equal to examples/{example}.rs (below its header); copy the example into the README:\n{code}"
    );
    Ok(())
}

#[test]
fn readme_shows_the_server_example_as_compiled() -> anyhow::Result<()> {
    assert_shown("readme_server")
}

#[test]
fn readme_shows_the_gateway_example_as_compiled() -> anyhow::Result<()> {
    assert_shown("readme_gateway")
}
