//! Every op's fields: any text a client sends gets an op or an error, never
//! a panic, and the error is a reply the client can read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ws::{parse_frame, reply_err};

fuzz_target!(|text: &str| {
    let (id, op) = parse_frame(text);
    if let Err(e) = op {
        let frame = reply_err(&id, &e);
        let v: serde_json::Value = serde_json::from_str(frame.payload_str()).expect("a JSON reply");
        assert_eq!(v["ok"], false);
    }
});
