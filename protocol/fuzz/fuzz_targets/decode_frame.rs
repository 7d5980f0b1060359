//! Everything the server does with bytes from a socket before touching the engine:
//! frame check, request decode, and the response/push decoders a client runs. None may
//! panic, and a decoded request must re-encode to the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_protocol::frame::{self, HEADER_LEN};
use tidelog_protocol::response::{decode_data, decode_error};
use tidelog_protocol::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A stream of frames, as the server's connection loop sees it.
    while let Ok(Some(header)) = frame::check(rest, 1 << 20) {
        let (frame, tail) = rest.split_at(header.total_len);
        let body = &frame[HEADER_LEN..];
        if let Ok(request) = Request::decode(header.kind, body) {
            let mut again = Vec::new();
            request.encode_body(&mut again);
            assert_eq!(again, body, "decode/encode must round-trip");
        }
        let _ = Response::decode(header.kind, body);
        let _ = decode_data(body);
        let _ = decode_error(body);
        rest = tail;
    }
});
