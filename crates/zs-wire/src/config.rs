//! Configuration: limits, verification token, compression threshold.

/// Bounds applied to everything decoded. Every length read from the wire is checked
/// against these before a byte is allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body in bytes (after the header), and largest decompressed body.
    /// Default 16 MiB.
    pub max_frame: usize,
    /// Deepest nesting of DataFrames inside a DataFrame (the outermost is depth 1).
    /// Default 32.
    pub max_depth: usize,
    /// Most values in one DataFrame, counting the values of nested DataFrames.
    /// Default 1 Mi (1 048 576).
    pub max_values: usize,
    /// Longest string, bytes, JSON text or number array value in bytes, and longest
    /// console text. Default 16 MiB.
    pub max_string: usize,
    /// Longest command / signal name in bytes. Default 255.
    pub max_name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_depth: 32,
            max_values: 1 << 20,
            max_string: 16 << 20,
            max_name: 255,
        }
    }
}

/// Codec configuration shared by the [`Encoder`](crate::Encoder) and the
/// [`Decoder`](crate::Decoder) of one connection. Both ends must agree on `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// Decoding limits (also enforced by the encoder so we never send what a peer
    /// with the same limits would refuse).
    pub limits: Limits,
    /// The deployment's private verification token (the seed's head/tail token).
    /// When set, every frame carries these 4 bytes right after the version byte and
    /// the decoder rejects any frame whose bytes differ with [`WireError::BadToken`](crate::WireError::BadToken),
    /// as soon as the first differing byte arrives. `None` (default): no token bytes.
    pub token: Option<[u8; 4]>,
    /// Compress frame bodies of at least this many bytes with lz4 (kept only when the
    /// result is smaller). `None` (default): never compress. Decoding always accepts
    /// compressed frames.
    pub compress_threshold: Option<usize>,
}

impl Config {
    /// Default configuration with the given verification token.
    pub fn with_token(token: [u8; 4]) -> Config {
        Config {
            token: Some(token),
            ..Config::default()
        }
    }
}
