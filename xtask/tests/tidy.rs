//! Tidy checks: the architecture invariants of `docs/ARCHITECTURE.md`, enforced
//! from `cargo metadata` and the manifests, so a change that breaks one fails
//! `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

struct Graph {
    /// package id -> name
    names: BTreeMap<String, String>,
    /// package id -> ids of its normal (non-dev, non-build) dependencies
    normal: BTreeMap<String, Vec<String>>,
    /// name -> id for workspace members
    members: BTreeMap<String, String>,
    /// name -> manifest path for workspace members
    manifests: BTreeMap<String, PathBuf>,
}

fn graph() -> Graph {
    let m = metadata();
    let mut names = BTreeMap::new();
    let mut manifests_by_id = BTreeMap::new();
    for p in m["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap().to_string();
        names.insert(id.clone(), p["name"].as_str().unwrap().to_string());
        manifests_by_id.insert(id, PathBuf::from(p["manifest_path"].as_str().unwrap()));
    }
    let mut members = BTreeMap::new();
    let mut manifests = BTreeMap::new();
    for id in m["workspace_members"].as_array().unwrap() {
        let id = id.as_str().unwrap().to_string();
        members.insert(names[&id].clone(), id.clone());
        manifests.insert(names[&id].clone(), manifests_by_id[&id].clone());
    }
    let mut normal = BTreeMap::new();
    for node in m["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_string())
            .collect();
        normal.insert(id, deps);
    }
    Graph {
        names,
        normal,
        members,
        manifests,
    }
}

impl Graph {
    /// Names of every package reachable from `name` through normal dependencies.
    fn closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![self.members[name].clone()];
        while let Some(id) = stack.pop() {
            for d in self.normal.get(&id).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen.into_iter().map(|id| self.names[&id].clone()).collect()
    }

    fn direct(&self, name: &str) -> BTreeSet<String> {
        self.normal[&self.members[name]]
            .iter()
            .map(|id| self.names[id].clone())
            .collect()
    }
}

const CRATES: &[&str] = &[
    "zs-wire",
    "zs-crypto",
    "zs-io",
    "zs-io-epoll",
    "zs-io-iocp",
    "zs-io-kqueue",
    "zs-io-tokio",
    "zs-p2pvm",
    "zs-core",
    "zs-xnat",
    "zs-db",
    "zs-expr",
    "zserver",
    "zs-cli",
    "zs-tx",
    "zs-services",
    "zs-registry",
    "zs-web",
    "zs-db-service",
    "zs-secure",
    "zs-legacy",
    "zs-punch",
    "zs-hash",
];

const OS_BACKENDS: &[&str] = &["zs-io-epoll", "zs-io-iocp", "zs-io-kqueue"];

#[test]
fn every_crate_of_the_mission_exists() {
    let g = graph();
    for c in CRATES {
        assert!(
            g.members.contains_key(*c),
            "crate {c} is missing from the workspace"
        );
    }
}

#[test]
fn protocol_logic_depends_on_no_transport_and_no_runtime() {
    // Sans-IO crates and the seam: no runtime, no event loop, no backend.
    let g = graph();
    let forbidden = [
        "tokio",
        "mio",
        "async-std",
        "smol",
        "zs-io-epoll",
        "zs-io-iocp",
        "zs-io-kqueue",
        "zs-io-tokio",
    ];
    for c in [
        "zs-wire",
        "zs-crypto",
        "zs-p2pvm",
        "zs-expr",
        "zs-io",
        "zs-core",
        "zs-secure",
        "zs-hash",
    ] {
        let deps = g.closure(c);
        for f in forbidden {
            assert!(
                !deps.contains(f),
                "{c} must not depend on {f} (directly or not)"
            );
        }
    }
}

#[test]
fn crates_only_depend_on_the_crates_the_architecture_allows() {
    let g = graph();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("zs-wire", &[][..]),
        ("zs-hash", &[][..]),
        ("zs-crypto", &["zs-hash"][..]),
        ("zs-expr", &[][..]),
        ("zs-io", &[][..]),
        ("zs-io-epoll", &["zs-io"][..]),
        ("zs-io-iocp", &["zs-io"][..]),
        ("zs-io-kqueue", &["zs-io"][..]),
        ("zs-io-tokio", &["zs-io"][..]),
        (
            "zs-p2pvm",
            &["zs-io", "zs-crypto", "zs-secure", "zs-wire"][..],
        ),
        ("zs-secure", &["zs-io", "zs-crypto"][..]),
        ("zs-db", &["zs-wire", "zs-expr"][..]),
        ("zs-core", &["zs-wire", "zs-io"][..]),
        (
            "zs-xnat",
            &[
                "zs-core",
                "zs-io",
                "zs-crypto",
                "zs-wire",
                "zs-p2pvm",
                "zs-db",
                "zs-punch",
            ][..],
        ),
        ("zs-tx", &["zs-db"][..]),
        (
            "zs-services",
            &["zs-core", "zs-db", "zs-crypto", "zs-hash", "zs-wire"][..],
        ),
        ("zs-registry", &["zs-core", "zs-db"][..]),
        (
            "zs-web",
            &[
                "zs-core",
                "zs-secure",
                "zs-io",
                "zs-io-epoll",
                "zs-io-tokio",
                "zs-crypto",
                "zs-wire",
            ][..],
        ),
        (
            "zs-db-service",
            &["zs-core", "zs-db", "zs-expr", "zs-wire"][..],
        ),
        ("zs-punch", &["zs-crypto", "zs-wire"][..]),
        (
            "zs-legacy",
            &[
                "zs-core",
                "zs-wire",
                "zs-crypto",
                "zs-io",
                "zs-io-epoll",
                "zs-io-tokio",
            ][..],
        ),
    ]);
    for (c, ok) in allowed {
        for d in g.direct(c) {
            if g.members.contains_key(&d) {
                assert!(
                    ok.contains(&d.as_str()),
                    "{c} may not depend on {d} (allowed: {ok:?})"
                );
            }
        }
    }
}

