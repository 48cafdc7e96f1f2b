//! The corpus of bad LANs (`tests/bad-lans/*.yaml`) against `validate_lan`: every document is
//! refused, and every error names the field its `bad-lans.k8slan.io/expect` annotation names (so
//! a document breaks exactly the rule of its family, and no other). The LANs of
//! `tests/good-lans/*.yaml` are all accepted. The same files run against the real API server and
//! webhook in `e2e/tests/test_k8slan_badlans.py`.

use std::path::{Path, PathBuf};

use k8slan_api::validate::validate_lan;
use k8slan_api::{InvalidLan, LAN};
use kube::ResourceExt;
use serde::Deserialize;

const EXPECT: &str = "bad-lans.k8slan.io/expect";
const LAYER: &str = "bad-lans.k8slan.io/layer";
/// What the error must say when it cannot name the field (a value the Rust type cannot hold).
const SAYS: &str = "bad-lans.k8slan.io/says";
/// The namespace the LANs are validated in; `$NAMESPACE` in a document stands for it.
const NAMESPACE: &str = "team-a";

fn corpus(dir: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("$NAMESPACE", NAMESPACE);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            docs.push((file.clone(), value));
        }
    }
    docs
}

/// The fields validation names for a document, or the deserialisation error (a value the Rust
/// type cannot hold, e.g. a port over 65535, never reaches a node either).
fn verdict(doc: &serde_json::Value) -> Result<(), Result<Vec<String>, String>> {
    let lan: LAN = serde_json::from_value(doc.clone()).map_err(|e| Err(e.to_string()))?;
    match validate_lan(NAMESPACE, &lan.name_any(), &lan.spec) {
        Ok(()) => Ok(()),
        Err(InvalidLan(errors)) => Err(Ok(errors
            .iter()
            .map(|e| {
                assert!(
                    !e.message.is_empty(),
                    "{}: an error without a message",
                    e.field
                );
                e.field.clone()
            })
            .collect())),
    }
}

#[test]
fn every_bad_lan_is_refused_naming_its_field_only() {
    let docs = corpus("bad-lans");
    assert!(docs.len() >= 100, "only {} bad LANs", docs.len());
    let mut wrong = Vec::new();
    for (file, doc) in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap_or("?");
        let ann = &doc["metadata"]["annotations"];
        let expect = ann[EXPECT].as_str().expect("every bad LAN names its field");
        assert!(
            matches!(ann[LAYER].as_str(), Some("schema" | "webhook")),
            "{name}: layer"
        );
        let what = format!("{}: {name}", file.file_name().unwrap().to_string_lossy());
        match verdict(doc) {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(Ok(fields)) => {
                if let Some(f) = fields.iter().find(|f| !f.starts_with(expect)) {
                    wrong.push(format!("{what}: names {f}, expected only {expect}"));
                }
            }
            Err(Err(parse)) => match ann[SAYS].as_str() {
                Some(says) if parse.contains(says) => {}
                _ => wrong.push(format!(
                    "{what}: unreadable, and {SAYS} does not match: {parse}"
                )),
            },
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_good_lan_is_accepted() {
    let docs = corpus("good-lans");
    assert!(docs.len() >= 10);
    for (_, doc) in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert_eq!(verdict(doc), Ok(()), "{name}");
    }
}
