//! The planted defects of a replica's merge ([`PlantedBug`]), kept apart
//! from the protocol so that the correct path stays plain.

use ringkv_core::causality::{ConflictMode, Object, Sibling};

use super::merge_into;
use crate::config::PlantedBug;

/// What a replica stores when it merges `incoming` into `current` with
/// `bug` planted (bugs of other parts merge correctly).
pub(super) fn replica_merge(
    bug: PlantedBug,
    current: Option<Object>,
    incoming: Object,
    mode: ConflictMode,
) -> Object {
    match (bug, current) {
        (PlantedBug::DropSiblingsOnMerge, _) => incoming,
        // Takes an older copy (a late duplicate, a stale hint) over its own.
        (PlantedBug::OverwriteWithStale, Some(current))
            if current.clock().dominates(incoming.clock()) =>
        {
            incoming
        }
        // Keeps its siblings that the incoming history superseded.
        (PlantedBug::MergeResurrects, Some(current)) => {
            let merged = current.merge(&incoming, mode);
            let superseded: Vec<&Sibling> = current
                .siblings()
                .iter()
                .filter(|s| !merged.siblings().iter().any(|m| m.dot == s.dot))
                .collect();
            with_siblings(&merged, &superseded)
        }
        (_, current) => merge_into(current, &incoming, mode),
    }
}

/// `object` with `extra` siblings added, through the object format of
/// `core::causality::encoding` (version 1): the core offers no way to
/// build an object that holds a version its clock says was superseded.
fn with_siblings(object: &Object, extra: &[&Sibling]) -> Object {
    let mut siblings: Vec<&Sibling> = object
        .siblings()
        .iter()
        .chain(extra.iter().copied())
        .collect();
    siblings.sort_by_key(|s| s.dot);
    siblings.dedup_by_key(|s| s.dot);
    let mut out = vec![1u8];
    out.extend_from_slice(&(object.clock().len() as u32).to_be_bytes());
    for (replica, counter) in object.clock().iter() {
        out.extend_from_slice(&replica.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
    }
    out.extend_from_slice(&(siblings.len() as u32).to_be_bytes());
    for sibling in siblings {
        out.extend_from_slice(&sibling.dot.replica.to_be_bytes());
        out.extend_from_slice(&sibling.dot.counter.to_be_bytes());
        out.extend_from_slice(&sibling.modified_ms.to_be_bytes());
        out.push(u8::from(sibling.value.is_some()));
        out.extend_from_slice(&(sibling.content_type.len() as u16).to_be_bytes());
        out.extend_from_slice(sibling.content_type.as_bytes());
        if let Some(value) = &sibling.value {
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    Object::decode(&out).expect("re-encoding an object's parts decodes")
}

#[cfg(test)]
mod tests {
    use ringkv_core::causality::{NewVersion, VersionVector};

    use super::*;

    fn write(current: Option<&Object>, context: &VersionVector, actor: u64, value: &str) -> Object {
        let new = NewVersion {
            value: Some(value.as_bytes().to_vec()),
            content_type: "t".to_string(),
            now_ms: 1,
            expires_ms: None,
        };
        Object::update(current, context, new, actor, ConflictMode::Siblings, 100).unwrap()
    }

    #[test]
    fn the_resurrecting_merge_keeps_superseded_siblings() {
        let a = write(None, &VersionVector::new(), 1, "a");
        let b = write(Some(&a), a.clock(), 2, "b");
        let correct = replica_merge(
            PlantedBug::AckBeforeQuorum,
            Some(a.clone()),
            b.clone(),
            ConflictMode::Siblings,
        );
        assert_eq!(correct, b);
        let buggy = replica_merge(
            PlantedBug::MergeResurrects,
            Some(a),
            b.clone(),
            ConflictMode::Siblings,
        );
        assert_eq!(buggy.clock(), b.clock());
        assert_eq!(buggy.siblings().len(), 2);
    }
}
