//! The relay's parsers of bytes it does not control, kept apart from everything that does IO so that they can be
//! property-tested and fuzzed on their own (`relay/fuzz`): [`h1`] reads the vendor's HTTP/1.1 response (head and
//! body framing) out of a read buffer, [`sse`] finds event boundaries in the relayed body. Neither copies body
//! bytes nor holds more than a bounded line.

pub mod h1;
pub mod sse;
