//! `cargo bench --bench context`: the context optimizer against the naive payload (every item
//! that shares a keyword with the task, as Mnemosyne's skill discovery does), on tokens per query
//! and recall of the items that are actually relevant.
//!
//! The corpus is generated from a seed: 30 tools/topics × 16 failure aspects, each with several
//! phrasings. Every item (memory, skill document, project note) is written about one
//! (topic, aspect) pair, with filler sentences, mentions of other topics and aspects (distractors
//! that share keywords), and random importance and age. An item is relevant to a query exactly
//! when it was written about the query's (topic, aspect) pair: the ground truth comes from the
//! generator, not from any scoring. Token counts are o200k_base for both sides.
//! Writes `target/bench/context.json` (or under `CARGO_TARGET_DIR`).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tetrarch::context::{
    Candidate, Category, ContextConfig, ContextOptimizer, ContextRequest, O200kCounter,
    TokenCounter, keyword_overlap_baseline, rendered_item_tokens,
};

/// The reported run; the other seeds show how much the figures move with the corpus.
const SEEDS: [u64; 3] = [0x7e7a_a2c4, 1, 2];
const MEMORIES: usize = 1_500;
const SKILLS: usize = 300;
const FILES: usize = 300;
const QUERIES: usize = 120;
const DEFAULT_WINDOW: usize = 200_000;
/// Small windows, where the budget binds and large items are compressed.
const SMALL_WINDOWS: [usize; 3] = [32_000, 8_000, 2_000];

/// (tool, topic words: the first is the one every item about the topic names).
const TOPICS: [(&str, [&str; 3]); 30] = [
    ("blender.render", ["blender", "cycles", "render"]),
    ("shell.magick", ["imagemagick", "montage", "composite"]),
    ("cdn.upload", ["cdn", "bucket", "upload"]),
    ("cuda.compile", ["nvrtc", "ptx", "kernel"]),
    ("git.merge", ["git", "rebase", "merge"]),
    ("cargo.build", ["cargo", "rustc", "crate"]),
    ("pip.install", ["pip", "wheel", "virtualenv"]),
    ("docker.build", ["docker", "dockerfile", "container"]),
    ("postgres.query", ["postgres", "sql", "vacuum"]),
    ("redis.cache", ["redis", "eviction", "keyspace"]),
    ("ffmpeg.encode", ["ffmpeg", "codec", "bitrate"]),
    ("s3.sync", ["s3", "multipart", "prefix"]),
    ("npm.publish", ["npm", "tarball", "registry"]),
    ("k8s.deploy", ["kubernetes", "pod", "rollout"]),
    ("terraform.apply", ["terraform", "tfstate", "provider"]),
    ("pytest.run", ["pytest", "fixture", "assertion"]),
    ("nginx.reload", ["nginx", "vhost", "reverse proxy"]),
    ("ssh.exec", ["ssh", "keypair", "bastion"]),
    ("llm.prompt", ["llm", "prompt", "completion"]),
    ("latex.pdf", ["latex", "pdflatex", "typeset"]),
    ("blender.bake", ["bake", "texture", "uv"]),
    ("audio.mix", ["audio", "mixdown", "loudness"]),
    ("mcp.fs.read_file", ["filesystem", "directory", "symlink"]),
    ("scoring.flip", ["flip", "ssim", "metric"]),
    ("redb.compact", ["redb", "compaction", "table"]),
    ("web.fetch", ["http", "fetch", "url"]),
    ("cron.schedule", ["cron", "crontab", "schedule"]),
    ("email.send", ["smtp", "email", "attachment"]),
    ("onnx.infer", ["onnx", "inference", "runtime"]),
    ("gpu.profile", ["nsight", "profiler", "occupancy"]),
];

/// Failure aspects, each with three phrasings.
const ASPECTS: [[&str; 3]; 16] = [
    ["timeout", "deadline exceeded", "hangs forever"],
    ["out of memory", "oom killer", "memory exhausted"],
    ["permission denied", "access forbidden", "unauthorized"],
    [
        "version mismatch",
        "incompatible version",
        "upgrade required",
    ],
    ["encoding error", "utf8 decoding", "mojibake"],
    ["disk full", "no space left", "quota exceeded"],
    ["connection refused", "network unreachable", "dns failure"],
    [
        "missing option",
        "misconfigured flag",
        "typo in the configuration",
    ],
    ["slow throughput", "latency spike", "sluggish"],
    ["segfault", "core dump", "crashes"],
    ["flaky", "intermittent failure", "transient error"],
    ["colour banding", "wrong gamma", "washed out colours"],
    ["race condition", "deadlock", "lock contention"],
    ["expired token", "rotated credentials", "stale secret"],
    ["corrupted output", "truncated file", "checksum mismatch"],
    ["missing logs", "verbose logging", "log rotation"],
];

