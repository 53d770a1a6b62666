//! History from a real InfluxDB 1.x (Debian's `influxdb`, started here on free 127.0.0.1 ports):
//! points written over the line protocol are loaded back through the HTTP query API, limited to the
//! default 30 days, gap-filled, cached as Parquet, and turned into a training matrix by a SQL feature set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use egizml::history::{load, HistoryQuery, HistorySource, InfluxSource};
use egizml::sql_features::{batch::feature_matrix, FeatureSet};

use crate::common::http_agent;
use crate::service::procs::{free_port, unavailable, wait_for};

struct Influxd {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Influxd {
    /// Creates `db` and writes `body` (line protocol, ms precision), retrying until the write is
    /// accepted: influxd answers /ping before its meta store is always ready, and a write to a
    /// database the server does not know yet is a 404 (seen once in CI). Panics with the last answer
    /// and the server's log if the write is not accepted within 30 s.
    fn create_database_and_write(&self, db: &str, body: &str) {
        let agent = http_agent(Duration::from_secs(10));
        let mut last = String::new();
        let written = wait_for(Duration::from_secs(30), || {
            let create = agent
                .post(format!("{}/query", self.url))
                .query("q", format!("CREATE DATABASE {db}"))
                .send_empty();
            last = match create {
                Ok(mut r) => format!("create: {} {}", r.status(), body_text(&mut r)),
                Err(e) => format!("create: {e}"),
            };
            let write = agent
                .post(format!("{}/write", self.url))
                .query("db", db)
                .query("precision", "ms")
                .send(body);
            match write {
                Ok(r) if r.status() == 204 => Some(()),
                Ok(mut r) => {
                    last = format!("{last}; write: {} {}", r.status(), body_text(&mut r));
                    None
                }
                Err(e) => {
                    last = format!("{last}; write: {e}");
                    None
                }
            }
        });
        if written.is_none() {
            let log =
                std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default();
            panic!("influxd did not accept the write within 30 s ({last}); its log:\n{log}");
        }
    }
}

fn body_text(r: &mut ureq::http::Response<ureq::Body>) -> String {
    r.body_mut().read_to_string().unwrap_or_default()
}

fn influxd_binary() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v influxd"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

fn start() -> Option<Influxd> {
    let Some(bin) = influxd_binary() else {
        return unavailable("influxd not found (Debian package `influxdb`)".into());
    };
    let dir = tempfile::tempdir().unwrap();
    let (http, rpc) = (free_port(), free_port());
    let d = dir.path().display();
    let config = format!(
        "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
         [meta]\n  dir = \"{d}/meta\"\n\
         [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
         [http]\n  enabled = true\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n\
         [monitor]\n  store-enabled = false\n\
         [continuous_queries]\n  enabled = false\n"
    );
    let conf = dir.path().join("influxdb.conf");
    std::fs::write(&conf, config).unwrap();
    let child = Command::new(bin)
        .args(["run", "-config"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("influxd.log")).unwrap())
        .spawn()
        .unwrap();
    let server = Influxd {
        child,
        url: format!("http://127.0.0.1:{http}"),
        dir,
    };
    let ping = format!("{}/ping", server.url);
    let up = wait_for(Duration::from_secs(30), || {
        ureq::get(&ping).call().ok().filter(|r| r.status() == 204)
    });
    assert!(up.is_some(), "influxd did not answer /ping within 30 s");
    Some(server)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn influxdb_history_loads_with_default_range_gap_fill_cache_and_features() {
    let Some(server) = start() else { return };
    // Two ovens, 60 readings each at 1 Hz ending a minute ago; oven-2 misses temp_zone_3 at 3 readings
    // in a row (filled) and oven-1 misses temp_zone_2 at 7 in a row (5 filled, 2 rows dropped). One
    // reading 40 days old lies outside the default 30-day range.
    let t0 = now_ms() - 120_000;
    let mut lines = Vec::new();
    for thing in ["oven-1", "oven-2"] {
        for i in 0..60i64 {
            let mut fields = vec![format!("temp_zone_1={}", 180.0 + i as f64 * 0.5)];
            if !(thing == "oven-1" && (20..27).contains(&i)) {
                fields.push(format!("temp_zone_2={}", 190.0 + (i % 5) as f64));
            }
            if !(thing == "oven-2" && (30..33).contains(&i)) {
                fields.push(format!("temp_zone_3={}", 188.0 - (i % 3) as f64));
            }
            lines.push(format!(
                "telemetry,thing_id={thing} {} {}",
                fields.join(","),
                t0 + i * 1000
            ));
        }
    }
    lines.push(format!(
        "telemetry,thing_id=oven-1 temp_zone_1=1,temp_zone_2=1,temp_zone_3=1 {}",
        t0 - 40 * 86_400_000
    ));
    server.create_database_and_write("plant", &lines.join("\n"));

    let cache = tempfile::tempdir().unwrap();
    let mut q = HistoryQuery::new(HistorySource::Influx(InfluxSource {
        url: server.url.clone(),
        database: "plant".into(),
        measurement: "telemetry".into(),
        user: None,
        password: None,
    }));
    q.cache_dir = Some(cache.path().to_path_buf());
    let b = load(&q).unwrap();
    assert_eq!(
        b.num_rows(),
        118,
        "120 recent readings minus 2 beyond the fill limit"
    );
    let things = b.column_by_name("thing_id").unwrap();
    let things = things.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(things.value(0), "oven-1");
    assert_eq!(things.value(117), "oven-2");
    let z2 = b.column_by_name("temp_zone_2").unwrap();
    let z2 = z2.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(z2.null_count(), 0);
    // oven-1 reading 20 (missing) takes reading 19's value.
    assert_eq!(z2.value(20), 190.0 + 4.0);
    let z3 = b.column_by_name("temp_zone_3").unwrap();
    let z3 = z3.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(z3.null_count(), 0);
    assert_eq!(z3.value(58 + 31), 188.0 - (29 % 3) as f64);

    // The cache answers the same query with the server gone.
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(cached.len(), 1);
    drop(server);
    assert_eq!(load(&q).unwrap(), b);

    // History -> training matrix through a shipped feature set.
    let set = FeatureSet::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/thermal.sql"),
    )
    .unwrap();
    let m = feature_matrix(&set, &[b]).unwrap();
    assert_eq!(m.columns, set.outputs);
    // The first reading of each thing has no previous one (lag) and one sample (stddev): dropped.
    assert_eq!(m.x.nrows(), 116);
    assert_eq!(m.dropped_rows, 2);
    assert!(m.labels.is_none());
}
