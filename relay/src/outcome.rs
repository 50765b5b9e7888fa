//! A leaf: the words a stream's ending is told in. The tap ([`crate::tap`]) reports an [`End`] and what it
//! [`Seen`]; the record ([`crate::record`]) writes them down, and so will metrics and usage accounting, without any
//! of them importing the tap.

use tokio::time::Instant;

/// Why a stream failed after its head was sent. `kind()` is the fixed name clients, logs and metrics see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    UpstreamReset,
    UpstreamTruncated,
    UpstreamFirstByteTimeout,
    UpstreamIdleTimeout,
    TotalTimeout,
    UpstreamProtocol,
    Shutdown,
    /// A resumed answer ([`crate::resume`]) whose replica stopped before the answer's end.
    ResumeIncomplete,
}

/// How a read error of the vendor's body ends the stream: by default the connection failed
/// ([`Failure::UpstreamReset`]); a body that breaks its own framing says [`Failure::UpstreamProtocol`].
pub trait ReadFailure: std::fmt::Display {
    fn failure(&self) -> Failure {
        Failure::UpstreamReset
    }
}

impl ReadFailure for String {}

impl ReadFailure for std::convert::Infallible {}

impl Failure {
    pub fn kind(self) -> &'static str {
        match self {
            Failure::UpstreamReset => "upstream_reset",
            Failure::UpstreamTruncated => "upstream_truncated",
            Failure::UpstreamFirstByteTimeout => "upstream_first_byte_timeout",
            Failure::UpstreamIdleTimeout => "upstream_idle_timeout",
            Failure::TotalTimeout => "stream_total_timeout",
            Failure::UpstreamProtocol => "upstream_protocol",
            Failure::Shutdown => "shutdown",
            Failure::ResumeIncomplete => "resume_incomplete",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Failure::UpstreamReset => {
                "the upstream connection failed before the answer was complete"
            }
            Failure::UpstreamTruncated => {
                "the upstream ended the stream before the answer was complete"
            }
            Failure::UpstreamFirstByteTimeout => "the upstream sent no data in time",
            Failure::UpstreamIdleTimeout => "the upstream stopped sending",
            Failure::TotalTimeout => "the stream reached the relay's maximum duration",
            Failure::UpstreamProtocol => "the upstream sent a malformed event stream",
            Failure::Shutdown => "the relay is shutting down; retry the request",
            Failure::ResumeIncomplete => {
                "the replica that held this answer stopped before the answer was complete"
            }
        }
    }
}

/// How a relayed stream ended, as the tap saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The upstream body ended complete and every byte was handed to the client's connection.
    Complete,
    /// The stream failed; the detail is for the log line only.
    Failed(Failure, String),
    /// The body was dropped before its end: the client went away (or its connection was cut).
    Cancelled,
}

impl End {
    /// The fixed outcome name records and metrics use. `write_timed_out`: the connection was cut for accepting
    /// no bytes; `first_byte`: a body byte had reached the client's connection (which phase a cancel came in).
    pub fn kind(&self, write_timed_out: bool, first_byte: bool) -> &'static str {
        match self {
            End::Complete => "complete",
            End::Failed(f, _) => f.kind(),
            End::Cancelled if write_timed_out => "client_write_timeout",
            End::Cancelled if !first_byte => "client_cancelled_before_first_byte",
            End::Cancelled => "client_cancelled_mid_stream",
        }
    }

    /// `complete`, `failed` or `cancelled`: a label for duration histograms.
    pub fn class(&self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::Failed(..) => "failed",
            End::Cancelled => "cancelled",
        }
    }
}

/// What the tap saw of a stream, handed to its end-of-stream callback.
#[derive(Debug, Default)]
pub struct Seen {
    /// When the first non-empty data frame arrived.
    pub first_byte: Option<Instant>,
    pub bytes: u64,
    pub frames: u64,
    /// SSE events (event streams only).
    pub events: Option<u64>,
    /// Keep-alive comments sent, and their bytes.
    pub pings: u64,
    pub ping_bytes: u64,
    /// The audit text and whether it was cut at its cap (when the audit text is on).
    pub text: Option<(String, bool)>,
    /// Token counts the answer reported in an OpenAI-style `usage` object (a stream's or a JSON body's).
    pub tokens: Option<crate::usage::Tokens>,
    /// The answer's text so far, estimated in tokens ([`crate::usage::estimate`]).
    pub answer_tokens: u64,
    /// Vendor bytes not passed to the client: the usage-only chunk it did not ask for (`tap/hide.rs`).
    pub hidden: u64,
}