const GENERIC: [&str; 10] = [
    "output",
    "input",
    "build",
    "workspace",
    "log",
    "batch",
    "pipeline",
    "release",
    "checkpoint",
    "staging",
];

const CORE: [&str; 8] = [
    "{P} run hit {A} while processing the {G} step.",
    "When {T} reports {A}, check the {G} before retrying.",
    "We saw {A} in {T} again; the {G} was the cause.",
    "Fix for {A} with {T}: raise the limit and rerun the {G}.",
    "{T} shows {A} right after the {G} changes.",
    "Symptom: {A} from {P} during the nightly {G}.",
    "The {A} with {T} went away once the {G} was rebuilt from scratch.",
    "Root cause of the {A}: {T} kept a stale {G} around.",
];

const FILLER: [&str; 8] = [
    "The team reviewed the {G} and agreed to keep the current approach.",
    "Remember to note the {G} location in the handover.",
    "This was discussed in the weekly sync and left as is.",
    "Numbers looked normal for the rest of the {G}.",
    "Ask before changing anything in the shared {G}.",
    "The previous attempt is archived next to the {G}.",
    "Someone should clean up the old {G} folders eventually.",
    "Results were compared with last week's {G} and matched.",
];

/// Mentions of another topic and/or aspect: keywords shared with other queries.
const DISTRACTOR: [&str; 4] = [
    "Unrelated: {T2} had {A2} last month, which is a different problem.",
    "Not to be confused with the {A2} we once had in {T}.",
    "The same kind of {A} also showed up with {T2}, see its own notes.",
    "{T2} is configured separately and was not touched.",
];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Label {
    topic: usize,
    aspect: usize,
}

struct Corpus {
    memories: Vec<Candidate>,
    files: Vec<Candidate>,
    /// (file name, text) of the skill documents, written to a folder.
    skills: Vec<(String, String)>,
    /// Source → label.
    labels: std::collections::HashMap<String, Label>,
    queries: Vec<(Label, String)>,
}

fn fill(template: &str, rng: &mut SmallRng, label: Label, aspect_form: usize) -> String {
    let (_, words) = TOPICS[label.topic];
    let mut other_topic = rng.random_range(0..TOPICS.len());
    if other_topic == label.topic {
        other_topic = (other_topic + 1) % TOPICS.len();
    }
    let mut other_aspect = rng.random_range(0..ASPECTS.len());
    if other_aspect == label.aspect {
        other_aspect = (other_aspect + 1) % ASPECTS.len();
    }
    let sentence = template
        .replace("{P}", words[0])
        .replace("{T}", words.choose(rng).unwrap())
        .replace("{A}", ASPECTS[label.aspect][aspect_form % 3])
        .replace("{T2}", TOPICS[other_topic].1.choose(rng).unwrap())
        .replace("{A2}", ASPECTS[other_aspect].choose(rng).unwrap())
        .replace("{G}", GENERIC.choose(rng).unwrap());
    let mut chars = sentence.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => sentence,
    }
}

/// Two core sentences with two different phrasings of the aspect, plus filler and distractors.
fn sentences(rng: &mut SmallRng, label: Label, core: usize, other: usize) -> Vec<String> {
    let first_form = rng.random_range(0..3);
    let mut out: Vec<String> = (0..core)
        .map(|i| fill(CORE.choose(rng).unwrap(), rng, label, first_form + i))
        .collect();
    for _ in 0..other {
        let template = if rng.random_bool(0.3) {
            DISTRACTOR.choose(rng).unwrap()
        } else {
            FILLER.choose(rng).unwrap()
        };
        let form = rng.random_range(0..3);
        out.push(fill(template, rng, label, form));
    }
    out
}

fn random_label(rng: &mut SmallRng) -> Label {
    Label {
        topic: rng.random_range(0..TOPICS.len()),
        aspect: rng.random_range(0..ASPECTS.len()),
    }
}

