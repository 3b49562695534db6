//! Running a target: replaying a corpus, the mutation loop, and the supervisor that survives
//! what the loop cannot catch (aborts, stack overflows, memory exhaustion, hangs) and keeps the
//! input that caused it.
//!
//! The worker writes every input to `<artifacts>/.current-<target>` before running it; when the
//! worker dies or hangs, the supervisor renames that file `crash-<target>-<hash>` (or
//! `timeout-...`). A panic (a broken property) kills the worker like any other crash.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::mutate::mutate;
use crate::rng::Rng;
use crate::targets::Target;

/// Exit code of a worker whose input ran longer than the per-input limit.
pub const HANG_EXIT: i32 = 77;

/// Most inputs kept in memory per run; the corpus directory keeps every new one regardless.
const MAX_POOL: usize = 4096;

/// Progress of the worker, for the statistics a panic prints.
static EXECS: AtomicU64 = AtomicU64::new(0);
static NEW: AtomicU64 = AtomicU64::new(0);

/// Outcomes sharing their first `KIND_PREFIX` characters are variants of one kind; at most
/// `MAX_VARIANTS` of a kind make an input new.
const KIND_PREFIX: usize = 14;
const MAX_VARIANTS: usize = 32;

/// How to run one target.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long to mutate, after the corpus was replayed.
    pub seconds: f64,
    /// The kept inputs; new ones are added here.
    pub corpus_dir: PathBuf,
    /// Where crashing inputs are kept.
    pub artifacts_dir: PathBuf,
    /// Seed of the mutation generator.
    pub seed: u64,
    /// Longest time one input may run.
    pub exec_timeout: Duration,
    /// Address-space limit of the worker, MiB (allocations beyond it abort the worker).
    pub memory_mb: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Inputs run (corpus replay included).
    pub execs: u64,
    /// Inputs added to the corpus.
    pub new: u64,
    /// Inputs in the corpus directory.
    pub corpus: usize,
    /// Seconds spent, corpus replay included (setup excluded).
    pub seconds: f64,
}

impl Stats {
    fn line(&self) -> String {
        format!(
            "stats execs={} new={} corpus={} seconds={:.3}",
            self.execs, self.new, self.corpus, self.seconds
        )
    }

    fn parse(line: &str) -> Option<Stats> {
        let rest = line.strip_prefix("stats ")?;
        let mut s = Stats::default();
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "execs" => s.execs = v.parse().ok()?,
                "new" => s.new = v.parse().ok()?,
                "corpus" => s.corpus = v.parse().ok()?,
                "seconds" => s.seconds = v.parse().ok()?,
                _ => {}
            }
        }
        Some(s)
    }
}

/// The outcome of [`supervise`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Last statistics the worker reported.
    pub stats: Stats,
    /// The kept crashing (or hanging) input, if the worker failed.
    pub crash: Option<PathBuf>,
    /// Why the worker failed.
    pub failure: Option<String>,
}

/// First 16 hex digits of the SHA-256 of `data`: names corpus and crash files.
pub fn short_hash(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a corpus directory, sorted by name (missing directory: none).
pub fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn write_new(dir: &Path, data: &[u8]) -> std::io::Result<bool> {
    let path = dir.join(short_hash(data));
    if path.exists() {
        return Ok(false);
    }
    std::fs::write(path, data)?;
    Ok(true)
}

/// Writes the target's generated seeds into `dir` (existing files are kept); returns how many
/// were new.
pub fn write_seeds(target: &mut dyn Target, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for seed in target.seeds() {
        if write_new(dir, &seed)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Runs every input in `files` in this process; a panic names the file and is passed on.
pub fn replay(target: &mut dyn Target, files: &[PathBuf]) -> usize {
    for f in files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(&data)));
        if let Err(p) = run {
            let exe = std::env::current_exe().unwrap_or_default();
            eprintln!(
                "{}: input {} failed (rerun it alone: {} replay {} {})",
                target.name(),
                f.display(),
                exe.display(),
                target.name(),
                f.display()
            );
            std::panic::resume_unwind(p);
        }
    }
    files.len()
}

