//! Random operation scripts on the in-memory pair (see `testkit::ops` for the
//! invariants: in-order exactly-once delivery, no errors between correct peers,
//! budget never exceeded, tables empty after both sides close everything).

use proptest::prelude::*;
use zs_p2pvm::testkit::ops::{run, Op};

fn op() -> impl Strategy<Value = Op> {
    let side = any::<bool>();
    prop_oneof![
        3 => (side, any::<u8>()).prop_map(|(client, addr)| Op::Connect { client, addr }),
        6 => (side, any::<u8>(), 0u16..5000).prop_map(|(client, stream, len)| Op::Send { client, stream, len }),
        5 => (side, any::<u8>(), 0u16..5000).prop_map(|(client, stream, max)| Op::Read { client, stream, max }),
        1 => (side, any::<u8>()).prop_map(|(client, stream)| Op::ShutdownWrite { client, stream }),
        1 => (side, any::<u8>()).prop_map(|(client, stream)| Op::Close { client, stream }),
        1 => (side, any::<u8>()).prop_map(|(client, stream)| Op::Reset { client, stream }),
        1 => (side, any::<u8>()).prop_map(|(client, addr)| Op::Listen { client, addr }),
        1 => (side, any::<u8>()).prop_map(|(client, addr)| Op::Unlisten { client, addr }),
        2 => (0u16..1500).prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::Drive),
        1 => (0u16..300).prop_map(|max| Op::Chunking { max }),
        1 => any::<u8>().prop_map(|ms| Op::Latency { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_scripts_keep_the_invariants(ops in proptest::collection::vec(op(), 0..120)) {
        run(&ops);
    }
}

#[test]
fn a_fixed_script_with_everything() {
    use Op::*;
    run(&[
        Listen {
            client: true,
            addr: 1,
        },
        Connect {
            client: true,
            addr: 0,
        },
        Connect {
            client: false,
            addr: 1,
        },
        Connect {
            client: true,
            addr: 2,
        }, // nobody listens: fails
        Drive,
        Send {
            client: true,
            stream: 0,
            len: 4000,
        },
        Send {
            client: false,
            stream: 0,
            len: 2500,
        },
        Chunking { max: 3 },
        Latency { ms: 20 },
        Advance { ms: 30 },
        Read {
            client: false,
            stream: 0,
            max: 700,
        },
        Read {
            client: true,
            stream: 0,
            max: 10,
        },
        ShutdownWrite {
            client: true,
            stream: 0,
        },
        Send {
            client: true,
            stream: 0,
            len: 10,
        },
        Drive,
        Reset {
            client: false,
            stream: 1,
        },
        Unlisten {
            client: false,
            addr: 0,
        },
        Connect {
            client: true,
            addr: 0,
        },
        Close {
            client: false,
            stream: 0,
        },
        Advance { ms: 1400 },
    ]);
}