fn generate(seed: u64) -> Corpus {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut labels = std::collections::HashMap::new();
    let mut memories = Vec::new();
    for i in 0..MEMORIES {
        let label = random_label(&mut rng);
        let other = rng.random_range(0..3);
        let mut parts = sentences(&mut rng, label, 2, other);
        // Shuffle so the core sentences are not always first.
        for j in (1..parts.len()).rev() {
            parts.swap(j, rng.random_range(0..=j));
        }
        let source = format!("memory:{i:05}");
        labels.insert(source.clone(), label);
        memories.push(Candidate {
            category: Category::General,
            source,
            text: parts.join(" "),
            importance: rng.random_range(0.0..1.0),
            age: Duration::from_secs(rng.random_range(0..90 * 24 * 3600)),
        });
    }
    let mut skills = Vec::new();
    for i in 0..SKILLS {
        let label = random_label(&mut rng);
        let (_, words) = TOPICS[label.topic];
        let mut doc = format!(
            "# {} and {}\n\n## When to use\n\n{}\n\n## Symptoms\n\n",
            words[0],
            ASPECTS[label.aspect][0],
            sentences(&mut rng, label, 2, 1).join(" ")
        );
        for sentence in sentences(&mut rng, label, 2, 2) {
            doc.push_str(&format!("- {sentence}\n"));
        }
        doc.push_str("\n## Steps\n\n");
        let steps = rng.random_range(5..9);
        for (n, sentence) in sentences(&mut rng, label, 2, steps).into_iter().enumerate() {
            doc.push_str(&format!("{}. {sentence}\n", n + 1));
        }
        let notes = rng.random_range(10..30);
        doc.push_str(&format!(
            "\n## Notes\n\n{}\n",
            sentences(&mut rng, label, 0, notes).join(" ")
        ));
        let name = format!("{}-{i:03}.md", words[0].replace(' ', "-"));
        labels.insert(format!("skill:{name}"), label);
        skills.push((name, doc));
    }
    let mut files = Vec::new();
    for i in 0..FILES {
        let label = random_label(&mut rng);
        let (_, words) = TOPICS[label.topic];
        let other = rng.random_range(4..14);
        let text = format!(
            "# Notes on {}\n\n{}\n",
            words[0],
            sentences(&mut rng, label, 2, other).join("\n")
        );
        let source = format!("file:docs/{}/{i:03}.md", words[0].replace(' ', "-"));
        labels.insert(source.clone(), label);
        files.push(Candidate {
            category: Category::Project,
            source,
            text,
            importance: rng.random_range(0.0..1.0),
            age: Duration::from_secs(rng.random_range(0..90 * 24 * 3600)),
        });
    }
    // Queries: distinct (topic, aspect) pairs with at least two relevant items.
    let mut counts = std::collections::HashMap::new();
    for label in labels.values() {
        *counts.entry(*label).or_insert(0usize) += 1;
    }
    let mut pairs: Vec<Label> = counts
        .iter()
        .filter(|&(_, &n)| n >= 2)
        .map(|(label, _)| *label)
        .collect();
    pairs.sort_by_key(|l| (l.topic, l.aspect));
    for j in (1..pairs.len()).rev() {
        pairs.swap(j, rng.random_range(0..=j));
    }
    let queries = pairs
        .into_iter()
        .take(QUERIES)
        .map(|label| {
            let (tool, words) = TOPICS[label.topic];
            let first = rng.random_range(0..3);
            let text = format!(
                "{tool} target={} mode={} out=out/{}-{}.json\nfeedback: \"{}, earlier {}\"",
                words[0],
                words.choose(&mut rng).unwrap(),
                words[0].replace(' ', "-"),
                rng.random_range(1..100),
                ASPECTS[label.aspect][first],
                ASPECTS[label.aspect][(first + 1) % 3],
            );
            (label, text)
        })
        .collect();
    Corpus {
        memories,
        files,
        skills,
        labels,
        queries,
    }
}

#[derive(Default)]
struct Totals {
    tokens: usize,
    items: usize,
    relevant: usize,
    retrieved_relevant: usize,
    recall_sum: f64,
    compressed_relevant: usize,
}

impl Totals {
    fn add(&mut self, sources: &[(String, usize, bool)], relevant: &HashSet<String>) {
        let hits = sources
            .iter()
            .filter(|(s, _, _)| relevant.contains(s))
            .count();
        self.tokens += sources.iter().map(|(_, t, _)| t).sum::<usize>();
        self.items += sources.len();
        self.relevant += relevant.len();
        self.retrieved_relevant += hits;
        self.recall_sum += hits as f64 / relevant.len() as f64;
        self.compressed_relevant += sources
            .iter()
            .filter(|(s, _, c)| *c && relevant.contains(s))
            .count();
    }
    fn recall(&self) -> f64 {
        self.retrieved_relevant as f64 / self.relevant as f64
    }
}

struct Outcome {
    naive: Totals,
    optimizer: Totals,
    queries: usize,
    items: usize,
    corpus_tokens: usize,
    latency_us: (f64, f64),
}

