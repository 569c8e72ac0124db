//! The bad-input corpus (tests/corpus/cases.toml): every bad file or command line makes
//! the CLI exit non-zero with exactly its expected one-line error, no panic and no output
//! file; where a library call reads the same file, it returns an error whose message ends
//! the CLI's line (the CLI adds only context in front).

use resnetc::jit_model::JitModel;
use resnetc::{from_spec, spec, weights};
use resnetc_runtime::{image, npy, preprocess, safetensors};
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus")
}

/// What the library says about a case's file, through the call its `api` names.
fn api_error(api: &str, file: &Path) -> String {
    let dir = corpus();
    let result: anyhow::Result<()> = match api {
        "weights" => {
            let graph = from_spec::build(&spec::resolve(dir.join("tiny.toml").to_str().unwrap()).unwrap()).unwrap();
            weights::load(&graph, file).map(drop)
        }
        "input" => {
            let s = spec::resolve(dir.join("tiny.toml").to_str().unwrap()).unwrap();
            let w = safetensors::read(&dir.join("tiny.safetensors")).unwrap();
            let model = JitModel::new(&s, &w, 1).unwrap();
            let x = npy::read(file);
            x.and_then(|x| model.forward(&x).map(drop).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display())))
        }
        "image" => {
            let s = spec::resolve(dir.join("tiny_rgb.toml").to_str().unwrap()).unwrap();
            image::decode(file).and_then(|img| preprocess::image_to_input(&img, s.input).map(drop))
        }
        "spec" => spec::resolve(file.to_str().unwrap()).and_then(|s| from_spec::build(&s).map(drop)),
        other => panic!("unknown api `{other}` in cases.toml"),
    };
    match result {
        Ok(()) => panic!("{}: the {api} API accepted a bad input", file.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn every_bad_input_gets_its_exact_error() {
    let dir = corpus();
    let text = std::fs::read_to_string(dir.join("cases.toml")).unwrap();
    let cases: toml::Table = toml::from_str(&text).unwrap();
    let cases = cases["case"].as_array().unwrap();
    assert!(cases.len() >= 30, "the corpus has only {} cases", cases.len());
    let out = std::env::temp_dir().join(format!("resnetc-corpus-{}", std::process::id()));
    let mut failures = vec![];
    for case in cases {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().replace("{out}", out.to_str().unwrap()))
            .collect();
        let want = case["error"].as_str().unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_resnetc")).args(&args).current_dir(&dir).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        let err = err.trim_end();
        if run.status.success() {
            failures.push(format!("{args:?} succeeded"));
        } else if err != want {
            failures.push(format!("{args:?}\n   want: {want}\n    got: {err}"));
        }
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        if !left.is_empty() {
            failures.push(format!("{args:?} left {} file(s) in the output directory", left.len()));
        }
        if let (Some(api), Some(file)) = (case.get("api"), case.get("file")) {
            let file = file.as_str().unwrap();
            // The CLI names files as given; the API sees the same relative path.
            let msg = api_error(api.as_str().unwrap(), &dir.join(file));
            // The CLI prints one line: it joins a multi-line message with spaces.
            let msg = msg.replace(&format!("{}/", dir.display()), "").replace('\n', " ");
            if !want.ends_with(&msg) {
                failures.push(format!("{file}: API error does not end the CLI line\n    api: {msg}\n    cli: {want}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
