//! The WebSocket message mapping (docs/PROTOCOL.md Part 8): JSON text messages
//! and binary DataFrame messages to and from [`WsRequest`]s, answers, pushes and
//! typed errors. Pure functions, no I/O: the fuzz target `web_json` drives
//! [`parse_text`] and [`parse_binary`] with arbitrary bytes.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use zs_core::code;
use zs_wire::{DataFrame, Limits};

/// The largest request id a client may use: 2^53 - 1, the largest integer a
/// JavaScript number holds exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Longest command name (bytes), as on the binary protocol's frames.
pub const MAX_NAME: usize = 255;

/// Binary message opcodes (first byte).
pub mod op {
    /// Client → gateway: stream call (answer expected).
    pub const CALL_STREAM: u8 = 0x01;
    /// Client → gateway: direct stream (no answer).
    pub const SEND_STREAM: u8 = 0x02;
    /// Gateway → client: the DataFrame answer of a stream call.
    pub const REPLY: u8 = 0x81;
    /// Gateway → client: a DataFrame pushed by the server.
    pub const PUSH: u8 = 0x82;
}

/// One request from a WebSocket client.
#[derive(Debug, Clone, PartialEq)]
pub enum WsRequest {
    /// `{"id":N,"call":"cmd","text":"..."}`: a console call.
    Call {
        /// Request id (echoed in the answer).
        id: u64,
        /// Command name.
        cmd: String,
        /// Text argument.
        text: String,
    },
    /// `{"id":N,"stream":"cmd","data":[...]}` or binary op 0x01: a stream call.
    Stream {
        /// Request id.
        id: u64,
        /// Command name.
        cmd: String,
        /// DataFrame argument.
        data: DataFrame,
        /// Whether the answer goes back as a binary message (the request was binary).
        binary: bool,
    },
    /// `{"send":"cmd","text":"..."}`: a direct console command (no answer).
    SendText {
        /// Command name.
        cmd: String,
        /// Text argument.
        text: String,
    },
    /// `{"send":"cmd","data":[...]}` or binary op 0x02: a direct stream command.
    SendData {
        /// Command name.
        cmd: String,
        /// DataFrame argument.
        data: DataFrame,
    },
}

/// A typed error as sent to WebSocket clients:
/// `{"id":N,"error":{"code":404,"type":"unknown_command","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError {
    /// Numeric code: zs-core's [`code`] values, plus 502 for a lost upstream.
    pub code: u32,
    /// Stable type name for programs (see [`WsError::type_of`]).
    pub kind: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl WsError {
    /// An error with `code`, its type name derived from the code.
    pub fn new(code: u32, message: impl Into<String>) -> WsError {
        WsError {
            code,
            kind: WsError::type_of(code),
            message: message.into(),
        }
    }

    /// The type name of a code: `bad_request` (400), `unknown_command` (404),
    /// `timeout` (408), `gone` (410), `too_large` (413), `too_many` (429),
    /// `handler_failed` (500), `not_supported` (501), `connection_lost` (502),
    /// `busy` (503), else `error`.
    pub fn type_of(code: u32) -> &'static str {
        match code {
            code::BAD_REQUEST => "bad_request",
            code::UNKNOWN_COMMAND => "unknown_command",
            code::TIMED_OUT => "timeout",
            code::GONE => "gone",
            code::TOO_LARGE => "too_large",
            code::TOO_MANY => "too_many",
            code::HANDLER_FAILED => "handler_failed",
            code::NOT_SUPPORTED => "not_supported",
            CONNECTION_LOST => "connection_lost",
            code::BUSY => "busy",
            _ => "error",
        }
    }

    /// A malformed request (400).
    pub fn bad(message: impl Into<String>) -> WsError {
        WsError::new(code::BAD_REQUEST, message)
    }
}

/// Code of [`WsError`]s for calls whose upstream session was lost.
pub const CONNECTION_LOST: u32 = 502;

impl From<zs_core::Error> for WsError {
    fn from(e: zs_core::Error) -> WsError {
        use zs_core::Error as E;
        match e {
            E::Remote { code, message } => WsError::new(code, message),
            E::TimedOut => WsError::new(code::TIMED_OUT, "call timed out"),
            E::Full { .. } => WsError::new(code::BUSY, e.to_string()),
            E::ConnectionLost(_) | E::SessionLost(_) | E::Io(_) => {
                WsError::new(CONNECTION_LOST, e.to_string())
            }
            E::Wire(_) | E::Config(_) => WsError::new(code::BAD_REQUEST, e.to_string()),
            other => WsError::new(code::HANDLER_FAILED, other.to_string()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    call: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow)]
    send: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    data: Option<serde_json::Value>,
}

fn check_name(name: &str) -> Result<(), WsError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(WsError::bad(format!(
            "a command name has 1 to {MAX_NAME} bytes, not {}",
            name.len()
        )));
    }
    Ok(())
}