fn crate_root(manifest: &Path) -> Option<PathBuf> {
    let dir = manifest.parent()?;
    ["src/lib.rs", "src/main.rs"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
}

#[test]
fn every_crate_root_starts_with_docs_and_forbids_unsafe_outside_os_backends() {
    let g = graph();
    for (name, manifest) in &g.manifests {
        let root = crate_root(manifest).unwrap_or_else(|| panic!("{name}: no lib.rs or main.rs"));
        let text = std::fs::read_to_string(&root).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{}: must start with `//!` crate docs",
            root.display()
        );
        if !OS_BACKENDS.contains(&name.as_str()) {
            assert!(
                text.contains("#![forbid(unsafe_code)]"),
                "{}: only the OS backends may use unsafe; add #![forbid(unsafe_code)]",
                root.display()
            );
        }
    }
}

#[test]
fn unsafe_in_os_backends_is_documented() {
    let g = graph();
    for name in OS_BACKENDS {
        let dir = g.manifests[*name].parent().unwrap().join("src");
        let mut files = vec![dir];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                // Spelled in two pieces so this line is not itself an unsafe block to grep tools.
                if l.contains(concat!("unsafe", " {")) && !l.trim_start().starts_with("//") {
                    let from = i.saturating_sub(4);
                    assert!(
                        lines[from..=i].iter().any(|x| x.contains("SAFETY:")),
                        "{}:{}: unsafe block without a `// SAFETY:` comment",
                        p.display(),
                        i + 1
                    );
                }
            }
        }
    }
}

/// Parses a manifest's dependency tables and returns (table, line) for each entry
/// that does not take its version from `[workspace.dependencies]`.
fn unpinned_dependencies(manifest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut table = String::new();
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            table = l.to_string();
            continue;
        }
        let is_dep_table = table.ends_with("dependencies]");
        if !is_dep_table || l.is_empty() || l.starts_with('#') {
            continue;
        }
        if !(l.contains(".workspace = true") || l.contains("workspace = true")) {
            out.push((table.clone(), l.to_string()));
        }
    }
    out
}

#[test]
fn every_member_uses_workspace_metadata_lints_and_pinned_dependencies() {
    let g = graph();
    for (name, manifest) in &g.manifests {
        let text = std::fs::read_to_string(manifest).unwrap();
        for key in [
            "version.workspace = true",
            "edition.workspace = true",
            "license.workspace = true",
        ] {
            assert!(
                text.contains(key),
                "{name}: {key} missing in {}",
                manifest.display()
            );
        }
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{name}: must use `[lints] workspace = true`"
        );
        let bad = unpinned_dependencies(&text);
        assert!(
            bad.is_empty(),
            "{name}: dependencies must come from [workspace.dependencies]: {bad:?}"
        );
    }
}

#[test]
fn unpinned_dependency_detection_works() {
    let m = "[package]\nname = \"x\"\n[dependencies]\nfoo.workspace = true\nbar = \"1\"\n\
             [dev-dependencies]\nbaz = { workspace = true, features = [\"a\"] }\n\
             [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n";
    let bad = unpinned_dependencies(m);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0].1, "bar = \"1\"");
    assert_eq!(bad[1].1, "libc = \"0.2\"");
}

#[test]
fn readme_maps_every_crate() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for c in CRATES {
        assert!(
            readme.contains(&format!("`{c}`")),
            "README's crate map lacks `{c}`"
        );
    }
}

#[test]
fn architecture_doc_names_every_crate() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    for c in CRATES {
        assert!(
            doc.contains(&format!("`{c}`")),
            "docs/ARCHITECTURE.md lacks `{c}`"
        );
    }
}

#[test]
fn license_carries_both_texts() {
    let l = std::fs::read_to_string(root().join("LICENSE")).unwrap();
    assert!(l.contains("Apache License") && l.contains("Version 2.0"));
    assert!(l.contains("Permission is hereby granted, free of charge"));
}
