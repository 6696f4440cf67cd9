//! Finding the workspace binaries the end-to-end tests run, and refusing a
//! stale one: a binary older than any source file it was built from (as
//! cargo's own dep-info next to it lists them) would test yesterday's code.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Where cargo put the workspace binary `name` (`target/<profile>/`).
///
/// # Panics
/// When it is missing, or older than one of its sources: run
/// `scripts/test.sh`, or `cargo build --workspace --all-targets` before
/// `cargo test -p shop-testkit`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {HINT}", path.display()));
    if let Some(newer) = newer_source(&path, built) {
        panic!(
            "{} is stale: {} changed after it was built; {HINT}",
            path.display(),
            newer.display()
        );
    }
    path
}

const HINT: &str = "run scripts/test.sh, or `cargo build --workspace --all-targets` before `cargo test -p shop-testkit`";

/// The first source of `binary` (from `<binary>.d`) modified after
/// `built`, or missing.
fn newer_source(binary: &Path, built: SystemTime) -> Option<PathBuf> {
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).ok()?;
    sources(&dep_info).into_iter().find(|source| {
        std::fs::metadata(source)
            .and_then(|m| m.modified())
            .map_or(true, |modified| modified > built)
    })
}

/// The prerequisites of a Makefile-style dep-info file (`target: a b\ c`).
fn sources(dep_info: &str) -> Vec<PathBuf> {
    let Some((_, prerequisites)) = dep_info.lines().next().and_then(|l| l.split_once(": ")) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = prerequisites.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_prerequisites_are_split_on_unescaped_spaces() {
        let info = "/t/bin: /src/a.rs /src/with\\ space.rs /src/b.rs\n\n/src/a.rs:\n";
        assert_eq!(
            sources(info),
            vec![
                PathBuf::from("/src/a.rs"),
                PathBuf::from("/src/with space.rs"),
                PathBuf::from("/src/b.rs")
            ]
        );
    }

    #[test]
    fn a_source_newer_than_the_binary_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("main.rs");
        std::fs::write(&source, "fn main() {}").unwrap();
        let binary = dir.path().join("app");
        std::fs::write(
            binary.with_extension("d"),
            format!("{}: {}\n", binary.display(), source.display()),
        )
        .unwrap();
        let modified = std::fs::metadata(&source).unwrap().modified().unwrap();
        let before = modified - std::time::Duration::from_secs(60);
        let after = modified + std::time::Duration::from_secs(60);
        assert_eq!(newer_source(&binary, before), Some(source.clone()));
        assert_eq!(newer_source(&binary, after), None);
        std::fs::remove_file(&source).unwrap();
        assert_eq!(
            newer_source(&binary, after),
            Some(source),
            "a vanished source means a stale binary"
        );
    }
}
