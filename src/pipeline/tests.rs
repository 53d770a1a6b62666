use super::FileStop;

#[test]
fn a_stopped_file_run_reads_a_prefix_of_whole_chunks() {
    // Two workers: 0 reads even chunks, 1 odd ones; worker 1 runs ahead.
    let mut s = FileStop::default();
    assert!(s.admit(0, false));
    assert!(s.admit(1, false));
    assert!(s.admit(3, false));
    // Worker 0 sees the stop before chunk 2: chunks 0..4 were started or lag behind, so 2 still runs.
    assert!(s.admit(2, true));
    assert_eq!(s.stop_at, Some(4));
    assert!(!s.admit(4, true));
    assert!(!s.admit(5, false));
    assert_eq!(s.stop_at, Some(4), "set once");
}

#[test]
fn a_stop_before_any_chunk_reads_nothing() {
    let mut s = FileStop::default();
    assert!(!s.admit(0, true));
    assert!(!s.admit(1, false));
}
