//! The config file: any text parses or fails with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::FileConfig;

fuzz_target!(|text: &str| {
    if let Err(e) = FileConfig::parse(text) {
        assert!(!e.to_string().is_empty());
    }
});
