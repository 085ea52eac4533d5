#![no_main]
//! See `infragpt::testkit::fuzz::slack_signature`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| infragpt::testkit::fuzz::slack_signature(data));
