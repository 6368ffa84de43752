//! `zs xnat visit --config FILE`: a local port for one mapping of a relay
//! (`[visitor]` table). Connections go through the relay at once; a direct path
//! (UDP hole punching, QUIC) is tried in the background, and live connections move to
//! it and back without being closed. Keys: see `zs xnat --help` and the zs-xnat
//! `visit` module docs.

use std::path::Path;

/// Runs the visitor of `config` until the process ends.
pub fn run(config: &Path) -> Result<(), String> {
    zs_xnat::visit::run_visitor_file(config)
}
