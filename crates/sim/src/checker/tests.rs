//! The history checkers on hand-made histories.

use super::*;

fn kinds(violations: &[Violation]) -> Vec<ViolationKind> {
    violations.iter().map(|v| v.kind).collect()
}

#[test]
fn a_blindly_overwritten_acknowledged_write_is_lost() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    h.record_write("k", "b", false, None, Outcome::Ok);
    h.record_read("k", &["b"], true);
    let v = check_history(&h, ConflictMode::Siblings);
    assert_eq!(kinds(&v), vec![ViolationKind::LostWrite], "{v:?}");
    assert!(v[0].detail.contains("write a "), "{}", v[0].detail);
}

#[test]
fn siblings_or_a_covering_write_keep_the_history_clean() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    h.record_write("k", "b", false, None, Outcome::Ok);
    let read = h.record_read("k", &["a", "b"], false);
    // c only attempted: its context still covers a and b.
    h.record_write("k", "c", false, Some(read), Outcome::Unknown);
    h.record_read("k", &["c"], true);
    assert_eq!(check_history(&h, ConflictMode::Siblings), vec![]);

    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    h.record_write("k", "b", false, None, Outcome::Ok);
    h.record_read("k", &["a", "b"], true);
    assert_eq!(check_history(&h, ConflictMode::Siblings), vec![]);
}

#[test]
fn coverage_is_transitive_through_reads_and_writes() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    let r1 = h.record_read("k", &["a"], false);
    let b = h.record_write("k", "b", false, Some(r1), Outcome::Ok);
    // c passes on b's returned context: covers b, and through b, a.
    let c = h.record_write("k", "c", true, Some(b), Outcome::Ok);
    let r2 = h.record_read("k", &["c"], false);
    h.record_write("k", "d", false, Some(r2), Outcome::Failed);
    h.record_read("k", &["d"], true);
    assert_eq!(check_history(&h, ConflictMode::Siblings), vec![]);
    let _ = c;
}

#[test]
fn a_covered_version_must_not_come_back() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    let read = h.record_read("k", &["a"], false);
    h.record_write("k", "b", false, Some(read), Outcome::Ok);
    h.record_read("k", &["a", "b"], true);
    let v = check_history(&h, ConflictMode::Siblings);
    assert_eq!(
        kinds(&v),
        vec![ViolationKind::SupersededVersionReturned],
        "{v:?}"
    );
}

#[test]
fn a_context_from_another_key_covers_nothing() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    h.record_write("j", "x", false, None, Outcome::Ok);
    let read = h.record_read("j", &["x"], false);
    h.record_write("k", "b", false, Some(read), Outcome::Ok);
    h.record_read("k", &["b"], true);
    h.record_read("j", &["x"], true);
    let v = check_history(&h, ConflictMode::Siblings);
    assert_eq!(kinds(&v), vec![ViolationKind::LostWrite], "{v:?}");
}

#[test]
fn invented_wrong_and_misplaced_versions_are_reported() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    h.record_write("j", "x", true, None, Outcome::Failed);
    h.record_read("k", &["a", "nobody"], false);
    // x was a delete on key j: returning it for k is wrong twice over.
    h.record_read("k", &["a", "x"], true);
    h.record_read("j", &[], true);
    let v = check_history(&h, ConflictMode::Siblings);
    assert_eq!(
        kinds(&v),
        vec![ViolationKind::UnknownVersion, ViolationKind::UnknownVersion],
        "{v:?}"
    );
    assert!(v[0].detail.contains("no client wrote it"));
    assert!(v[1].detail.contains("key \"j\""));
}

#[test]
fn missing_final_read_and_lww_siblings_are_reported() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    assert_eq!(
        kinds(&check_history(&h, ConflictMode::Siblings)),
        vec![ViolationKind::FinalReadMissing]
    );
    h.record_write("k", "b", false, None, Outcome::Ok);
    h.record_read("k", &["a", "b"], true);
    assert_eq!(
        kinds(&check_history(&h, ConflictMode::Lww)),
        vec![ViolationKind::SiblingsInLww]
    );
}