/// The mutation loop, in this process: replays the corpus, then mutates until `seconds` have
/// passed, printing a statistics line every second and at the end. A broken property panics
/// (and the supervisor keeps the input).
pub fn work(target: &mut dyn Target, o: &RunOptions) -> std::io::Result<Stats> {
    limit_memory(o.memory_mb);
    std::fs::create_dir_all(&o.corpus_dir)?;
    std::fs::create_dir_all(&o.artifacts_dir)?;
    let current = File::create(current_path(&o.artifacts_dir, target.name()))?;
    let clock = Instant::now();
    let running_since = Arc::new(AtomicU64::new(0));
    watchdog(target.name(), clock, running_since.clone(), o.exec_timeout);

    let mut pool: Vec<Vec<u8>> = Vec::new();
    let files = corpus_files(&o.corpus_dir);
    if files.is_empty() {
        write_seeds(target, &o.corpus_dir)?;
    }
    for f in corpus_files(&o.corpus_dir) {
        pool.push(std::fs::read(f)?);
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }

    let mut seen: HashSet<String> = HashSet::new();
    let mut stats = Stats::default();
    let start = Instant::now();
    // A panic ends the worker: report how far it got first.
    let previous = std::panic::take_hook();
    let dir = o.corpus_dir.clone();
    std::panic::set_hook(Box::new(move |info| {
        let s = Stats {
            execs: EXECS.load(Ordering::Relaxed),
            new: NEW.load(Ordering::Relaxed),
            corpus: corpus_files(&dir).len(),
            seconds: start.elapsed().as_secs_f64(),
        };
        println!("{}", s.line());
        previous(info);
    }));
    let probe = Probe {
        current,
        clock,
        running_since,
    };
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for input in &pool {
        let outcome = probe.exec(target, input, &mut stats)?;
        for feature in outcome.split('|') {
            if seen.insert(feature.to_string()) {
                *kinds
                    .entry(feature.chars().take(KIND_PREFIX).collect())
                    .or_insert(0) += 1;
            }
        }
    }

    let mut rng = Rng::new(o.seed);
    let deadline = start + Duration::from_secs_f64(o.seconds.max(0.0));
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let dict = target.dictionary();
    let max_len = target.max_len();
    while Instant::now() < deadline {
        // Recent additions are the frontier: give them a third of the picks.
        let recent = pool.len().saturating_sub(16);
        let parent = if rng.one_in(3) {
            recent + rng.below(pool.len() - recent)
        } else {
            rng.below(pool.len())
        };
        let mut child = pool[parent].clone();
        if !(rng.one_in(3) && target.mutate(&mut child, &mut rng)) {
            mutate(&mut child, &pool, dict, max_len, &mut rng);
        }
        child.truncate(max_len);
        let outcome = probe.exec(target, &child, &mut stats)?;
        let mut novel = false;
        for feature in outcome.split('|') {
            if !seen.contains(feature) && seen.len() < 100_000 {
                // Messages that quote fuzzed text could otherwise make every input new.
                let kind: String = feature.chars().take(KIND_PREFIX).collect();
                let variants = kinds.entry(kind).or_insert(0);
                if *variants < MAX_VARIANTS {
                    *variants += 1;
                    seen.insert(feature.to_string());
                    novel = true;
                }
            }
        }
        if novel {
            if write_new(&o.corpus_dir, &child)? {
                stats.new += 1;
                NEW.store(stats.new, Ordering::Relaxed);
            }
            if pool.len() < MAX_POOL {
                pool.push(child);
            }
        }
        if Instant::now() >= next_report {
            stats.seconds = start.elapsed().as_secs_f64();
            stats.corpus = corpus_files(&o.corpus_dir).len();
            println!("{}", stats.line());
            next_report += Duration::from_secs(1);
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.corpus = corpus_files(&o.corpus_dir).len();
    println!("{}", stats.line());
    Ok(stats)
}

/// Runs inputs with the bookkeeping crash and hang reports need.
struct Probe {
    current: File,
    clock: Instant,
    running_since: Arc<AtomicU64>,
}

impl Probe {
    fn exec(
        &self,
        target: &mut dyn Target,
        data: &[u8],
        stats: &mut Stats,
    ) -> std::io::Result<String> {
        self.current.write_all_at(data, 0)?;
        self.current.set_len(data.len() as u64)?;
        self.running_since.store(
            self.clock.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        let outcome = target.run(data);
        self.running_since.store(0, Ordering::Relaxed);
        stats.execs += 1;
        EXECS.store(stats.execs, Ordering::Relaxed);
        Ok(outcome)
    }
}

fn current_path(artifacts: &Path, target: &str) -> PathBuf {
    artifacts.join(format!(".current-{target}"))
}

/// Ends the process when one input runs longer than `limit`: a hang is a finding.
fn watchdog(name: &'static str, clock: Instant, since: Arc<AtomicU64>, limit: Duration) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let s = since.load(Ordering::Relaxed);
            if s != 0 && clock.elapsed().as_millis() as u64 + 1 - s > limit.as_millis() as u64 {
                eprintln!("{name}: one input ran for more than {limit:?}");
                std::process::exit(HANG_EXIT);
            }
        }
    });
}

