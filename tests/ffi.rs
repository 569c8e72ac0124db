//! The foreign-function boundary: the runtime's C entry point turns errors into status 1
//! and a Rust panic into status 101 (it never unwinds into C), and JIT code memory is
//! never writable and executable at once. The AOT object's own argument checks are in
//! tests/aot.rs (a C program calls it with NULL pointers and n < 1).

use resnetc::jit_model::JitModel;
use resnetc::{from_spec, spec, weights};
use resnetc_runtime::runner::{main_with, resnetc_runner_main, ModelDesc, DESC_VERSION};
use resnetc_runtime::{npy, Tensor};
use std::ffi::CString;
use std::os::raw::c_char;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnetc-ffi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--input x.npy --output y.npy` over a fresh directory holding a valid 1x2x3x3 input.
fn io_args(dir: &std::path::Path) -> Vec<String> {
    npy::write(&dir.join("x.npy"), &Tensor::zeros(vec![1, 2, 3, 3])).unwrap();
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    vec!["--input".into(), p("x.npy"), "--output".into(), p("y.npy")]
}

#[test]
fn a_panic_in_the_runtime_becomes_status_101() {
    let dir = scratch("panic");
    let args = io_args(&dir);
    let status = main_with(&args, [2, 3, 3], 4, |_| panic!("a bug in model construction"));
    assert_eq!(status, 101);
    assert!(!dir.join("y.npy").exists(), "no output after a panic");
}

#[test]
fn the_c_entry_point_refuses_a_foreign_descriptor_with_status_1() {
    let dir = scratch("desc");
    let args = io_args(&dir);
    let name = CString::new("model").unwrap();
    let desc = ModelDesc {
        version: DESC_VERSION + 1,
        arena_floats: 0,
        input_c: 2,
        input_h: 3,
        input_w: 3,
        classes: 4,
        weight_floats: 0,
        ncalls: 0,
        weights: std::ptr::null(),
        calls: std::ptr::null(),
        name: name.as_ptr(),
    };
    let argv_owned: Vec<CString> =
        std::iter::once("prog".to_string()).chain(args).map(|a| CString::new(a).unwrap()).collect();
    let argv: Vec<*const c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: argv holds argc valid C strings; the descriptor is valid to read.
    let status = unsafe { resnetc_runner_main(argv.len() as i32, argv.as_ptr(), &desc) };
    assert_eq!(status, 1);
    assert!(!dir.join("y.npy").exists());
}

/// Mappings of this process that are writable and executable at the same time.
fn wx_mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|perms| perms.contains('w') && perms.contains('x')))
        .map(str::to_string)
        .collect()
}

#[test]
fn jit_code_is_never_writable_and_executable() {
    assert!(wx_mappings().is_empty(), "W+X before any JIT: {:?}", wx_mappings());
    let s = spec::preset("resnet20").unwrap();
    let w = weights::seeded(&from_spec::build(&s).unwrap(), 1);
    let models: Vec<JitModel> = (0..3).map(|_| JitModel::new(&s, &w, 2).unwrap()).collect();
    for m in &models {
        m.forward(&weights::seeded_input(s.input, 1, 2)).unwrap();
    }
    let wx = wx_mappings();
    assert!(wx.is_empty(), "W+X mappings after JIT compilation: {wx:?}");
}
