//! The `egizml` binary: parses the command line and runs a command from `egizml::commands`.

use clap::{Parser, Subcommand};
use egizml::commands::{
    bench, bench_models, bench_train, demo, eval, loadgen, models, replay, run as service,
    simulate, train,
};

/// Streaming anomaly detection and predictive maintenance for industrial telemetry.
#[derive(Parser)]
#[command(name = "egizml", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded default end to end: simulator -> pipeline -> SQLite store, REST and /metrics.
    Demo(demo::DemoArgs),
    /// Replay a JSONL file through the pipeline, deterministically.
    Replay(replay::ReplayArgs),
    /// Measure throughput and per-reading latency on a generated workload.
    Bench(bench::BenchArgs),
    /// Isolation Forest training time, model size, scoring and TreeSHAP cost on a generated matrix.
    BenchTrain(bench_train::BenchTrainArgs),
    /// Memory of many loaded registry models: trains them into a registry, loads them as the stream does.
    BenchModels(bench_models::BenchModelsArgs),
    /// Write labelled simulator telemetry to a JSONL file.
    Simulate(simulate::SimulateArgs),
    /// The service: sources and sinks from a service config (configs/service.yaml).
    Run(service::RunArgs),
    /// Produce simulator telemetry to Kafka or MQTT at a given rate (load tests).
    Loadgen(loadgen::LoadgenArgs),
    /// Train an anomaly model for a thing or an equipment class on history and register it.
    Train(train::TrainArgs),
    /// The model registry: list, show, activate, rollback.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Benchmark evaluations (C-MAPSS remaining useful life, ...).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
}

fn main() {
    init_tracing();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line on stderr, non-zero exit (DESIGN.md).
        eprintln!("egizml: {}", one_line(&e));
        std::process::exit(1);
    }
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGIZML_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("EGIZML_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => {
            let s = demo::demo(&args)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Replay(args) => {
            let (summary, report) = replay::replay(&args)?;
            for line in replay::describe(&summary, &report) {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Bench(args) => {
            let s = bench::bench(&args)?;
            for line in bench::describe(&s) {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::BenchTrain(args) => {
            let s = bench_train::bench_train(&args)?;
            println!(
                "Isolation Forest on {} x {}: trained in {:.2} s, model file {:.2} MB; per row: score {:.1} us, TreeSHAP explanation {:.1} us",
                s.rows, s.features, s.train_s, s.model_bytes as f64 / 1e6, s.score_us, s.explain_us
            );
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::BenchModels(args) => match (&args.registry, args.load_only) {
            (Some(dir), true) => {
                let r = bench_models::load_report(dir)?;
                println!("{}", serde_json::to_string(&r)?);
            }
            _ => {
                let s = bench_models::bench_models(&args)?;
                println!("{}", bench_models::describe(&s));
                println!("{}", serde_json::to_string(&s)?);
            }
        },
        Command::Train(args) => {
            let report = train::train(&args)?;
            for line in train::describe(&report) {
                println!("{line}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Models(cmd) => {
            for line in models::run(&cmd)? {
                println!("{line}");
            }
        }
        Command::Run(args) => {
            let summary = service::run(&args)?;
            println!("{summary}");
        }
        Command::Eval(cmd) => eval::run(&cmd)?,
        Command::Loadgen(args) => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            egizml::commands::stop_on_signal(std::sync::Arc::clone(&stop));
            let s = loadgen::loadgen(&args, stop)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Simulate(args) => {
            let episodes = simulate::simulate(&args)?;
            println!(
                "{}",
                serde_json::json!({"points": args.points, "things": args.things, "episodes": episodes.len(), "output": args.output})
            );
        }
    }
    Ok(())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
