//! `DataFrameView` agrees with `DataFrame::decode`: on every field of generated
//! DataFrames (each strict getter returns the value or the typed error) and on
//! damaged bytes (accepted and refused alike, with the same error).

mod common;
#[path = "common/dfview_check.rs"]
mod dfview_check;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use zs_wire::{DataFrame, DataFrameView, Limits, Value, WireError};

/// `dfview_check::check_view` as a proptest failure.
fn check_field(view: &DataFrameView<'_>, i: usize, v: &Value) -> Result<(), TestCaseError> {
    dfview_check::check_view(view, i, v).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn view_agrees_with_decode_on_every_field(df in dataframe()) {
        let bytes = df.to_bytes();
        let limits = Limits::default();
        let decoded = DataFrame::decode(&bytes, &limits).unwrap();
        let view = DataFrameView::decode(&bytes, &limits).unwrap();
        prop_assert_eq!(view.len(), decoded.len());
        prop_assert_eq!(view.is_empty(), decoded.is_empty());
        prop_assert_eq!(view.as_bytes(), &bytes[..]);
        for (i, v) in decoded.values().iter().enumerate() {
            check_field(&view, i, v)?;
        }
        let end = view.len();
        prop_assert_eq!(view.get_u32(end), Err(WireError::ReadPastEnd { index: end }));
        prop_assert_eq!(view.get_str(end), Err(WireError::ReadPastEnd { index: end }));
        prop_assert_eq!(view.type_name(end), Err(WireError::ReadPastEnd { index: end }));
        prop_assert!(view.get_value(end).is_err());
    }

    #[test]
    fn view_agrees_with_decode_on_damaged_bytes(
        df in dataframe(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        depth in 0usize..4,
    ) {
        // One byte changed anywhere, or the bytes cut short, under a tight depth.
        let good = df.to_bytes().to_vec();
        let mut changed = good.clone();
        let i = at.index(changed.len());
        changed[i] = byte;
        let short = good[..cut.index(good.len())].to_vec();
        let limits = Limits { max_depth: depth, max_values: 1 << 12, ..Limits::default() };
        for input in [changed, short] {
            let input = Bytes::from(input);
            let view = DataFrameView::decode(&input, &limits);
            let lazy = DataFrame::decode(&input, &limits);
            match (&view, &lazy) {
                (Ok(view), Ok(d)) => {
                    prop_assert_eq!(view.len(), d.len());
                    for (i, v) in d.values().iter().enumerate() {
                        check_field(view, i, v)?;
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "view {:?} vs decode {:?}", view, lazy),
            }
        }
    }
}

#[test]
fn a_mixed_frame_reads_by_index_in_any_order() {
    let df = DataFrame::new()
        .with(48_213u32)
        .with(-5i64)
        .with(2.5f64)
        .with(true)
        .with("name")
        .with(Bytes::from_static(b"\x00\xff"))
        .with(-321i16)
        .with(7u8)
        .with(0.75f32);
    let bytes = df.to_bytes();
    let view = DataFrameView::decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(view.get_f32(8), Ok(0.75));
    assert_eq!(view.get_u8(7), Ok(7));
    assert_eq!(view.get_str(4), Ok("name"));
    assert_eq!(view.get_bytes(5), Ok(&b"\x00\xff"[..]));
    assert_eq!(view.get_i16(6), Ok(-321));
    assert_eq!(view.get_bool(3), Ok(true));
    assert_eq!(view.get_f64(2), Ok(2.5));
    assert_eq!(view.get_i64(1), Ok(-5));
    assert_eq!(view.get_u32(0), Ok(48_213));
    assert_eq!(
        view.get_i32(0),
        Err(WireError::TypeMismatch {
            index: 0,
            expected: "i32",
            found: "u32"
        })
    );
    assert_eq!(
        view.get_str(5),
        Err(WireError::TypeMismatch {
            index: 5,
            expected: "str",
            found: "bytes"
        })
    );
}

#[test]
fn invalid_utf8_is_refused_by_decode_not_at_access() {
    // One string value, 2 bytes, not UTF-8.
    let bytes = Bytes::from_static(&[1, 0x01, 2, 0xC3, 0x28]);
    assert_eq!(
        DataFrameView::decode(&bytes, &Limits::default()).unwrap_err(),
        WireError::InvalidUtf8
    );
}
