//! One check shared by the `dfview` property tests and the `wire_dataframe` fuzz
//! target (which includes this file by path): every getter of a `DataFrameView`
//! on value `i` against `v`, the value `DataFrame::decode` built there.

use zs_wire::{DataFrameView, Value, WireError};

/// `Err` with what differs when a getter disagrees with `v`.
pub fn check_view(view: &DataFrameView<'_>, i: usize, v: &Value) -> Result<(), String> {
    let found = v.type_name();
    let mismatch = |expected: &'static str| WireError::TypeMismatch {
        index: i,
        expected,
        found,
    };
    macro_rules! same {
        ($what:expr, $got:expr, $want:expr) => {{
            let (got, want) = ($got, $want);
            if got != want {
                return Err(format!("{} at {i}: {got:?}, decode says {want:?}", $what));
            }
        }};
    }
    macro_rules! strict {
        ($get:ident, $variant:ident, $name:literal, $conv:expr) => {{
            let got = view.$get(i).map($conv);
            match v {
                Value::$variant(x) => same!($name, got, Ok($conv(*x))),
                _ => same!($name, got, Err(mismatch($name))),
            }
        }};
    }
    use std::convert::identity as id;
    strict!(get_bool, Bool, "bool", id);
    strict!(get_i8, I8, "i8", id);
    strict!(get_i16, I16, "i16", id);
    strict!(get_i32, I32, "i32", id);
    strict!(get_i64, I64, "i64", id);
    strict!(get_u8, U8, "u8", id);
    strict!(get_u16, U16, "u16", id);
    strict!(get_u32, U32, "u32", id);
    strict!(get_u64, U64, "u64", id);
    // Floats by their bits (NaN payloads included).
    strict!(get_f32, F32, "f32", f32::to_bits);
    strict!(get_f64, F64, "f64", f64::to_bits);
    match v {
        Value::Str(t) => same!("str", view.get_str(i), Ok(t.as_str())),
        _ => same!("str", view.get_str(i), Err(mismatch("str"))),
    }
    match v {
        Value::Bytes(b) => same!("bytes", view.get_bytes(i), Ok(&b[..])),
        _ => same!("bytes", view.get_bytes(i), Err(mismatch("bytes"))),
    }
    same!("type name", view.type_name(i), Ok(found));
    // Any value, built as `decode` builds it (Debug: NaN compares equal).
    let built = view
        .get_value(i)
        .map_err(|e| format!("value {i} does not build: {e}"))?;
    same!("get_value", format!("{built:?}"), format!("{v:?}"));
    Ok(())
}
