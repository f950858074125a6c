//! The published OpenAPI document is valid: every reference resolves, every path parameter is declared
//! where the path has it (and only there), every operation says what it answers; and, where Python's
//! `openapi-spec-validator` is installed (`.ci/run` installs it), that validator accepts the document.

mod common;

use std::collections::BTreeSet;

use prefloop::http::openapi::ApiDoc;
use serde_json::Value;
use utoipa::OpenApi;

fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the document serialises")
}

/// Every "$ref" in `v`, anywhere.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap_or_default().to_string());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_path_parameter_is_declared() {
    let doc = document();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(schemas.contains_key(name), "{r} has no schema");
    }
    for name in [
        "ExportFormat",
        "AnnotatorFilter",
        "FlagAction",
        "Flag",
        "AnnotatorQuality",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }

    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let template: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_string())
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let declared: BTreeSet<String> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(declared, template, "{method} {path}: path parameters");
            for p in params.iter().filter(|p| p["in"] == "path") {
                assert_eq!(p["required"], true, "{method} {path}: {p}");
            }
            let responses = op["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
        }
    }
    // The export's options are query parameters.
    let export = &doc["paths"]["/api/v1/projects/{id}/export"]["get"]["parameters"];
    for name in ["format", "annotators"] {
        let p = export
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not declared"));
        assert_eq!(p["in"], "query", "{p}");
    }
    for path in [
        "/api/v1/projects/{id}/annotators",
        "/api/v1/projects/{id}/flags",
        "/api/v1/flags/{id}/resolve",
        "/api/v1/leases/{id}/flag",
        "/api/v1/projects/{id}/pairs",
    ] {
        assert!(paths.contains_key(path), "{path} is not published");
    }
}

#[test]
fn openapi_spec_validator_accepts_the_document() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        common::skip_unless_strict(
            "Python's openapi-spec-validator is not installed",
            "pip install openapi-spec-validator==0.9.0, or run .ci/run",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&document()).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
