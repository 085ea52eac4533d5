#![no_main]
//! See `infragpt::testkit::fuzz::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| infragpt::testkit::fuzz::config(data));
