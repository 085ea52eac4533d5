#![no_main]
//! See `infragpt::testkit::fuzz::jwt`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| infragpt::testkit::fuzz::jwt(data));
