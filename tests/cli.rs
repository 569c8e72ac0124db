#[test]
fn t() {
    let p = env!("CARGO_BIN_EXE_resnetc");
    assert!(std::process::Command::new(p).status().unwrap().success());
}
