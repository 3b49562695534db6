//! The fuzz runner.
//!
//! ```text
//! fuzz                                  replay every kept input of every target (what `cargo test` runs)
//! fuzz run TARGET [--seconds N] [--corpus DIR] [--artifacts DIR] [--seed N] [--timeout S] [--memory-mb N]
//! fuzz seed [TARGET...]                 add the generated seed inputs to the corpus
//! fuzz replay TARGET FILE...            run inputs (a kept crash) in this process, showing the panic
//! fuzz list                             the targets
//! ```
//!
//! `run` fuzzes in a child process (`worker`) and keeps the input of a crash or hang in the
//! artifacts directory; it exits 1 when it found one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ca_fuzz::engine::{self, RunOptions};
use ca_fuzz::rng::Rng;
use ca_fuzz::{NAMES, make};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn options(args: &[String]) -> Result<(String, RunOptions), String> {
    let target = args.first().ok_or("name a target")?.clone();
    if !NAMES.contains(&target.as_str()) {
        return Err(format!(
            "unknown target {target:?} (targets: {})",
            NAMES.join(", ")
        ));
    }
    let mut o = RunOptions {
        seconds: 60.0,
        corpus_dir: fuzz_dir().join("corpus").join(&target),
        artifacts_dir: fuzz_dir().join("artifacts"),
        seed: Rng::seed_from_clock(),
        exec_timeout: Duration::from_secs(30),
        memory_mb: 4096,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--seconds" => o.seconds = num(value)?,
            "--corpus" => o.corpus_dir = PathBuf::from(value),
            "--artifacts" => o.artifacts_dir = PathBuf::from(value),
            "--seed" => o.seed = value.parse().map_err(|_| format!("--seed: {value}"))?,
            "--timeout" => o.exec_timeout = Duration::from_secs_f64(num(value)?),
            "--memory-mb" => o.memory_mb = num(value)? as u64,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok((target, o))
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let (target, o) = options(args)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!("{target}: seed {}", o.seed);
    let started = Instant::now();
    // Setup (a throwaway CA, keys) and one slow last input are allowed beyond the run time.
    let grace = Duration::from_secs(30) + o.exec_timeout;
    let report = engine::supervise(&exe, &target, &o, grace).map_err(|e| e.to_string())?;
    let s = &report.stats;
    let rate = if s.seconds > 0.0 {
        s.execs as f64 / s.seconds
    } else {
        0.0
    };
    println!(
        "{target:<13} execs {:>9}  {:>8.0}/s  crashes {}  corpus {} (+{})  {:.1} s",
        s.execs,
        rate,
        usize::from(report.failure.is_some()),
        s.corpus,
        s.new,
        started.elapsed().as_secs_f64()
    );
    match (&report.failure, &report.crash) {
        (None, _) => Ok(ExitCode::SUCCESS),
        (Some(why), crash) => {
            match crash {
                Some(p) => println!(
                    "{target}: CRASH: {why}; input kept in {} (replay: {} replay {target} {})",
                    p.display(),
                    exe.display(),
                    p.display()
                ),
                None => println!("{target}: CRASH: {why} (during setup: no input)"),
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn worker(args: &[String]) -> Result<ExitCode, String> {
    let (name, o) = options(args)?;
    let mut target = make(&name).ok_or("unknown target")?;
    engine::work(target.as_mut(), &o).map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn seed(args: &[String]) -> Result<ExitCode, String> {
    let names: Vec<&str> = if args.is_empty() {
        NAMES.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for name in names {
        let mut t = make(name).ok_or(format!("unknown target {name:?}"))?;
        let dir = fuzz_dir().join("corpus").join(name);
        let n = engine::write_seeds(t.as_mut(), &dir).map_err(|e| e.to_string())?;
        println!("{name}: {n} new seed inputs in {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_files(args: &[String]) -> Result<ExitCode, String> {
    let name = args.first().ok_or("name a target")?;
    let mut t = make(name).ok_or(format!("unknown target {name:?}"))?;
    let files: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
    for f in &files {
        let data = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        println!("{}: {}", f.display(), t.run(&data));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every kept input of every target, once: the regression test `cargo test` runs.
fn replay_all() -> Result<ExitCode, String> {
    let started = Instant::now();
    let mut total = 0;
    for name in NAMES {
        let t0 = Instant::now();
        let mut t = make(name).ok_or("unknown target")?;
        let files = engine::corpus_files(&fuzz_dir().join("corpus").join(name));
        let n = engine::replay(t.as_mut(), &files);
        println!(
            "fuzz corpus {name}: {n} inputs replayed in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        total += n;
    }
    println!(
        "fuzz corpus: {total} inputs of {} targets replayed in {:.2} s",
        NAMES.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("run") => run(rest),
        Some("worker") => worker(rest),
        Some("seed") => seed(rest),
        Some("replay") => replay_files(rest),
        Some("list") => {
            println!("{}", NAMES.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        // No arguments, or the options and filters cargo test passes on: replay the corpus.
        _ => replay_all(),
    };
    result.unwrap_or_else(|e| {
        eprintln!("fuzz: {e}");
        ExitCode::from(2)
    })
}