#[test]
fn any_read_holding_a_version_beside_one_that_covers_it_is_a_resurrection() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    let read = h.record_read("k", &["a"], false);
    // A delete (tombstone) covering a; a later read shows both.
    h.record_write("k", "d", true, Some(read), Outcome::Unknown);
    h.record_read("k", &["a", "d"], false);
    h.record_read("k", &["d"], true);
    let v = check_history(&h, ConflictMode::Siblings);
    assert_eq!(
        kinds(&v),
        vec![ViolationKind::SupersededVersionReturned],
        "{v:?}"
    );
    assert!(
        v[0].detail.contains("returned a beside d"),
        "{}",
        v[0].detail
    );
    // A stale read (only the covered version) is not a resurrection.
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    let read = h.record_read("k", &["a"], false);
    h.record_write("k", "b", false, Some(read), Outcome::Ok);
    h.record_read("k", &["a"], false);
    h.record_read("k", &["b"], true);
    assert_eq!(check_history(&h, ConflictMode::Siblings), vec![]);
}

#[test]
fn a_write_context_handed_back_unchanged_does_not_cover_the_write() {
    let build = |covers_itself: bool| {
        let mut h = History::new();
        let a = h.record_write("k", "a", false, None, Outcome::Ok);
        let OpKind::Write(write) = &mut h.ops[a].kind else {
            unreachable!()
        };
        let mut returned = write.context.clone();
        if covers_itself {
            returned.add(ringkv_core::causality::Dot::new(1, 1));
        }
        write.returned_context = Some(returned);
        h.record_write("k", "b", false, Some(a), Outcome::Ok);
        h.record_read("k", &["a", "b"], true);
        check_history(&h, ConflictMode::Siblings)
    };
    // written_context could not cover a: b is a sibling of a.
    assert_eq!(build(false), vec![]);
    // It did: a must be gone.
    assert_eq!(
        kinds(&build(true)),
        vec![ViolationKind::SupersededVersionReturned]
    );
}

#[test]
fn buffered_writes_may_be_lost_only_when_w_of_their_replicas_crashed_unsynced() {
    let mut h = History::new();
    let a = h.record_write("k", "a", false, None, Outcome::Ok);
    h.ops[a].invoke_ms = 100;
    h.ops[a].complete_ms = Some(120);
    let window = |node, since, crash| CrashWindow {
        node,
        unsynced_since_ms: since,
        crash_ms: crash,
    };
    let allowed = |windows: &[CrashWindow]| writes_allowed_lost(&h, windows, 2);
    assert!(allowed(&[window(0, 90, 150)]).is_empty(), "one replica");
    assert!(
        allowed(&[window(0, 90, 150), window(0, 200, 250)]).is_empty(),
        "the same node twice"
    );
    assert!(
        allowed(&[window(0, 90, 150), window(1, 130, 160)]).is_empty(),
        "synced before the write was acknowledged: unsynced only since 130"
    );
    assert!(
        allowed(&[window(0, 90, 150), window(1, 50, 90)]).is_empty(),
        "crashed before the write"
    );
    assert_eq!(
        allowed(&[window(0, 90, 150), window(1, 110, 400)]),
        [a].into_iter().collect()
    );
}

#[test]
fn an_allowed_loss_takes_the_versions_it_covered_back_with_it() {
    let mut h = History::new();
    h.record_write("k", "a", false, None, Outcome::Ok);
    let read = h.record_read("k", &["a"], false);
    let b = h.record_write("k", "b", false, Some(read), Outcome::Ok);
    h.record_read("k", &["a"], true);
    assert_eq!(
        kinds(&check_history(&h, ConflictMode::Siblings)),
        vec![
            ViolationKind::LostWrite,
            ViolationKind::SupersededVersionReturned
        ]
    );
    let allowed = [b].into_iter().collect();
    assert_eq!(
        check_history_with(&h, ConflictMode::Siblings, &allowed),
        vec![]
    );
}