fn run(
    seed: u64,
    min_relevance: f64,
    window: usize,
    counter: &Arc<dyn TokenCounter>,
    dir: &Path,
) -> Outcome {
    let corpus = generate(seed);
    let skills_dir: PathBuf = dir.join(format!("skills-{seed}"));
    std::fs::create_dir_all(&skills_dir).unwrap();
    for (name, text) in &corpus.skills {
        std::fs::write(skills_dir.join(name), text).unwrap();
    }
    let mut config = ContextConfig {
        skills_dir: Some(skills_dir),
        ..ContextConfig::default()
    };
    config.ranking.min_relevance = min_relevance;
    config.budget.window = window;
    let (optimizer, warnings) = ContextOptimizer::new(config, counter.clone()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");

    let mut candidates: Vec<Candidate> = corpus.memories.clone();
    candidates.extend(corpus.files.iter().cloned());
    let agent_candidates = candidates.clone();
    candidates.extend(optimizer.skills());
    let tokens: std::collections::HashMap<&str, usize> = candidates
        .iter()
        .map(|c| (c.source.as_str(), counter.count(&c.text)))
        .collect();
    let corpus_tokens = tokens.values().sum();
    // Each item as the task would receive it, heading and text counted together, as ours are
    // charged.
    let rendered: std::collections::HashMap<&str, usize> = candidates
        .iter()
        .map(|c| {
            let count = rendered_item_tokens(counter.as_ref(), &c.source, &c.text);
            (c.source.as_str(), count)
        })
        .collect();

    let (mut naive, mut ours) = (Totals::default(), Totals::default());
    let mut latencies = Vec::new();
    for (q, (label, query)) in corpus.queries.iter().enumerate() {
        let relevant: HashSet<String> = corpus
            .labels
            .iter()
            .filter(|(_, l)| *l == label)
            .map(|(s, _)| s.clone())
            .collect();
        let picked: Vec<(String, usize, bool)> = keyword_overlap_baseline(query, &candidates)
            .into_iter()
            .map(|c| {
                // Sent the same way as ours: each item under its `## SOURCE` heading.
                (c.source.clone(), rendered[c.source.as_str()], false)
            })
            .collect();
        naive.add(&picked, &relevant);

        let request = ContextRequest {
            session: format!("q{q}"),
            task_id: format!("t{q}"),
            query: query.clone(),
            memories: agent_candidates.clone(),
            ..ContextRequest::default()
        };
        let start = Instant::now();
        let payload = optimizer.build(&request);
        latencies.push(start.elapsed().as_micros() as u64);
        assert!(payload.session_tokens <= window);
        let sent: Vec<(String, usize, bool)> = payload
            .items
            .iter()
            .map(|i| (i.source.clone(), i.tokens, i.compressed))
            .collect();
        ours.add(&sent, &relevant);
        optimizer.forget_session(&request.session);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64;
    Outcome {
        naive,
        optimizer: ours,
        queries: corpus.queries.len(),
        items: candidates.len(),
        corpus_tokens,
        latency_us: (at(0.5), at(0.99)),
    }
}

fn main() {
    let counter: Arc<dyn TokenCounter> = Arc::new(O200kCounter::new().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    let default_cut = ContextConfig::default().ranking.min_relevance;
    for (i, &seed) in SEEDS.iter().enumerate() {
        let outcome = run(seed, default_cut, DEFAULT_WINDOW, &counter, dir.path());
        let n = outcome.queries as f64;
        let naive_tokens = outcome.naive.tokens as f64 / n;
        let our_tokens = outcome.optimizer.tokens as f64 / n;
        let reduction = 1.0 - our_tokens / naive_tokens;
        if i == 0 {
            println!(
                "context optimizer vs naive keyword payload: {} items ({MEMORIES} memories, {SKILLS} skills, {FILES} files, {} tokens), {} queries, seed {seed:#x}, window 200k, o200k_base",
                outcome.items, outcome.corpus_tokens, outcome.queries
            );
            println!(
                "{:<24} {:>14} {:>10} {:>14} {:>12} {:>10}",
                "payload", "tokens/query", "recall", "mean recall", "items/query", "precision"
            );
            for (name, totals) in [
                ("naive (keyword overlap)", &outcome.naive),
                ("optimizer", &outcome.optimizer),
            ] {
                println!(
                    "{:<24} {:>14.0} {:>9.1}% {:>13.1}% {:>12.1} {:>9.1}%",
                    name,
                    totals.tokens as f64 / n,
                    100.0 * totals.recall(),
                    100.0 * totals.recall_sum / n,
                    totals.items as f64 / n,
                    100.0 * totals.retrieved_relevant as f64 / totals.items.max(1) as f64,
                );
            }
            let met = reduction >= 0.45 && outcome.optimizer.recall() >= 0.95;
            println!(
                "reduction: {:.1}% fewer tokens at {:.1}% recall (target ≥ 45% at ≥ 95%: {}); relevant items sent compressed: {}; build p50 {:.0} µs, p99 {:.0} µs",
                100.0 * reduction,
                100.0 * outcome.optimizer.recall(),
                if met { "met" } else { "MISSED" },
                outcome.optimizer.compressed_relevant,
                outcome.latency_us.0,
                outcome.latency_us.1,
            );
        } else {
            println!(
                "seed {seed:#x}: naive {naive_tokens:.0} tokens/query at {:.1}% recall; optimizer {our_tokens:.0} at {:.1}%; reduction {:.1}%",
                100.0 * outcome.naive.recall(),
                100.0 * outcome.optimizer.recall(),
                100.0 * reduction
            );
        }
        runs.push(serde_json::json!({
            "seed": seed,
            "items": outcome.items,
            "corpus_tokens": outcome.corpus_tokens,
            "queries": outcome.queries,
            "relevant_per_query": outcome.naive.relevant as f64 / n,
            "naive": {
                "tokens_per_query": naive_tokens,
                "recall": outcome.naive.recall(),
                "mean_recall": outcome.naive.recall_sum / n,
                "items_per_query": outcome.naive.items as f64 / n,
            },
            "optimizer": {
                "tokens_per_query": our_tokens,
                "recall": outcome.optimizer.recall(),
                "mean_recall": outcome.optimizer.recall_sum / n,
                "items_per_query": outcome.optimizer.items as f64 / n,
                "relevant_sent_compressed": outcome.optimizer.compressed_relevant,
                "build_p50_us": outcome.latency_us.0,
                "build_p99_us": outcome.latency_us.1,
            },
            "token_reduction": reduction,
            "target": { "token_reduction": 0.45, "recall": 0.95 },
            "met": reduction >= 0.45 && outcome.optimizer.recall() >= 0.95,
        }));
    }
    // The trade-off the relevance cut-off makes, on the reported seed.
    println!("relevance cut-off sweep (seed {:#x}):", SEEDS[0]);
    println!(
        "{:>14} {:>14} {:>10} {:>12}",
        "min_relevance", "tokens/query", "recall", "reduction"
    );
    let mut sweep = Vec::new();
    for cut in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6] {
        let outcome = run(SEEDS[0], cut, DEFAULT_WINDOW, &counter, dir.path());
        let n = outcome.queries as f64;
        let reduction = 1.0 - outcome.optimizer.tokens as f64 / outcome.naive.tokens as f64;
        println!(
            "{:>14} {:>14.0} {:>9.1}% {:>11.1}%{}",
            cut,
            outcome.optimizer.tokens as f64 / n,
            100.0 * outcome.optimizer.recall(),
            100.0 * reduction,
            if cut == default_cut {
                "  (default)"
            } else {
                ""
            }
        );
        sweep.push(serde_json::json!({
            "min_relevance": cut,
            "tokens_per_query": outcome.optimizer.tokens as f64 / n,
            "recall": outcome.optimizer.recall(),
            "token_reduction": reduction,
        }));
    }
    // The same queries when the budget binds: fewer tokens, compressed items, lower recall.
    println!("small windows (seed {:#x}, default cut-off):", SEEDS[0]);
    println!(
        "{:>8} {:>14} {:>10} {:>20}",
        "window", "tokens/query", "recall", "relevant compressed"
    );
    let mut small = Vec::new();
    for window in SMALL_WINDOWS {
        let outcome = run(SEEDS[0], default_cut, window, &counter, dir.path());
        let n = outcome.queries as f64;
        println!(
            "{:>8} {:>14.0} {:>9.1}% {:>20}",
            window,
            outcome.optimizer.tokens as f64 / n,
            100.0 * outcome.optimizer.recall(),
            outcome.optimizer.compressed_relevant
        );
        small.push(serde_json::json!({
            "window": window,
            "tokens_per_query": outcome.optimizer.tokens as f64 / n,
            "recall": outcome.optimizer.recall(),
            "relevant_sent_compressed": outcome.optimizer.compressed_relevant,
        }));
    }
    let json = serde_json::json!({
        "small_windows": small,
        "suite": "context",
        "counter": counter.name(),
        "runs": runs,
        "min_relevance_sweep": sweep,
    });
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("context.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
