#![no_main]
//! See `infragpt::testkit::fuzz::github_webhook`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| infragpt::testkit::fuzz::github_webhook(data));
