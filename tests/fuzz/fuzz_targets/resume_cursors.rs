//! Resume cursors: an SSE `Last-Event-ID`, a stream name with `after_seq`
//! (in `subscribe`), as the node parses them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::event::StreamKey;
use switchboard::protocol::parse_last_event_id;

fuzz_target!(|data: &[u8]| {
    if let Ok(seq) = parse_last_event_id(data) {
        assert_eq!(
            Ok(seq),
            std::str::from_utf8(data).unwrap().trim().parse::<i64>()
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = text.parse::<StreamKey>() {
            // What parses prints back as the same stream.
            assert_eq!(key.to_string().parse::<StreamKey>(), Ok(key));
        }
    }
});