fn check_id(id: Option<u64>) -> Result<u64, WsError> {
    match id {
        Some(id) if id <= MAX_ID => Ok(id),
        Some(id) => Err(WsError::bad(format!("id {id} exceeds 2^53-1"))),
        None => Err(WsError::bad("a call needs an \"id\"")),
    }
}

/// Parses a JSON text message. On failure the error carries the request id
/// when one could be read, so the client can match it.
pub fn parse_text(text: &str, limits: &Limits) -> Result<WsRequest, (Option<u64>, WsError)> {
    let m: Incoming<'_> = serde_json::from_str(text).map_err(|e| {
        // Best effort: find the id of a request that is valid JSON but has the
        // wrong shape.
        let id = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
            .filter(|id| *id <= MAX_ID);
        (id, WsError::bad(format!("malformed message: {e}")))
    })?;
    let id = m.id;
    let err = |e: WsError| (id.filter(|i| *i <= MAX_ID), e);
    let data = |d: Option<serde_json::Value>| -> Result<Option<DataFrame>, WsError> {
        d.map(|j| {
            DataFrame::from_json(&j, limits).map_err(|e| WsError::bad(format!("\"data\": {e}")))
        })
        .transpose()
    };
    match (m.call, m.stream, m.send) {
        (Some(cmd), None, None) => {
            let id = check_id(id).map_err(err)?;
            check_name(&cmd).map_err(err)?;
            if m.data.is_some() {
                return Err(err(WsError::bad("a console call carries \"text\"")));
            }
            Ok(WsRequest::Call {
                id,
                cmd: cmd.into_owned(),
                text: m.text.map(Cow::into_owned).unwrap_or_default(),
            })
        }
        (None, Some(cmd), None) => {
            let id = check_id(id).map_err(err)?;
            check_name(&cmd).map_err(err)?;
            if m.text.is_some() {
                return Err(err(WsError::bad("a stream call carries \"data\"")));
            }
            Ok(WsRequest::Stream {
                id,
                cmd: cmd.into_owned(),
                data: data(m.data).map_err(err)?.unwrap_or_default(),
                binary: false,
            })
        }
        (None, None, Some(cmd)) => {
            check_name(&cmd).map_err(err)?;
            if id.is_some() {
                return Err(err(WsError::bad("\"send\" takes no \"id\"")));
            }
            match (m.text, data(m.data).map_err(err)?) {
                (Some(t), None) => Ok(WsRequest::SendText {
                    cmd: cmd.into_owned(),
                    text: t.into_owned(),
                }),
                (None, Some(d)) => Ok(WsRequest::SendData {
                    cmd: cmd.into_owned(),
                    data: d,
                }),
                (None, None) => Ok(WsRequest::SendText {
                    cmd: cmd.into_owned(),
                    text: String::new(),
                }),
                (Some(_), Some(_)) => Err(err(WsError::bad(
                    "\"send\" carries \"text\" or \"data\", not both",
                ))),
            }
        }
        _ => Err(err(WsError::bad(
            "a message has exactly one of \"call\", \"stream\", \"send\"",
        ))),
    }
}

/// Parses a binary message: `op u8 | id u64 LE | name_len u8 | name | DataFrame`.
pub fn parse_binary(msg: &[u8], limits: &Limits) -> Result<WsRequest, (Option<u64>, WsError)> {
    if msg.len() < 10 {
        return Err((
            None,
            WsError::bad(format!(
                "a binary message has at least 10 bytes, not {}",
                msg.len()
            )),
        ));
    }
    let opc = msg[0];
    let id = u64::from_le_bytes(msg[1..9].try_into().expect("8 bytes"));
    let known = (id <= MAX_ID).then_some(id);
    let err = |e: WsError| (known, e);
    let n = usize::from(msg[9]);
    let rest = &msg[10..];
    if rest.len() < n {
        return Err(err(WsError::bad("binary message: name runs past the end")));
    }
    let cmd = std::str::from_utf8(&rest[..n])
        .map_err(|_| err(WsError::bad("binary message: name is not UTF-8")))?;
    check_name(cmd).map_err(err)?;
    let body = Bytes::copy_from_slice(&rest[n..]);
    let data = DataFrame::decode(&body, limits)
        .map_err(|e| err(WsError::bad(format!("binary message: DataFrame: {e}"))))?;
    match opc {
        op::CALL_STREAM => Ok(WsRequest::Stream {
            id: check_id(Some(id)).map_err(err)?,
            cmd: cmd.to_owned(),
            data,
            binary: true,
        }),
        op::SEND_STREAM => Ok(WsRequest::SendData {
            cmd: cmd.to_owned(),
            data,
        }),
        other => Err(err(WsError::bad(format!(
            "binary message: unknown opcode 0x{other:02x}"
        )))),
    }
}

