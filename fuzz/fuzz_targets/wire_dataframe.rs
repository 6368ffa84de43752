//! DataFrame decoder over arbitrary bytes; whatever decodes must re-encode stably,
//! survive the typed JSON form, and every lenient reader must answer without panicking.
//! The typed index view (`DataFrameView`) accepts and refuses what `decode` does and
//! its strict getters agree with the decoded values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_wire::bytes::Bytes;
use zs_wire::{DataFrame, DataFrameView, Limits, Value, WireError};

// The view's getters against the decoded values (shared with the zs-wire tests).
#[path = "../../crates/zs-wire/tests/common/dfview_check.rs"]
mod dfview_check;

/// The DataFrame rebuilt from its values, nested ones included, so that encoding it
/// produces the canonical bytes rather than forwarding the received ones.
fn canon(df: &DataFrame) -> DataFrame {
    df.values()
        .iter()
        .map(|v| match v {
            Value::Frame(d) => Value::from(canon(d)),
            other => other.clone(),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame: 1 << 16,
        max_depth: (sel % 8) as usize + 1,
        max_values: 64 << (sel >> 6),
        max_string: 4096,
        max_name: 32,
        max_json: 1024,
    };
    let input = Bytes::copy_from_slice(input);
    // The one-pass decode for index access accepts and refuses exactly what the
    // validating decode does, with the same error and the same values.
    let indexed = DataFrame::decode_indexed(&input, &limits);
    let lazy = DataFrame::decode(&input, &limits);
    match (&indexed, &lazy) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.to_bytes(), b.to_bytes(), "decode_indexed: other bytes");
            assert_eq!(
                canon(a).to_bytes(),
                canon(b).to_bytes(),
                "decode_indexed: other values"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "decode_indexed: another error"),
        _ => panic!("decode_indexed {indexed:?} vs decode {lazy:?}"),
    }
    // The typed index view: same acceptance and errors, same values.
    let view = DataFrameView::decode(&input, &limits);
    match (&view, &lazy) {
        (Ok(view), Ok(df)) => {
            assert_eq!(view.len(), df.len(), "view len");
            for (i, v) in df.values().iter().enumerate() {
                if let Err(e) = dfview_check::check_view(view, i, v) {
                    panic!("view disagrees with decode: {e}");
                }
            }
            let end = view.len();
            assert_eq!(
                view.get_u32(end),
                Err(WireError::ReadPastEnd { index: end })
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "view: another error"),
        _ => panic!("view {view:?} vs decode {lazy:?}"),
    }
    let Ok(df) = lazy else {
        return;
    };
    // An unmodified decoded DataFrame forwards its validated bytes verbatim.
    assert_eq!(df.to_bytes(), input, "forwarding changed the bytes");
    assert_eq!(df.encoded_len(), input.len());
    // The canonical encoding (built from the values) is stable.
    let bytes = canon(&df).to_bytes();
    assert_eq!(bytes.len(), canon(&df).encoded_len());
    let again = DataFrame::decode(
        &bytes,
        &Limits {
            max_string: usize::MAX,
            max_json: usize::MAX,
            ..limits
        },
    )
    .expect("a re-encoded DataFrame decodes");
    assert_eq!(canon(&again).to_bytes(), bytes, "re-encoding is not stable");
    let json = df.to_json();
    let back = DataFrame::from_json(&json, &limits).expect("typed JSON form parses back");
    assert_eq!(canon(&back).to_bytes(), bytes, "typed JSON form is lossy");
    let _ = df.to_plain_json();
    let mut r = df.reader();
    while r.remaining() > 0 {
        let _ = (
            r.clone().read_i8(),
            r.clone().read_u64(),
            r.clone().read_i64(),
            r.clone().read_f32(),
        );
        let _ = (
            r.clone().read_bool(),
            r.clone().read_text(),
            r.clone().read_bytes(),
            r.clone().read_json(),
        );
        let _ = (
            r.clone().read_variant(),
            r.clone().read_array(),
            r.clone().read_dataframe(),
        );
        // The borrowed readers (straight from the bytes while `r` stays in wire
        // mode) agree with the built values.
        let v = df.get(r.position()).expect("a value is there");
        assert_eq!(
            r.clone().read_str().ok(),
            v.as_text().map(|t| t.as_str()),
            "read_str"
        );
        let slice = match v {
            Value::Bytes(b) => Some(&b[..]),
            other => other.as_text().map(|t| t.as_bytes()),
        };
        assert_eq!(r.clone().read_slice().ok(), slice, "read_slice");
        // Every value has a JSON form, so this moves on without leaving wire mode.
        r.read_json().expect("every value reads as JSON");
    }
});
