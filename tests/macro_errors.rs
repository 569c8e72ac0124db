//! Misuse of `resnet!` is a compile error pointing at the offending token (trybuild).
//! Expected messages live beside each case in `tests/ui/*.stderr`.

#[test]
fn misuse_is_a_compile_error_with_a_span() {
    let t = trybuild::TestCases::new();
    t.compile_fail("../tests/ui/*.rs");
}