/// Encodes a binary gateway → client message (`op`, `id`, `name`, DataFrame).
pub fn binary_message(opc: u8, id: u64, name: &str, data: &DataFrame) -> Bytes {
    let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
    let mut b = BytesMut::with_capacity(10 + name.len() + data.encoded_len());
    b.put_u8(opc);
    b.put_u64_le(id);
    b.put_u8(name.len() as u8);
    b.put_slice(name);
    data.encode(&mut b);
    b.freeze()
}

#[derive(Serialize)]
struct ErrBody<'a> {
    code: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrBody<'a>>,
}

const EMPTY: Out<'static> = Out {
    id: None,
    push: None,
    text: None,
    data: None,
    error: None,
};

fn to_string(o: &Out<'_>) -> String {
    serde_json::to_string(o).expect("serializing plain data cannot fail")
}

/// `{"id":N,"text":"..."}`
pub fn text_reply(id: u64, text: &str) -> String {
    to_string(&Out {
        id: Some(id),
        text: Some(text),
        ..EMPTY
    })
}

/// `{"id":N,"data":[...]}` (typed DataFrame JSON).
pub fn data_reply(id: u64, data: &DataFrame) -> String {
    to_string(&Out {
        id: Some(id),
        data: Some(data.to_json()),
        ..EMPTY
    })
}

/// `{"id":N,"error":{...}}`, or without `id` for errors not tied to a request.
pub fn error_reply(id: Option<u64>, e: &WsError) -> String {
    to_string(&Out {
        id,
        error: Some(ErrBody {
            code: e.code,
            kind: e.kind,
            message: &e.message,
        }),
        ..EMPTY
    })
}

/// `{"push":"name","text":"..."}`
pub fn text_push(name: &str, text: &str) -> String {
    to_string(&Out {
        push: Some(name),
        text: Some(text),
        ..EMPTY
    })
}

/// `{"signal":"name","code":N}`: a named signal the server sent to the
/// connection (e.g. `user.kicked` with the user id).
pub fn signal_push(name: &str, code: u64) -> String {
    #[derive(Serialize)]
    struct Signal<'a> {
        signal: &'a str,
        code: u64,
    }
    serde_json::to_string(&Signal { signal: name, code }).expect("plain data")
}

/// `{"push":"name","data":[...]}`
pub fn data_push(name: &str, data: &DataFrame) -> String {
    to_string(&Out {
        push: Some(name),
        data: Some(data.to_json()),
        ..EMPTY
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_text(r#"{"id":7,"call":"echo","text":"hi"}"#, &l()).unwrap(),
            WsRequest::Call {
                id: 7,
                cmd: "echo".into(),
                text: "hi".into()
            }
        );
        let r = parse_text(r#"{"id":1,"stream":"s","data":[{"t":"u8","v":5}]}"#, &l()).unwrap();
        assert_eq!(
            r,
            WsRequest::Stream {
                id: 1,
                cmd: "s".into(),
                data: DataFrame::new().with(5u8),
                binary: false
            }
        );
        assert!(matches!(
            parse_text(r#"{"send":"n","text":"x"}"#, &l()).unwrap(),
            WsRequest::SendText { .. }
        ));
    }

    #[test]
    fn bad_requests_are_typed_and_keep_the_id() {
        let (id, e) = parse_text(r#"{"id":3,"call":"echo","bogus":1}"#, &l()).unwrap_err();
        assert_eq!((id, e.code, e.kind), (Some(3), 400, "bad_request"));
        let (id, e) = parse_text("{not json", &l()).unwrap_err();
        assert_eq!((id, e.kind), (None, "bad_request"));
        let (id, _) = parse_text(r#"{"id":9007199254740992,"call":"e"}"#, &l()).unwrap_err();
        assert_eq!(id, None);
        assert!(parse_text(r#"{"id":1,"call":"a","stream":"b"}"#, &l()).is_err());
        assert!(parse_text(r#"{"id":1,"call":""}"#, &l()).is_err());
        assert!(parse_text(r#"{"id":1,"stream":"s","data":{"t":"u8"}}"#, &l()).is_err());
    }

    #[test]
    fn binary_round_trip() {
        let df = DataFrame::new().with("x").with(1u64);
        let m = binary_message(op::CALL_STREAM, 5, "cmd", &df);
        assert_eq!(
            parse_binary(&m, &l()).unwrap(),
            WsRequest::Stream {
                id: 5,
                cmd: "cmd".into(),
                data: df,
                binary: true
            }
        );
        assert!(parse_binary(&m[..9], &l()).is_err());
        let mut bad = m.to_vec();
        bad[0] = 0x7f;
        assert_eq!(parse_binary(&bad, &l()).unwrap_err().0, Some(5));
    }
}
