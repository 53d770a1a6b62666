//! Multi-process timely (`egizml run --processes P --process-id I --hostfile FILE`): two processes of
//! two workers each on 127.0.0.1 give the same outputs as one process of one worker.

use crate::common::*;
use egizml::testkit::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Writes a hostfile of `n` free 127.0.0.1 ports.
pub(crate) fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("hosts.txt");
    let lines: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port().expect("free port")))
        .collect();
    write_lines(&path, &lines);
    path
}

/// Starts process `id` of `processes` with `workers` workers each.
pub(crate) fn spawn_member(
    config: &Path,
    hosts: &Path,
    processes: usize,
    id: usize,
    workers: usize,
    log: &Path,
) -> Child {
    run_command(config, log)
        .args(["--workers", &workers.to_string()])
        .args(["--processes", &processes.to_string()])
        .args(["--process-id", &id.to_string()])
        .arg("--hostfile")
        .arg(hosts)
        .spawn()
        .expect("egizml run starts")
}

/// Waits for every child to exit successfully; returns each one's last stdout line (its summary).
pub(crate) fn wait_all(
    children: Vec<(Child, PathBuf)>,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut children: Vec<Option<(Child, PathBuf)>> = children.into_iter().map(Some).collect();
    let mut summaries: Vec<Option<serde_json::Value>> = vec![None; children.len()];
    while summaries.iter().any(Option::is_none) {
        for (i, slot) in children.iter_mut().enumerate() {
            let Some((child, log)) = slot.as_mut() else {
                continue;
            };
            if let Some(text) = exited(child, log, &format!("process {i}")) {
                summaries[i] = Some(summary(&text));
                *slot = None;
            }
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for (child, log) in children.iter_mut().flatten() {
                let _ = child.kill();
                logs += &std::fs::read_to_string(log).unwrap_or_default();
            }
            panic!("cluster did not finish within {timeout:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out.extend(summaries.into_iter().flatten());
    out
}

fn file_config(dir: &Path, name: &str, input: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "scores: true\nsource:\n  file:\n    path: {}\nsinks:\n  jsonl:\n    alerts: {name}-alerts.jsonl\n    scores: {name}-scores.jsonl\n",
            input.display()
        ),
    )
    .unwrap();
    path
}

/// By design the outputs are equal byte for byte, not only as sets: a file's epochs are its chunks
/// (every worker walks every chunk and decodes its own things' lines), each thing's readings reach
/// its one owning worker in file order wherever that worker runs, and the sink (worker 0 of process 0) writes each epoch's
/// outputs sorted by input position.
#[test]
fn two_processes_of_two_workers_write_the_same_bytes_as_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    // 5 chunks of 16,384 lines (epochs), each one's lines decoded by the 4 workers of their things.
    let (input, episodes) = simulate(dir.path(), 30, 75_000, 31);
    assert!(!episodes.is_empty());

    let single = file_config(dir.path(), "single", &input);
    let log = dir.path().join("single.log");
    let child = run_command(&single, &log)
        .args(["--workers", "1"])
        .spawn()
        .unwrap();
    let one = wait_all(vec![(child, log)], Duration::from_secs(300));

    let cluster = file_config(dir.path(), "cluster", &input);
    let hosts = hostfile(dir.path(), 2);
    let children = (0..2)
        .map(|id| {
            let log = dir.path().join(format!("cluster-{id}.log"));
            (spawn_member(&cluster, &hosts, 2, id, 2, &log), log)
        })
        .collect();
    let two = wait_all(children, Duration::from_secs(300));

    // Each process reports the points its own workers processed; together, every line once.
    let points =
        |s: &[serde_json::Value]| s.iter().map(|v| v["points"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(points(&one), 75_000);
    assert_eq!(points(&two), 75_000);
    assert!(
        two.iter().all(|s| s["points"].as_u64().unwrap() > 0),
        "both processes processed readings: {two:?}"
    );

    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let alerts = read("single-alerts.jsonl");
    assert!(
        alerts.iter().filter(|&&b| b == b'\n').count() > 10,
        "the input alerts"
    );
    assert!(
        read("cluster-alerts.jsonl") == alerts,
        "2x2 alerts differ from 1x1"
    );
    let scores = read("single-scores.jsonl");
    assert_eq!(scores.iter().filter(|&&b| b == b'\n').count(), 75_000);
    assert!(
        read("cluster-scores.jsonl") == scores,
        "2x2 scores differ from 1x1"
    );
}

#[test]
fn a_bad_hostfile_or_process_id_fails_fast_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = simulate(dir.path(), 2, 100, 1);
    let config = file_config(dir.path(), "bad", &input);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, "127.0.0.1:7001\nnot-an-address\n").unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let h = hosts.to_str().unwrap();
    let err = run(&["--processes", "2", "--hostfile", h]);
    assert!(err.contains("hosts.txt:2:"), "{err}");
    assert!(err.contains("not-an-address"), "{err}");
    std::fs::write(&hosts, "127.0.0.1:7001\n").unwrap();
    let err = run(&["--processes", "2", "--hostfile", h]);
    assert!(err.contains("1 address(es) for 2 processes"), "{err}");
    let err = run(&["--processes", "2", "--process-id", "2", "--hostfile", h]);
    assert!(err.contains("--process-id"), "{err}");
    let err = run(&["--processes", "2"]);
    assert!(err.contains("--hostfile"), "{err}");
}
