//! zs-web's WebSocket message decoders: arbitrary bytes as a JSON text message
//! and as a binary message never panic; whatever parses re-encodes and parses
//! back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_web::json::{self, op, WsRequest};

fuzz_target!(|data: &[u8]| {
    let limits = zs_wire::Limits::default();
    if let Ok(text) = std::str::from_utf8(data) {
        match json::parse_text(text, &limits) {
            Ok(WsRequest::Stream { id, cmd, data, .. }) => {
                // The binary form of the same request parses to the same values.
                let m = json::binary_message(op::CALL_STREAM, id, &cmd, &data);
                match json::parse_binary(&m, &limits) {
                    Ok(WsRequest::Stream {
                        id: i2,
                        cmd: c2,
                        data: d2,
                        ..
                    }) => {
                        assert_eq!((id, &cmd), (i2, &c2));
                        assert_eq!(data.to_json(), d2.to_json());
                    }
                    other => panic!("binary re-parse: {other:?}"),
                }
            }
            Ok(_) => {}
            Err((id, e)) => {
                assert!(id.is_none_or(|i| i <= json::MAX_ID));
                // The error answer is valid JSON.
                let s = json::error_reply(id, &e);
                serde_json::from_str::<serde_json::Value>(&s).expect("error reply is JSON");
            }
        }
    }
    if let Ok(WsRequest::Stream { id, cmd, data, .. }) = json::parse_binary(data, &limits) {
        let s = json::data_reply(id, &data);
        let v: serde_json::Value = serde_json::from_str(&s).expect("reply is JSON");
        assert_eq!(v["id"], id);
        assert!(!cmd.is_empty());
    }
});
