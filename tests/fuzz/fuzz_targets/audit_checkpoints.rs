//! What `audit verify` reads besides the database: a checkpoint file. Any
//! text parses or fails with a message; every parsed checkpoint is checked
//! against a key (a forged one must never verify).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::audit::checkpoint::{CheckpointKey, parse_checkpoints};

fuzz_target!(|text: &str| {
    let Ok(checkpoints) = parse_checkpoints(text, "fuzz") else {
        return;
    };
    let key = CheckpointKey::from_hex(&"7".repeat(64))
        .expect("a key")
        .public();
    for cp in checkpoints {
        assert!(!cp.verify(&key), "a checkpoint from fuzz input verified");
    }
});
