//! The hex examples of `docs/PROTOCOL.md` Part 4 are exactly what the encoder
//! produces (and decode back to the same frames).

use zs_p2pvm::frame::{self, AuthMode, Frame, ListenChange, RefuseCode, HELLO_LEN};
use zs_p2pvm::Role;

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// `(name, bytes)` of every ```hex <name> block in Part 4 (`#` starts a comment).
fn examples() -> Vec<(String, Vec<u8>)> {
    let part = DOC
        .split("# Part 4: zs-p2pvm")
        .nth(1)
        .expect("Part 4 in docs/PROTOCOL.md");
    let part = part.split("\n# Part ").next().unwrap_or(part);
    let mut out = Vec::new();
    let mut lines = part.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("```hex ") else {
            continue;
        };
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            let hex: String = data.split_whitespace().collect();
            assert!(hex.len() % 2 == 0, "odd hex digits in {name}: {l}");
            for i in (0..hex.len()).step_by(2) {
                bytes.push(u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"));
            }
        }
        out.push((name.trim().to_string(), bytes));
    }
    out
}

fn hello(mode: AuthMode, nonce: u8) -> Frame<'static> {
    Frame::Hello {
        mode,
        max_payload: 65536,
        nonce: [nonce; 32],
    }
}

fn payload_of(f: &Frame<'_>) -> [u8; HELLO_LEN] {
    let mut b = Vec::new();
    f.encode(&mut b);
    b[frame::HEADER_LEN..].try_into().unwrap()
}

/// The frame each example must encode.
fn expected(name: &str) -> Frame<'static> {
    let a = |s: &str| s.parse().unwrap();
    match name {
        "hello-initiator" => hello(AuthMode::Token, 0x11),
        "hello-acceptor" => hello(AuthMode::Token, 0x22),
        "proof-initiator" | "proof-acceptor" => {
            let hi = payload_of(&hello(AuthMode::Token, 0x11));
            let ha = payload_of(&hello(AuthMode::Token, 0x22));
            let prover = if name == "proof-initiator" {
                Role::Initiator
            } else {
                Role::Acceptor
            };
            Frame::Proof {
                mac: frame::proof(b"secret", &frame::proof_message(prover, &hi, &ha, None)),
            }
        }
        "listen" => Frame::Listen {
            done: true,
            changes: vec![
                ListenChange {
                    add: true,
                    addr: a("10.0.0.1:80"),
                },
                ListenChange {
                    add: true,
                    addr: a("[fd00::1]:443"),
                },
            ],
        },
        "session-window" => Frame::Window {
            id: 0,
            increment: 64 << 20,
        },
        "open" => Frame::Open {
            id: 1,
            window: 65536,
            addr: a("10.0.0.1:80"),
        },
        "accept" => Frame::Accept {
            id: 1,
            window: 65536,
        },
        "refuse" => Frame::Refuse {
            id: 3,
            code: RefuseCode::UnknownAddress,
        },
        "data" => Frame::Data {
            id: 1,
            payload: b"hello",
        },
        "window" => Frame::Window {
            id: 1,
            increment: 32768,
        },
        "fin" => Frame::Fin { id: 1 },
        "reset" => Frame::Reset { id: 1 },
        "ping" => Frame::Ping { value: 1 },
        "pong" => Frame::Pong { value: 1 },
        "goaway" => Frame::GoAway {
            reason: "bye".into(),
        },
        other => panic!("unknown example {other}"),
    }
}

const NAMES: [&str; 16] = [
    "hello-initiator",
    "hello-acceptor",
    "proof-initiator",
    "proof-acceptor",
    "listen",
    "session-window",
    "open",
    "accept",
    "refuse",
    "data",
    "window",
    "fin",
    "reset",
    "ping",
    "pong",
    "goaway",
];

#[test]
fn examples_match_the_encoder() {
    let ex = examples();
    let mut report = String::new();
    for name in NAMES {
        let mut want = Vec::new();
        expected(name).encode(&mut want);
        let hex: Vec<String> = want.iter().map(|b| format!("{b:02x}")).collect();
        report.push_str(&format!("{name}: {}\n", hex.join("")));
        let Some((_, got)) = ex.iter().find(|(n, _)| n == name) else {
            panic!("example {name} missing from docs/PROTOCOL.md Part 4\n{report}");
        };
        assert_eq!(
            *got, want,
            "example {name} disagrees with the encoder\n{report}"
        );
        let (f, n) = frame::decode(got, 1 << 20).unwrap().unwrap();
        assert_eq!(n, got.len());
        assert_eq!(f, expected(name));
    }
    assert_eq!(ex.len(), NAMES.len(), "unexpected extra examples");
}
