#![no_main]
//! See `infragpt::testkit::fuzz::mrkdwn`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| infragpt::testkit::fuzz::mrkdwn(data));
