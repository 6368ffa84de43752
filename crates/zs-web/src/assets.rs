//! Files the gateway serves, embedded at build time (no CDN, no build step).

/// The dashboard page (`/`).
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
/// The dashboard's script (`/dashboard.js`).
pub const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
/// The JavaScript client, an ES module (`/zs.js`).
pub const ZS_JS: &str = include_str!("../assets/zs.js");
/// uPlot 1.6.32 (MIT, vendored from the npm registry; `/vendor/uPlot.iife.min.js`).
pub const UPLOT_JS: &str = include_str!("../assets/vendor/uPlot.iife.min.js");
/// uPlot's stylesheet (`/vendor/uPlot.min.css`).
pub const UPLOT_CSS: &str = include_str!("../assets/vendor/uPlot.min.css");