/// Caps the address space, so an allocation without bound aborts the worker (which the
/// supervisor reports with the input) instead of exhausting the machine.
fn limit_memory(mb: u64) {
    if mb == 0 {
        return;
    }
    let bytes = mb.saturating_mul(1 << 20);
    let limit = rustix::process::Rlimit {
        current: Some(bytes),
        maximum: None,
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::As, limit) {
        eprintln!("warning: cannot limit memory to {mb} MiB: {e}");
    }
}

/// Runs [`work`] for `target` in a child process (`exe worker ...`) and watches it: a worker
/// that dies, or outlives `seconds` by more than `grace` (setup, a slow last input), has its
/// current input kept in the artifacts directory.
pub fn supervise(
    exe: &Path,
    target: &str,
    o: &RunOptions,
    grace: Duration,
) -> std::io::Result<Report> {
    std::fs::create_dir_all(&o.artifacts_dir)?;
    let current = current_path(&o.artifacts_dir, target);
    let _ = std::fs::remove_file(&current);
    let mut child = Command::new(exe)
        .arg("worker")
        .arg(target)
        .arg("--seconds")
        .arg(o.seconds.to_string())
        .arg("--corpus")
        .arg(&o.corpus_dir)
        .arg("--artifacts")
        .arg(&o.artifacts_dir)
        .arg("--seed")
        .arg(o.seed.to_string())
        .arg("--timeout")
        .arg(o.exec_timeout.as_secs_f64().to_string())
        .arg("--memory-mb")
        .arg(o.memory_mb.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(s) = Stats::parse(&line) {
                let _ = tx.send(s);
            } else {
                println!("{line}");
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds.max(0.0)) + grace;
    let mut stats = Stats::default();
    let status = loop {
        while let Ok(s) = rx.try_recv() {
            stats = s;
        }
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(50));
    while let Ok(s) = rx.try_recv() {
        stats = s;
    }
    let failure = match status {
        Some(s) if s.success() => None,
        Some(s) if s.code() == Some(HANG_EXIT) => {
            Some(format!("an input ran longer than {:?}", o.exec_timeout))
        }
        Some(s) => Some(describe_exit(s)),
        None => Some(format!(
            "the worker did not finish within {:.0} s of the end of the run",
            grace.as_secs_f64()
        )),
    };
    let crash = match &failure {
        None => {
            let _ = std::fs::remove_file(&current);
            None
        }
        Some(_) => match std::fs::read(&current) {
            Ok(data) => {
                let kind = if status.and_then(|s| s.code()) == Some(HANG_EXIT) || status.is_none() {
                    "timeout"
                } else {
                    "crash"
                };
                let path = o
                    .artifacts_dir
                    .join(format!("{kind}-{target}-{}", short_hash(&data)));
                std::fs::rename(&current, &path)?;
                Some(path)
            }
            Err(_) => None,
        },
    };
    Ok(Report {
        stats,
        crash,
        failure,
    })
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(101), _) => "a panic (a property failed, or the code under test panicked)".into(),
        (Some(c), _) => format!("the worker exited with status {c}"),
        (None, Some(6)) => "an abort (allocation failure or a failed check)".into(),
        (None, Some(11)) => "a segmentation fault (stack overflow?)".into(),
        (None, Some(sig)) => format!("the worker was killed by signal {sig}"),
        (None, None) => "the worker failed".into(),
    }
}
