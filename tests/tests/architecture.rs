//! The module map of `docs/ARCHITECTURE.md` stays true: no import cycle between the top-level
//! modules of `eventbus/src` (a module is a file `NAME.rs` or a folder `NAME/`; an import is
//! any `crate::NAME` written in its files, comments included, as `../shared/tools/module-cycles`
//! counts them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read eventbus/src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names a text imports through `crate::NAME` and `crate::{NAME, NAME::..}`.
fn imported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        if i > 0 {
            let before = text.as_bytes()[i - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                names.insert(ident(part.trim_start()));
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names
}

#[test]
fn no_import_cycle_between_the_modules_of_eventbus_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../eventbus/src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read eventbus/src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a file name")
            .to_owned();
        if path.is_dir() {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            modules.insert(name, files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            modules.insert(name, vec![path]);
        }
    }
    assert!(
        modules.len() > 10 && modules.contains_key("bus") && modules.contains_key("backend"),
        "the modules of eventbus/src were found: {:?}",
        modules.keys()
    );
    let names: Vec<&String> = modules.keys().collect();
    let index = |n: &str| names.iter().position(|m| m.as_str() == n);
    let n = names.len();
    // reach[a][b]: a imports b, directly or through others.
    let mut reach = vec![vec![false; n]; n];
    for (a, files) in modules.values().enumerate() {
        for f in files {
            let text = std::fs::read_to_string(f).expect("read a source file");
            for b in imported_names(&text).iter().filter_map(|t| index(t)) {
                if a != b {
                    reach[a][b] = true;
                }
            }
        }
    }
    for k in 0..n {
        let through = reach[k].clone();
        for row in reach.iter_mut().filter(|row| row[k]) {
            for (to, reached) in row.iter_mut().zip(&through) {
                *to |= *reached;
            }
        }
    }
    let cycles: Vec<String> = (0..n)
        .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
        .filter(|&(a, b)| reach[a][b] && reach[b][a])
        .map(|(a, b)| format!("{} <-> {}", names[a], names[b]))
        .collect();
    assert!(
        cycles.is_empty(),
        "modules of eventbus/src that import each other (directly or through others); see docs/ARCHITECTURE.md for the layers: {cycles:#?}"
    );
}

#[test]
fn imports_are_read_like_the_module_cycles_tool() {
    let names =
        imported_names("use crate::a::X;\nuse crate::{b, c::Y};\n// see crate::d\nfoo_crate::e");
    assert_eq!(
        names,
        ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect()
    );
}
