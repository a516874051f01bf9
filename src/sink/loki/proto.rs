//! Loki's `pkg/push/push.proto` (package `logproto`), as prost would generate it. Field 4 of
//! `EntryAdapter` (`parsed`) is only used by Loki's query path and is left out.

/// `logproto.PushRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// The label set, `{a="b", c="d"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// Set by Loki itself; clients send 0.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    /// `structuredMetadata`
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Always in `0..1_000_000_000`, also before 1970.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn from_nanos(ns: i64) -> Timestamp {
        Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            // rem_euclid of 1e9 is in 0..1e9, which fits an i32.
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }

    pub fn as_nanos(&self) -> i64 {
        self.seconds * 1_000_000_000 + i64::from(self.nanos)
    }
}
