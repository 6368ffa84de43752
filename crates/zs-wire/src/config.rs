//! Configuration: limits, verification token, compression.

/// Bounds applied to everything decoded. Every length read from the wire is checked
/// against these before a byte is allocated for it. `docs/PROTOCOL.md` 1.8 lists the
/// defaults and what a receiver does when a peer breaks one.
///
/// Build it with `..Limits::default()` so that limits added later keep their default.
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
    /// Longest JSON value (its text, in bytes) inside a DataFrame; a JSON value must
    /// also respect `max_string`. Default 1 MiB.
    ///
    /// JSON is only *validated* while decoding (no `serde_json::Value` is built);
    /// it is parsed into a tree when a handler reads it, and such a tree takes
    /// roughly 16–32 times the text's size (`[0,0,…]` is 2 bytes per element on the
    /// wire and a 32-byte `Value` plus vector slack in memory). This limit bounds
    /// that: 1 MiB of JSON is at most a few tens of MiB once parsed.
    pub max_json: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_depth: 32,
            max_values: 1 << 20,
            max_string: 16 << 20,
            max_name: 255,
            max_json: 1 << 20,
        }
    }
}

/// Codec configuration shared by the [`Encoder`](crate::Encoder) and the
/// [`Decoder`](crate::Decoder) of one connection. Both ends must agree on `token`,
/// and a side that sets `compress_threshold` needs a peer with `accept_compressed`
/// ([`Config::with_compression`] sets both, for the usual case where both ends
/// share one configuration).
///
/// Build it with `..Config::default()` so that fields added later keep their default.
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
    /// result is smaller). `None` (default): never compress. This only concerns
    /// sending: whether compressed frames are *received* is `accept_compressed`.
    pub compress_threshold: Option<usize>,
    /// Accept lz4-compressed frames. `false` (default): the decoder refuses a
    /// frame with the compressed bit set with
    /// [`WireError::CompressionRefused`](crate::WireError::CompressionRefused) as
    /// soon as its kind byte arrives, and the connection must be closed.
    ///
    /// Compression lets a peer make the receiver allocate and parse up to
    /// `max_frame` bytes for each ~66 KB it sends (lz4 expands up to 255×), so it is
    /// off unless the deployment asks for it. When on, the decompressed body counts
    /// against `max_frame` and is checked against the same limits as a plain body.
    /// Setting `compress_threshold` does not imply this (a sender may compress
    /// towards peers while refusing compressed input); use
    /// [`Config::with_compression`] when both ends share one configuration.
    pub accept_compressed: bool,
}

/// So that a [`Config`] is its own source for a [`Decoder`](crate::Decoder),
/// [`Encoder`](crate::Encoder) or [`FrameCodec`](crate::FrameCodec) (which
/// take any `C: AsRef<Config>`, e.g. a shared `Arc<Config>`).
impl AsRef<Config> for Config {
    #[inline(always)]
    fn as_ref(&self) -> &Config {
        self
    }
}

impl Config {
    /// Default configuration with the given verification token.
    pub fn with_token(token: [u8; 4]) -> Config {
        Config {
            token: Some(token),
            ..Config::default()
        }
    }

    /// Default configuration with compression on in both directions: bodies of at
    /// least `threshold` bytes are sent compressed, and compressed frames are
    /// accepted. Both ends of a link should use it (or neither).
    ///
    /// ```
    /// let c = zs_wire::Config::with_compression(512);
    /// assert_eq!(c.compress_threshold, Some(512));
    /// assert!(c.accept_compressed);
    /// ```
    pub fn with_compression(threshold: usize) -> Config {
        Config::default().compression(threshold)
    }

    /// This configuration with compression on in both directions (see
    /// [`with_compression`](Config::with_compression)); e.g.
    /// `Config::with_token(t).compression(512)`.
    pub fn compression(self, threshold: usize) -> Config {
        Config {
            compress_threshold: Some(threshold),
            accept_compressed: true,
            ..self
        }
    }
}
