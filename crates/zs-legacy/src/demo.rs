//! The hello-world commands of ZServer4D's examples (and of the ZNet reference
//! peers), so an original client's demo script runs against any Registry.

use zs_core::Registry;
use zs_wire::DataFrame;

/// Registers, where the name is free, the original demo commands:
///
/// | command | kind | answer |
/// |---|---|---|
/// | `helloWorld_Console` | direct console | none (logged) |
/// | `helloWorld_ConsoleResult` | console | `'console result ' + text` |
/// | `helloWorld_Stream` | direct stream | none (logged) |
/// | `helloWorld_Stream_Result` | stream | `['result 654321']` |
/// | `echo_Console` | console | the text |
/// | `echo_Stream` | stream | the values |
///
/// Returns how many were added.
pub fn register_demo_commands(r: &mut Registry) -> usize {
    let mut n = 0;
    if !r.contains("direct-console", "helloWorld_Console") {
        r.direct_console("helloWorld_Console", |peer, text| {
            tracing::info!(peer = peer.id(), "helloWorld_Console: {text}");
        });
        n += 1;
    }
    if !r.contains("console", "helloWorld_ConsoleResult") {
        r.console("helloWorld_ConsoleResult", |_, text| {
            Ok(format!("console result {text}"))
        });
        n += 1;
    }
    if !r.contains("direct-stream", "helloWorld_Stream") {
        r.direct_stream("helloWorld_Stream", |peer, data| {
            let s = data
                .reader()
                .read_text()
                .map(|t| t.to_string())
                .unwrap_or_default();
            tracing::info!(peer = peer.id(), "helloWorld_Stream: {s}");
        });
        n += 1;
    }
    if !r.contains("stream", "helloWorld_Stream_Result") {
        r.stream("helloWorld_Stream_Result", |_, _| {
            Ok(DataFrame::new().with("result 654321"))
        });
        n += 1;
    }
    if !r.contains("console", "echo_Console") {
        r.console("echo_Console", |_, text| Ok(text.to_owned()));
        n += 1;
    }
    if !r.contains("stream", "echo_Stream") {
        r.stream("echo_Stream", |_, data| Ok(data.clone()));
        n += 1;
    }
    n
}
