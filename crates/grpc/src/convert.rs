//! Protobuf messages to and from the snapshotter's own types.

use std::time::SystemTime;

use strata_snapshotter::{ErrorKind, Info, Kind, Mount, SnapshotError};
use tonic::{Code, Status};

use crate::api::{snapshots as pb, types as pbt};

/// The one mapping from snapshotter errors to gRPC codes; containerd's
/// proxy client maps these codes back to its own error classes.
pub fn status_of(e: &SnapshotError) -> Status {
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A code's name as Go's `codes.Code` prints it, as gRPC metrics label it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

pub fn mount_to_pb(m: Mount) -> pbt::Mount {
    pbt::Mount {
        r#type: m.kind,
        source: m.source,
        target: String::new(),
        options: m.options,
    }
}

pub fn mounts_to_pb(ms: Vec<Mount>) -> Vec<pbt::Mount> {
    ms.into_iter().map(mount_to_pb).collect()
}

fn kind_to_pb(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

fn kind_from_pb(k: i32) -> Kind {
    match pb::Kind::try_from(k) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Committed) => Kind::Committed,
        _ => Kind::Active,
    }
}

fn time_to_pb(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn time_from_pb(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub fn info_to_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_pb(i.kind) as i32,
        created_at: Some(time_to_pb(i.created)),
        updated_at: Some(time_to_pb(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

pub fn info_from_pb(i: pb::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: kind_from_pb(i.kind),
        labels: i.labels.into_iter().collect(),
        created: time_from_pb(i.created_at),
        updated: time_from_pb(i.updated_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// Timestamps come from the caller (Update): no value may panic.
    #[test]
    fn extreme_timestamps_do_not_panic() {
        for (seconds, nanos) in [
            (i64::MIN, -1),
            (i64::MIN, i32::MIN),
            (i64::MAX, i32::MAX),
            (i64::MAX, 999_999_999),
            (-1, -1_000_000_000),
            (0, i32::MAX),
        ] {
            let info = pb::Info {
                created_at: Some(prost_types::Timestamp { seconds, nanos }),
                updated_at: Some(prost_types::Timestamp { seconds, nanos }),
                ..Default::default()
            };
            let back = info_to_pb(info_from_pb(info));
            assert!(back.created_at.is_some());
        }
    }

    #[test]
    fn info_round_trips_with_nanoseconds() {
        let info = Info {
            name: "ns/1/key".into(),
            parent: "ns/0/parent".into(),
            kind: Kind::Committed,
            labels: BTreeMap::from([("a".into(), "b".into())]),
            created: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            updated: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_001, 1),
        };
        assert_eq!(info_from_pb(info_to_pb(info.clone())), info);
    }

    #[test]
    fn error_kinds_map_to_codes() {
        let nf = SnapshotError::NotFound { key: "k".into() };
        assert_eq!(status_of(&nf).code(), Code::NotFound);
        let exists = SnapshotError::AlreadyExists { key: "k".into() };
        assert_eq!(status_of(&exists).code(), Code::AlreadyExists);
        let busy = SnapshotError::HasChildren { key: "k".into() };
        assert_eq!(status_of(&busy).code(), Code::FailedPrecondition);
        let bad = SnapshotError::ImmutableField {
            key: "k".into(),
            field: "parent".into(),
        };
        assert_eq!(status_of(&bad).code(), Code::InvalidArgument);
    }

    #[test]
    fn code_names_are_go_s() {
        assert_eq!(code_name(Code::NotFound), "NotFound");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::Ok), "OK");
    }
}
