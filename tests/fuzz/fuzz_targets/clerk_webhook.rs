#![no_main]
//! See `infragpt::testkit::fuzz::clerk_webhook`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| infragpt::testkit::fuzz::clerk_webhook(data));
