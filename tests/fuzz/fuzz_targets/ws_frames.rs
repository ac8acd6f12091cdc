//! Client WebSocket frames: the decoder never panics, whatever the bytes and
//! however they are cut into reads, and every text message it yields is
//! handed to the op parser as the connection does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ws::parse_frame;
use switchboard::ws::frame::{Decoder, Incoming};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(64 * 1024);
    let step = usize::from(cut).max(1);
    for chunk in rest.chunks(step) {
        let mut buf = chunk.to_vec();
        let fed = decoder.feed(&mut buf, &mut |m| {
            if let Incoming::Text(t) = m {
                let _ = parse_frame(t);
            }
            true
        });
        if fed.is_err() {
            // The connection closes here, with the error's close code.
            return;
        }
    }
});
