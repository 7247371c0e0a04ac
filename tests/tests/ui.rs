//! Compile tests of the macros: `ui/pass/*.rs` must compile and run, and each `ui/fail/*.rs`
//! must fail with exactly the diagnostics in the `.stderr` beside it (one case per diagnostic
//! the macros emit). After changing a diagnostic, regenerate with
//! `TRYBUILD=overwrite cargo nextest run -p eventbus-tests --test ui` and read the diff.
//!
//! The first run builds this crate's dependencies in trybuild's own target directory, which
//! takes minutes on two cores; `.config/nextest.toml` gives this test the time.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
