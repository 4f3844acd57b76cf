//! The context optimizer: budgets, pass-on of unused shares, ranking, de-duplication,
//! compression, incremental payloads, the monitor, bad input.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tetrarch::context::{
    BudgetConfig, CalibratedCounter, Candidate, Category, ContextConfig, ContextError, ContextItem,
    ContextMonitor, ContextOptimizer, ContextRequest, O200kCounter, TokenCounter, content_hash,
    item_overhead, keyword_overlap_baseline, preserve_snapshot, rendered_item_tokens,
};
use tetrarch::store::{Namespace, SearchOptions, Store, StoreConfig};
use unicode_segmentation::UnicodeSegmentation;

fn counter() -> Arc<dyn TokenCounter> {
    Arc::new(O200kCounter::new().unwrap())
}

fn optimizer(config: ContextConfig) -> ContextOptimizer {
    let (optimizer, warnings) = ContextOptimizer::new(config, counter()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    optimizer
}

fn with_window(window: usize) -> ContextConfig {
    ContextConfig {
        budget: BudgetConfig {
            window,
            ..BudgetConfig::default()
        },
        ..ContextConfig::default()
    }
}

fn memory(category: Category, source: &str, text: &str) -> Candidate {
    Candidate {
        category,
        source: source.to_string(),
        text: text.to_string(),
        importance: 0.5,
        age: Duration::from_secs(3600),
    }
}

fn request(session: &str, query: &str, memories: Vec<Candidate>) -> ContextRequest {
    ContextRequest {
        session: session.to_string(),
        task_id: "t1".to_string(),
        query: query.to_string(),
        memories,
        ..ContextRequest::default()
    }
}

fn tokens_of(items: &[ContextItem], category: Category) -> usize {
    items
        .iter()
        .filter(|i| i.category == category)
        .map(|i| i.tokens)
        .sum()
}

/// A paragraph about the shader topic, `n` sentences long, each sentence numbered.
fn shader_text(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("{prefix} note {i}: the shader spills registers on sm_90 at high occupancy.")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn o200k_counts_real_tokens() {
    let counter = O200kCounter::new().unwrap();
    assert_eq!(counter.name(), "o200k_base");
    assert_eq!(counter.count(""), 0);
    assert_eq!(counter.count("hello world"), 2);
    // Special-token text is counted as ordinary text, never as one special token.
    assert!(counter.count("<|endoftext|>") > 1);
}

#[test]
fn calibrated_counter_fits_real_usage() {
    let exact = O200kCounter::new().unwrap();
    let samples: Vec<String> = (0..20)
        .map(|i| format!("Sample {i}: the renderer writes frames to disk and the compositor reads them back. {}", "word ".repeat(i)))
        .collect();
    let fitted =
        CalibratedCounter::fit(samples.iter().map(|s| (s.as_str(), exact.count(s)))).unwrap();
    assert_eq!(fitted.name(), "calibrated");
    let held_out = "The compositor reads the rendered frames back from disk and writes the poster.";
    let (estimate, real) = (fitted.count(held_out) as f64, exact.count(held_out) as f64);
    assert!(
        (estimate - real).abs() / real < 0.35,
        "{estimate} vs {real}"
    );
    assert!(matches!(
        CalibratedCounter::fit(std::iter::empty()),
        Err(ContextError::Calibration(_))
    ));
    assert!(CalibratedCounter::fit([("", 3)]).is_err());
    assert!(CalibratedCounter::with_chars_per_token(0.0).is_err());
    assert_eq!(
        CalibratedCounter::with_chars_per_token(4.0)
            .unwrap()
            .count("abcdefgh"),
        2
    );
}

#[test]
fn config_defaults_parse_and_errors_name_the_field() {
    let config = ContextConfig::from_toml_str("").unwrap();
    assert_eq!(config, ContextConfig::default());
    assert_eq!(config.budget.window, 200_000);
    assert_eq!(
        (
            config.budget.critical,
            config.budget.skills,
            config.budget.project,
            config.budget.general
        ),
        (0.4, 0.3, 0.2, 0.1)
    );
    assert_eq!(config.alert_ratio, 0.75);

    let config = ContextConfig::from_toml_str(
        "skills_dir = \"skills\"\n[budget]\nwindow = 32000\ncritical = 0.5\ngeneral = 0.0\n",
    )
    .unwrap();
    assert_eq!(config.budget.window, 32_000);
    assert_eq!(config.budget.critical, 0.5);
    assert_eq!(config.budget.skills, 0.3);

    let error = |text: &str| ContextConfig::from_toml_str(text).unwrap_err().to_string();
    assert!(error("[budget]\nskills = 1.5\n").contains("budget.skills"));
    assert!(error("[budget]\nwindow = 0\n").contains("budget.window"));
    assert!(error("[budget]\ncritical = 0.9\n").contains("at most 1"));
    assert!(error("alert_ratio = 0\n").contains("alert_ratio"));
    assert!(error("[budget]\nwindw = 10\n").contains("windw"));
    assert!(error("[ranking]\nmin_relevance = -1\n").contains("ranking.min_relevance"));
}

#[test]
fn optimizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ContextOptimizer>();
    assert_send_sync::<ContextMonitor>();
    assert_send_sync::<O200kCounter>();
    assert_send_sync::<CalibratedCounter>();
}

#[test]
fn relevant_candidates_are_sent_and_unrelated_ones_are_not() {
    let optimizer = optimizer(ContextConfig::default());
    let payload = optimizer.build(&request(
        "s",
        "shader.compile kernel=blur.cu arch=sm_90 registers",
        vec![
            memory(
                Category::General,
                "memory:a",
                "The blur shader spills registers on sm_90; cap them at 64.",
            ),
            memory(
                Category::General,
                "memory:b",
                "The CDN upload needs the bucket name in lower case.",
            ),
            memory(
                Category::General,
                "memory:c",
                "Poster colours were approved by the client.",
            ),
        ],
    ));
    let sources: Vec<&str> = payload.items.iter().map(|i| i.source.as_str()).collect();
    assert_eq!(sources, ["memory:a"]);
    assert_eq!(payload.tokens, payload.items[0].tokens);
    assert_eq!(payload.session_tokens, payload.tokens);
    assert_eq!(payload.window, 200_000);
    assert!(payload.alert.is_none());
}

/// A window of one and a half items of `tokens`, all of it for general memories: room for one.
fn room_for_one_general(tokens: usize) -> ContextConfig {
    ContextConfig {
        budget: BudgetConfig {
            window: tokens + tokens / 2,
            critical: 0.0,
            skills: 0.0,
            project: 0.0,
            general: 1.0,
        },
        ..ContextConfig::default()
    }
}

#[test]
fn importance_and_recency_rank_equally_relevant_candidates() {
    // Room for one of two equally relevant memories: the important, recent one wins.
    let text_a = shader_text("a", 4);
    let text_b = shader_text("b", 4);
    let tokens = O200kCounter::new().unwrap().count(&text_a);
    let optimizer = optimizer(room_for_one_general(tokens));
    let mut old = memory(Category::General, "memory:old", &text_a);
    old.importance = 0.1;
    old.age = Duration::from_secs(90 * 24 * 3600);
    let mut fresh = memory(Category::General, "memory:fresh", &text_b);
    fresh.importance = 0.9;
    fresh.age = Duration::from_secs(60);
    let payload = optimizer.build(&request("s", "shader registers sm_90", vec![old, fresh]));
    assert_eq!(payload.items[0].source, "memory:fresh");
    assert!(!payload.items[0].compressed);
    assert!(payload.session_tokens <= payload.window);
}

#[test]
fn a_nan_importance_ranks_as_none_not_above_everything() {
    let text_a = shader_text("a", 4);
    let tokens = O200kCounter::new().unwrap().count(&text_a);
    let optimizer = optimizer(room_for_one_general(tokens));
    let mut nan = memory(Category::General, "memory:nan", &text_a);
    nan.importance = f32::NAN;
    let mut known = memory(Category::General, "memory:known", &shader_text("b", 4));
    known.importance = 0.5;
    let payload = optimizer.build(&request("s", "shader registers sm_90", vec![nan, known]));
    assert_eq!(payload.items[0].source, "memory:known");
}

#[test]
fn a_long_task_text_of_unknown_words_still_ranks_by_the_words_after_them() {
    let config = with_window(200);
    let optimizer = optimizer(config);
    let relevant = memory(
        Category::General,
        "memory:plasma",
        "plasma renders too dark",
    );
    let other = memory(
        Category::General,
        "memory:other",
        "the cache warmed up twice",
    );
    let ids: Vec<String> = (0..80).map(|i| format!("qzx{i}")).collect();
    let query = format!("{} plasma", ids.join(" "));
    let payload = optimizer.build(&request("s", &query, vec![other, relevant]));
    assert_eq!(payload.items[0].source, "memory:plasma", "{payload:?}");
}

/// The same after the optimizer has seen those ids in an earlier request: known terms that no
/// candidate of this request holds used to take the query's places, and `plasma` was cut.
#[test]
fn words_of_earlier_requests_do_not_take_the_places_of_this_requests_words() {
    let optimizer = optimizer(with_window(200));
    let ids: Vec<String> = (0..80).map(|i| format!("qzx{i}")).collect();
    let earlier = memory(Category::General, "memory:ids", &ids.join(" "));
    optimizer.build(&request("first", "qzx0", vec![earlier]));
    let relevant = memory(
        Category::General,
        "memory:plasma",
        "plasma renders too dark",
    );
    let other = memory(
        Category::General,
        "memory:other",
        "the cache warmed up twice",
    );
    let query = format!("{} plasma", ids.join(" "));
    let payload = optimizer.build(&request("second", &query, vec![other, relevant]));
    assert_eq!(payload.items[0].source, "memory:plasma", "{payload:?}");
}

#[test]
fn budget_shares_are_respected_when_every_category_wants_more() {
    let window = 4_000;
    let optimizer = optimizer(with_window(window));
    let mut memories = Vec::new();
    for i in 0..30 {
        for category in [Category::Skills, Category::Project, Category::General] {
            memories.push(memory(
                category,
                &format!("{}:{i}", category.as_str()),
                &shader_text(&format!("{}-{i}", category.as_str()), 3),
            ));
        }
    }
    let mut req = request("s", "shader registers sm_90 occupancy", memories);
    req.upstream = (0..30)
        .map(|i| (format!("up{i}"), shader_text(&format!("up-{i}"), 3)))
        .collect();
    let payload = optimizer.build(&req);
    assert!(payload.tokens <= window, "{} > {window}", payload.tokens);
    let budget = BudgetConfig::default();
    // Each gets about its share; more only by what the others left of theirs (a few tokens
    // that compression or an item too large for the rest could not use pass on).
    let share = |c: Category| (budget.share(c) * window as f64) as usize;
    let left = |c: Category| share(c).saturating_sub(tokens_of(&payload.items, c));
    for category in [Category::Skills, Category::Project, Category::General] {
        let used = tokens_of(&payload.items, category);
        let left_by_others: usize = Category::ALL
            .into_iter()
            .filter(|&c| c != category)
            .map(left)
            .sum();
        assert!(
            used <= share(category) + left_by_others,
            "{category:?} used {used} of its {} (+{left_by_others} left by the others)",
            share(category)
        );
        assert!(
            used * 10 >= share(category) * 9,
            "{category:?} got only {used}"
        );
    }
    // Critical items are all sent, compressed to share what the window has left.
    assert_eq!(
        payload
            .items
            .iter()
            .filter(|i| i.category == Category::Critical)
            .count(),
        30
    );
    assert!(
        payload
            .warnings
            .iter()
            .any(|w| w.contains("smaller than the critical items"))
    );
}

/// `count` general memories of `sentences` sentences each about the shader.
fn general_memories(count: usize, sentences: usize) -> Vec<Candidate> {
    (0..count)
        .map(|i| {
            memory(
                Category::General,
                &format!("memory:{i}"),
                &shader_text(&i.to_string(), sentences),
            )
        })
        .collect()
}

#[test]
fn unused_shares_are_passed_on() {
    // Only general candidates: they may use far more than general's 10% of the window.
    let window = 4_000;
    let optimizer = optimizer(with_window(window));
    let memories = general_memories(40, 3);
    let payload = optimizer.build(&request("s", "shader registers sm_90", memories));
    let general = tokens_of(&payload.items, Category::General);
    assert!(
        general > window / 10 * 5,
        "general got only {general} of {window}"
    );
    assert!(payload.tokens <= window);
    assert!(payload.warnings.is_empty(), "{:?}", payload.warnings);
}

/// What the critical share leaves once the upstream outputs are in passes on too: they are
/// held back to be shared fairly, and what they did not use was lost to the other categories.
#[test]
fn what_upstream_outputs_leave_of_their_share_is_passed_on() {
    let window = 4_000;
    let optimizer = optimizer(with_window(window));
    let memories = general_memories(40, 10);
    let alone = optimizer.build(&request(
        "alone",
        "shader registers sm_90",
        memories.clone(),
    ));
    let mut with_upstream = request("upstream", "shader registers sm_90", memories);
    with_upstream.upstream = vec![("up".to_owned(), "shader registers: 96".to_owned())];
    let payload = optimizer.build(&with_upstream);
    let upstream = tokens_of(&payload.items, Category::Critical);
    assert!(upstream > 0, "{:?}", payload.items);
    let general = tokens_of(&payload.items, Category::General);
    let general_alone = tokens_of(&alone.items, Category::General);
    // The small upstream output costs the memories about its own size, not the 40% share.
    assert!(
        general + upstream + 64 >= general_alone,
        "memories got {general} beside a {upstream}-token upstream output, {general_alone} alone"
    );
    assert!(payload.tokens <= window);
}

#[test]
fn duplicates_are_sent_once() {
    let optimizer = optimizer(ContextConfig::default());
    let text = "The blur shader spills registers on sm_90.";
    let payload = optimizer.build(&request(
        "s",
        "shader registers",
        vec![
            memory(Category::General, "memory:a", text),
            memory(
                Category::General,
                "memory:b",
                "The  blur shader\nspills registers on sm_90.",
            ),
            memory(Category::Skills, "skill:c.md", text),
        ],
    ));
    assert_eq!(payload.items.len(), 1, "{:?}", payload.items);
    assert_eq!(payload.items[0].hash, content_hash(text));
}

#[test]
fn upstream_outputs_with_the_same_text_are_each_sent_under_their_own_task() {
    let optimizer = optimizer(ContextConfig::default());
    let mut req = request(
        "s",
        "link",
        vec![memory(Category::General, "memory:m", "build ok")],
    );
    req.upstream = vec![
        ("a".into(), "build ok".into()),
        ("b".into(), "build ok".into()),
    ];
    let payload = optimizer.build(&req);
    let sources: Vec<&str> = payload.items.iter().map(|i| i.source.as_str()).collect();
    // The memory with the same text is a duplicate; the two tasks are not.
    assert_eq!(sources, ["task:a", "task:b"]);
}

#[test]
fn the_rendered_payload_fits_the_window_it_is_counted_against() {
    let counter = counter();
    for window in [60, 200, 1_000] {
        let optimizer = optimizer(with_window(window));
        let mut req = request("s", "shader registers", Vec::new());
        req.upstream = (0..3)
            .map(|i| (format!("stage-{i}"), shader_text(&format!("s{i}"), 4)))
            .collect();
        let payload = optimizer.build(&req);
        let rendered = payload.render();
        let counted = counter.count(&rendered);
        // Headings are charged: the count of the text as sent is what the payload says, within
        // the window.
        assert!(counted <= window, "{counted} > {window}:\n{rendered}");
        assert_eq!(counted, payload.tokens);
        assert_eq!(payload.items.len(), 3, "{window}: {:?}", payload.warnings);
    }
}

#[test]
fn an_upstream_output_without_word_breaks_is_cut_not_dropped() {
    let optimizer = optimizer(with_window(40));
    let mut req = request("s", "decode", Vec::new());
    let blob: String = (0..800)
        .map(|i| {
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64],
            )
        })
        .collect();
    req.upstream = vec![("blob".into(), blob.clone())];
    let payload = optimizer.build(&req);
    assert_eq!(payload.items.len(), 1, "{:?}", payload.warnings);
    let item = &payload.items[0];
    assert!(item.compressed);
    let kept = item.text.trim_end_matches('…').trim_end();
    assert!(!kept.is_empty() && blob.starts_with(kept), "{}", item.text);
    assert!(payload.tokens <= 40);
}

#[test]
fn every_upstream_output_gets_a_fair_part_when_they_do_not_all_fit() {
    // Thirty outputs of ~60 tokens against a 1,000-token window: taken whole in order, the
    // first ones left the last nothing.
    let optimizer = optimizer(with_window(1_000));
    let mut req = request("s", "shader registers", Vec::new());
    req.upstream = (0..30)
        .map(|i| (format!("up{i}"), shader_text(&format!("up-{i}"), 3)))
        .collect();
    let payload = optimizer.build(&req);
    assert_eq!(payload.items.len(), 30, "{:?}", payload.warnings);
    let smallest = payload.items.iter().map(|i| i.tokens).min().unwrap();
    let largest = payload.items.iter().map(|i| i.tokens).max().unwrap();
    assert!(largest <= 2 * smallest, "{smallest}..{largest}");
}

/// Every word of `extract` (outside elision marks) is a whole word of `original`, and its
/// sentences occur in `original` in the same order.
fn assert_extract_of(extract: &str, original: &str) {
    let words: std::collections::HashSet<&str> = original.unicode_words().collect();
    for word in extract.unicode_words() {
        assert!(
            words.contains(word),
            "{word:?} is not a whole word of the original"
        );
    }
    let mut position = 0;
    for part in extract.split('…') {
        for sentence in part.split_sentence_bounds() {
            let sentence = sentence.trim();
            if sentence.is_empty() {
                continue;
            }
            let found = original[position..]
                .find(sentence)
                .unwrap_or_else(|| panic!("{sentence:?} out of order or not in the original"));
            position += found + sentence.len();
        }
    }
}

#[test]
fn large_items_are_compressed_to_relevant_sentences_in_order() {
    let mut text = String::new();
    for i in 0..40 {
        if i % 10 == 3 {
            text.push_str(&format!(
                "Step {i}: the shader spills registers on sm_90, so cap maxrregcount. "
            ));
        } else {
            text.push_str(&format!(
                "Step {i}: the poster layout uses a twelve column grid with generous margins. "
            ));
        }
    }
    let config = ContextConfig {
        budget: BudgetConfig {
            window: 200,
            ..BudgetConfig::default()
        },
        ..ContextConfig::default()
    };
    let optimizer = optimizer(config);
    let payload = optimizer.build(&request(
        "s",
        "shader registers sm_90",
        vec![memory(Category::Skills, "skill:gpu.md", &text)],
    ));
    let item = &payload.items[0];
    assert!(item.compressed);
    assert!(item.tokens <= 200);
    assert_eq!(item.hash, content_hash(&text));
    for i in [3, 13, 23, 33] {
        assert!(item.text.contains(&format!("Step {i}:")), "{}", item.text);
    }
    assert!(!item.text.contains("column grid"), "{}", item.text);
    assert_extract_of(&item.text, &text);
}

#[test]
fn a_window_smaller_than_the_critical_items_warns_and_compresses_them() {
    let outputs: Vec<(String, String)> = (0..3)
        .map(|i| {
            let text = (0..30)
                .map(|j| {
                    format!(
                        "Frame {j} of render {i} finished in {} seconds without errors.",
                        j + 3
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            (format!("render-{i}"), text)
        })
        .collect();
    let optimizer = optimizer(with_window(150));
    let mut req = request("s", "shell.magick compose", Vec::new());
    req.upstream = outputs.clone();
    let payload = optimizer.build(&req);
    assert!(payload.session_tokens <= 150, "{}", payload.session_tokens);
    assert_eq!(payload.items.len(), 3, "every upstream output is sent");
    for (item, (id, text)) in payload.items.iter().zip(&outputs) {
        assert_eq!(item.source, format!("task:{id}"));
        assert!(item.compressed);
        assert!(item.tokens >= 30, "fair share, got {}", item.tokens);
        // No sentence mentions the task: truncated at a sentence boundary from the start.
        assert!(item.text.starts_with("Frame 0 of render"), "{}", item.text);
        assert_extract_of(&item.text, text);
    }
    assert_eq!(payload.warnings.len(), 1, "{:?}", payload.warnings);
    assert!(payload.warnings[0].contains("smaller than the critical items"));
}

#[test]
fn a_sentence_too_long_for_the_window_is_cut_between_words() {
    let text = (0..400)
        .map(|i| format!("token{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let optimizer = optimizer(with_window(50));
    let mut req = request("s", "anything", Vec::new());
    req.upstream = vec![("up".into(), text.clone())];
    let payload = optimizer.build(&req);
    let item = &payload.items[0];
    assert!(item.compressed);
    assert!(item.tokens <= 50 && item.tokens > 20, "{}", item.tokens);
    assert!(item.text.starts_with("token0 token1 "));
    assert_extract_of(&item.text, &text);
    let last = item
        .text
        .trim_end_matches('…')
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap();
    assert!(text.split(' ').any(|w| w == last), "cut mid-word: {last:?}");
}

#[test]
fn a_window_of_one_token_does_not_panic() {
    let optimizer = optimizer(with_window(1));
    let mut req = request(
        "s",
        "render",
        vec![memory(Category::General, "memory:a", "render the poster")],
    );
    req.upstream = vec![("up".into(), "The render finished.".into())];
    let payload = optimizer.build(&req);
    assert!(payload.session_tokens <= 1);
    assert!(!payload.warnings.is_empty());
}

#[test]
fn a_session_never_holds_more_than_its_window() {
    // A memory takes most of the window in the first payload (its own share plus what the
    // empty categories pass on); what later payloads add must fit what is left, whatever the
    // shares of their own categories would allow.
    let window = 300;
    let optimizer = optimizer(with_window(window));
    let count = |text: &str| counter().count(text);
    let n = (1..60)
        .find(|&n| count(&shader_text("big", n)) * 10 >= window * 8)
        .unwrap();
    let big = shader_text("big", n);
    assert!(count(&big) <= window, "{} tokens", count(&big));
    let first = optimizer.build(&request(
        "s",
        "shader sm_90 registers",
        vec![memory(Category::General, "memory:big", &big)],
    ));
    assert_eq!(first.items.len(), 1, "{:?}", first.warnings);
    assert!(first.session_tokens * 10 >= window * 8);
    // Critical items (their share alone is 40% of the window) and a skill-sized memory.
    let mut second = request(
        "s",
        "shader sm_90 registers",
        vec![memory(
            Category::Skills,
            "skill:x",
            &shader_text("skill", 4),
        )],
    );
    second.upstream = vec![("up".into(), shader_text("upstream", 4))];
    let second = optimizer.build(&second);
    assert!(
        second.session_tokens <= window,
        "the session holds {} tokens of a {window}-token window: {:?}",
        second.session_tokens,
        second.items
    );
    assert_eq!(second.session_tokens, optimizer.session_tokens("s"));
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("upstream") || w.contains("up")),
        "{:?}",
        second.warnings
    );
}

#[test]
fn incremental_payloads_send_only_changes_and_reference_the_rest() {
    let optimizer = optimizer(ContextConfig::default());
    let memories = vec![
        memory(
            Category::General,
            "memory:a",
            "The blur shader spills registers on sm_90.",
        ),
        memory(
            Category::General,
            "memory:b",
            "Shader builds for sm_90 need CUDA 12.",
        ),
    ];
    let mut req = request("s", "shader sm_90", memories);
    req.upstream = vec![("up".into(), "Compiled blur.cu for sm_90.".into())];
    let first = optimizer.build(&req);
    assert_eq!(first.items.len(), 3);
    assert!(first.references.is_empty());

    let second = optimizer.build(&req);
    assert!(second.items.is_empty(), "{:?}", second.items);
    // All it sends is the line naming what the session holds.
    let rendered = second.render();
    assert!(
        rendered.starts_with("## already in your context\n"),
        "{rendered}"
    );
    assert_eq!(second.tokens, counter().count(&rendered));
    assert_eq!(second.references.len(), 3);
    // The line stays in the session's context too.
    assert_eq!(second.session_tokens, first.session_tokens + second.tokens);

    // One memory changes: only it is sent; the others are references.
    req.memories[1].text = "Shader builds for sm_90 need CUDA 12.4 or later.".into();
    let third = optimizer.build(&req);
    assert_eq!(third.items.len(), 1);
    assert_eq!(third.items[0].source, "memory:b");
    assert_eq!(third.references.len(), 2);
    assert_eq!(third.session_tokens, second.session_tokens + third.tokens);
    assert_eq!(third.tokens, counter().count(&third.render()));

    // Another session starts from nothing.
    req.session = "other".into();
    assert_eq!(optimizer.build(&req).items.len(), 3);
    assert_eq!(optimizer.session_snapshot("s").len(), 4);
}

#[test]
fn monitor_alerts_once_per_crossing() {
    let monitor = ContextMonitor::new(0.75);
    assert!(monitor.record("s", 10, 100).is_none());
    let alert = monitor.record("s", 76, 100).unwrap();
    assert_eq!(
        (alert.session.as_str(), alert.used, alert.window),
        ("s", 76, 100)
    );
    assert!((alert.ratio - 0.76).abs() < 1e-9);
    for used in [80, 90, 100, 75] {
        assert!(
            monitor.record("s", used, 100).is_none(),
            "alerted again at {used}"
        );
    }
    assert!(
        monitor.record("other", 99, 100).is_some(),
        "sessions are separate"
    );
    assert!(monitor.record("s", 74, 100).is_none());
    assert!(
        monitor.record("s", 75, 100).is_some(),
        "re-armed after dropping below"
    );
}

#[test]
fn builds_alert_once_and_compaction_rearms_after_preserving() {
    let optimizer = optimizer(ContextConfig {
        budget: BudgetConfig {
            window: 400,
            critical: 1.0,
            skills: 0.0,
            project: 0.0,
            general: 0.0,
        },
        ..ContextConfig::default()
    });
    let mut alerts = 0;
    let mut req = request("s", "render", Vec::new());
    for i in 0..12 {
        req.upstream = vec![(
            format!("up{i}"),
            format!("Render {i} finished: {}.", "frame ok ".repeat(16)),
        )];
        let payload = optimizer.build(&req);
        assert!(payload.session_tokens <= 400);
        if let Some(alert) = &payload.alert {
            alerts += 1;
            assert!(alert.ratio >= 0.75 && alert.used == payload.session_tokens);
        }
    }
    assert_eq!(alerts, 1);
    let held = optimizer.session_snapshot("s");
    assert_eq!(
        held.iter().map(|i| i.tokens).sum::<usize>(),
        optimizer.session_tokens("s")
    );

    optimizer.compact("s");
    assert_eq!(optimizer.session_tokens("s"), 0);
    assert!(optimizer.session_snapshot("s").is_empty());
    let mut again = 0;
    for i in 0..12 {
        req.upstream = vec![(
            format!("again{i}"),
            format!("Render {i} redone: {}.", "frame ok ".repeat(16)),
        )];
        again += usize::from(optimizer.build(&req).alert.is_some());
    }
    assert_eq!(again, 1, "re-armed by the compaction");
    optimizer.forget_session("s");
    assert!(optimizer.session_snapshot("s").is_empty());
}

#[tokio::test]
async fn the_snapshot_is_preserved_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let optimizer = optimizer(ContextConfig::default());
    let mut req = request(
        "s1",
        "shader sm_90",
        vec![memory(
            Category::General,
            "memory:a",
            "The blur shader spills registers on sm_90.",
        )],
    );
    req.upstream = vec![("up".into(), "Compiled the quokka kernel for sm_90.".into())];
    optimizer.build(&req);
    let snapshot = optimizer.session_snapshot("s1");
    let ids = preserve_snapshot(&store, Namespace::project("demo").unwrap(), "s1", &snapshot)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let hits = store.search("quokka", &SearchOptions::default());
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.summary.as_deref(), Some("task:up"));
    assert!(
        hits[0]
            .memory
            .tags
            .contains(&"context-snapshot".to_string())
    );
    optimizer.compact("s1");
    assert_eq!(optimizer.session_tokens("s1"), 0);

    // An item larger than the store takes is kept by its start; the items after it are kept.
    let small = Store::open(
        dir.path().join("small.redb"),
        StoreConfig {
            max_content_bytes: 64,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let item = |source: &str, text: String| ContextItem {
        category: Category::Critical,
        source: source.into(),
        tokens: 1,
        hash: content_hash(&text),
        text,
        compressed: false,
    };
    let items = [
        item("task:big", "é".repeat(100)),
        item("task:after", "the quokka after".into()),
    ];
    let ids = preserve_snapshot(&small, Namespace::project("demo").unwrap(), "s2", &items)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(small.get(ids[0]).unwrap().content, "é".repeat(32));
}

#[test]
fn bad_skill_files_are_skipped_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let skills = dir.path().join("skills");
    std::fs::create_dir_all(skills.join("gpu")).unwrap();
    std::fs::write(
        skills.join("gpu/registers.md"),
        "# Registers\nCap shader registers on sm_90.",
    )
    .unwrap();
    std::fs::write(skills.join("notes.txt"), "not a skill").unwrap();
    std::fs::write(skills.join("huge.md"), "shader ".repeat(2_000)).unwrap();
    std::fs::write(skills.join("binary.md"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("missing"), skills.join("dangling.md")).unwrap();
    let config = ContextConfig {
        skills_dir: Some(skills.clone()),
        max_file_bytes: 4_096,
        ..ContextConfig::default()
    };
    let (optimizer, warnings) = ContextOptimizer::new(config, counter()).unwrap();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("huge.md") && w.contains("max_file_bytes"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("binary.md") && w.contains("cannot be read"))
    );
    assert!(warnings.iter().any(|w| w.contains("dangling.md")));
    let skills_loaded: Vec<String> = optimizer.skills().into_iter().map(|s| s.source).collect();
    assert_eq!(skills_loaded, ["skill:gpu/registers.md"]);
    let payload = optimizer.build(&request("s", "shader registers", Vec::new()));
    assert_eq!(payload.items.len(), 1);
    assert_eq!(payload.items[0].category, Category::Skills);

    let missing = ContextConfig {
        skills_dir: Some(dir.path().join("nowhere")),
        ..ContextConfig::default()
    };
    let (_, warnings) = ContextOptimizer::new(missing, counter()).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("nowhere") && warnings[0].contains("cannot be read"));
}

#[test]
fn named_project_files_are_read_and_bad_ones_warn() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("scene.toml");
    std::fs::write(&good, "light = \"dusk\"\nexposure = 2").unwrap();
    let big = dir.path().join("big.log");
    std::fs::write(&big, "x".repeat(5_000)).unwrap();
    let optimizer = optimizer(ContextConfig {
        max_file_bytes: 1_000,
        ..ContextConfig::default()
    });
    let mut req = request("s", "blender.render unrelated words", Vec::new());
    // `/dev/zero` reports no size: it was read until memory ran out.
    req.project_files = vec![
        good.clone(),
        big.clone(),
        dir.path().join("absent.txt"),
        "/dev/zero".into(),
    ];
    let payload = optimizer.build(&req);
    assert_eq!(
        payload.items.len(),
        1,
        "a named file is sent whatever its relevance"
    );
    assert_eq!(payload.items[0].source, format!("file:{}", good.display()));
    assert_eq!(payload.items[0].category, Category::Project);
    assert_eq!(payload.warnings.len(), 3, "{:?}", payload.warnings);
    assert!(
        payload
            .warnings
            .iter()
            .any(|w| w.contains("/dev/zero: not a regular file"))
    );
    assert!(
        payload
            .warnings
            .iter()
            .any(|w| w.contains("big.log") && w.contains("max_file_bytes"))
    );
    assert!(payload.warnings.iter().any(|w| w.contains("absent.txt")));
}

#[test]
fn the_keyword_baseline_takes_everything_sharing_a_keyword() {
    let candidates = vec![
        memory(Category::General, "a", "Rendering the poster at dusk."),
        memory(Category::General, "b", "The CDN bucket is public."),
        memory(Category::General, "c", "What is this and that?"),
    ];
    let picked: Vec<&str> = keyword_overlap_baseline("render the poster and that", &candidates)
        .into_iter()
        .map(|c| c.source.as_str())
        .collect();
    assert_eq!(picked, ["a"], "stop words are not keywords");
    assert!(keyword_overlap_baseline("the and", &candidates).is_empty());
}

#[test]
fn critical_items_use_shares_the_others_leave() {
    // Upstream outputs worth ~70% of the window, nothing else: sent whole, no warning.
    let window = 1_000;
    let counter = O200kCounter::new().unwrap();
    let optimizer = optimizer(with_window(window));
    let mut req = request("s", "compose", Vec::new());
    let mut total = 0;
    for i in 0..7 {
        let text = format!("Render {i} done: {}", "frame written ok. ".repeat(20));
        // Each item is charged with its `## task:ID` heading.
        total += rendered_item_tokens(&counter, &format!("task:r{i}"), &text);
        req.upstream.push((format!("r{i}"), text));
    }
    assert!(total > window * 4 / 10 && total <= window, "{total}");
    let payload = optimizer.build(&req);
    assert_eq!(payload.items.len(), 7);
    assert!(payload.items.iter().all(|i| !i.compressed));
    assert_eq!(payload.tokens, total);
    assert!(payload.warnings.is_empty(), "{:?}", payload.warnings);
}

#[tokio::test]
async fn memories_become_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut new =
        tetrarch::store::NewMemory::new(Namespace::project("demo").unwrap(), "cap registers");
    new.importance = 10;
    let id = store.store(new).await.unwrap();
    let memory = store.get(id).unwrap();
    let later = tetrarch::store::Timestamp::from_millis(memory.updated_at.as_millis() + 5_000);
    let candidate = Candidate::from_memory(&memory, later);
    assert_eq!(candidate.source, format!("memory:{id}"));
    assert_eq!(candidate.category, Category::General);
    assert_eq!(candidate.importance, 1.0);
    assert_eq!(candidate.age, Duration::from_secs(5));
    assert_eq!(candidate.text, "cap registers");
}

#[test]
fn an_item_is_charged_what_its_render_costs() {
    // Counted on `## task:a\n` + `\n\n` with nothing between, the heading's newline and the
    // blank line after the text make one o200k token; between them in a real render, the
    // text keeps them apart and they cost two.
    let counter = O200kCounter::new().unwrap();
    for text in [
        "no newline",
        "release 1 notes: fixed the crash",
        "{\"a\": 1}",
        "\nx\n",
        "",
    ] {
        let rendered = format!("## task:a\n{text}\n\n");
        assert_eq!(
            rendered_item_tokens(&counter, "task:a", text),
            counter.count(&rendered),
            "{text:?}"
        );
        assert!(
            item_overhead(&counter, "task:a") + counter.count(text) >= counter.count(&rendered),
            "{text:?}"
        );
    }
    // Text that starts and ends with a word: the heading counted apart is exact.
    assert_eq!(
        item_overhead(&counter, "task:a") + counter.count("no newline"),
        counter.count("## task:a\nno newline\n\n")
    );
}

#[test]
fn upstream_outputs_are_charged_what_the_task_receives() {
    // Two outputs with no newline at either end: charged 12 tokens, rendered 14, before.
    let optimizer = optimizer(ContextConfig::default());
    let mut req = request("s", "notes", Vec::new());
    req.upstream = vec![
        ("a".into(), "no newline".into()),
        ("b".into(), "no newline".into()),
    ];
    let payload = optimizer.build(&req);
    assert_eq!(payload.items.len(), 2);
    let counted = counter().count(&payload.render());
    assert_eq!(payload.tokens, counted);
    assert_eq!(payload.session_tokens, counted);

    // Eight release notes against windows around their size: what the task receives always
    // fits (at 104 it was 112 tokens, with nothing compressed and no warning).
    for window in 80..=130 {
        let optimizer = optimizer_with(with_window(window), counter());
        let mut req = request("s", "release notes", Vec::new());
        req.upstream = (0..8)
            .map(|i| {
                (
                    format!("r{i}"),
                    format!("release {i} notes: fixed the crash"),
                )
            })
            .collect();
        let payload = optimizer.build(&req);
        let counted = counter().count(&payload.render());
        assert!(
            counted <= window,
            "{window}: {counted}\n{}",
            payload.render()
        );
        assert_eq!(payload.tokens, counted, "{window}");
        if payload.items.iter().any(|i| i.compressed) || payload.items.len() < 8 {
            assert!(!payload.warnings.is_empty(), "{window}");
        }
    }
}

fn optimizer_with(config: ContextConfig, counter: Arc<dyn TokenCounter>) -> ContextOptimizer {
    let (optimizer, warnings) = ContextOptimizer::new(config, counter).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    optimizer
}

/// Pieces the generated item texts are made of: words, unicode, code, and whitespace or
/// punctuation that can meet a heading's newline or the blank line after the text.
const PIECES: &[&str] = &[
    "",
    "\n",
    "\n\n",
    " ",
    "  \n",
    "\r\n",
    "\t",
    "{",
    "}",
    "\"shader\": 1,",
    "no newline",
    "The shader spills registers.",
    " release notes: fixed the crash",
    "日本語のテキスト。",
    "émigré café",
    "🚀 launch",
    "```rust\nfn main() {}\n```",
    "- item\n- item",
    "a/b/",
    "…",
    "42",
    "'s",
    "## heading",
    "#",
];

fn generated_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..10).prop_map(|p| p.concat())
}

/// Builds `request` `builds` times in one session and checks every payload against the
/// render: within what the window has left, and charged what the render costs (exactly with
/// o200k, at least with an estimate, whose rounding only adds).
fn check_payloads(
    counter: Arc<dyn TokenCounter>,
    exact: bool,
    window: usize,
    req: &ContextRequest,
    builds: usize,
) -> Result<(), TestCaseError> {
    let optimizer = optimizer_with(with_window(window), counter.clone());
    let mut held = 0;
    for build in 0..builds {
        let payload = optimizer.build(req);
        let rendered = payload.render();
        let counted = counter.count(&rendered);
        let context = format!("build {build}, window {window}:\n{rendered}");
        if exact {
            prop_assert_eq!(payload.tokens, counted, "{}", context);
            for item in &payload.items {
                prop_assert_eq!(
                    item.tokens,
                    rendered_item_tokens(counter.as_ref(), &item.source, &item.text)
                );
            }
        } else {
            prop_assert!(payload.tokens >= counted, "{}", context);
        }
        prop_assert!(
            held + payload.tokens <= window,
            "{} + {}: {}",
            held,
            payload.tokens,
            context
        );
        prop_assert_eq!(payload.session_tokens, held + payload.tokens);
        prop_assert_eq!(payload.session_tokens, optimizer.session_tokens("s"));
        held = payload.session_tokens;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn rendered_payloads_fit_their_window_and_are_counted_as_rendered(
        upstream in prop::collection::vec(generated_text(), 0..6),
        others in prop::collection::vec(generated_text(), 0..6),
        window in 1usize..400,
        builds in 1usize..4,
    ) {
        let mut req = request("s", "shader release notes launch café item", Vec::new());
        req.upstream = upstream
            .into_iter()
            .enumerate()
            .map(|(i, text)| (format!("t{i}"), text))
            .collect();
        // Every category, and a source ending in `/`, which joins the newline after it.
        req.memories = others
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let (category, source) = match i % 3 {
                    0 => (Category::General, format!("memory:{i}")),
                    1 => (Category::Skills, format!("skill:{i}.md")),
                    _ => (Category::Project, format!("file:docs/{i}/")),
                };
                memory(category, &source, text)
            })
            .collect();
        check_payloads(counter(), true, window, &req, builds)?;
        let estimate: Arc<dyn TokenCounter> =
            Arc::new(CalibratedCounter::with_chars_per_token(3.5).unwrap());
        check_payloads(estimate, false, window, &req, builds)?;
    }
}

#[test]
fn the_line_naming_held_items_is_charged_before_the_items() {
    // A session holds an upstream output; the next payload names it and adds a memory that
    // fits what is left of the window only without that line (1003 tokens of 1000, before).
    let window = 1_000;
    let counter = O200kCounter::new().unwrap();
    let cost = |source: &str, text: &str| rendered_item_tokens(&counter, source, text);
    let padded = |head: &str, n: usize| format!("{head}{}", " registers".repeat(n));
    let k = (1..2_000)
        .find(|&k| cost("task:a", &padded("Build log:", k)) >= 894)
        .unwrap();
    let upstream = padded("Build log:", k);
    let line = counter.count("## already in your context\ntask:a\n");
    let left = window - cost("task:a", &upstream);
    // The general share is 100 tokens: the memory fits it and what is left, but not the line.
    let j = (1..200)
        .find(|&j| {
            let tokens = cost("memory:m", &padded("shader", j));
            tokens + line > left && tokens <= left.min(100)
        })
        .unwrap();

    let optimizer = optimizer(with_window(window));
    let mut req = request("s", "shader registers", Vec::new());
    req.upstream = vec![("a".into(), upstream)];
    let first = optimizer.build(&req);
    assert_eq!(first.items.len(), 1);
    assert!(!first.items[0].compressed);
    assert_eq!(first.session_tokens, window - left);

    req.memories = vec![memory(Category::General, "memory:m", &padded("shader", j))];
    let second = optimizer.build(&req);
    assert_eq!(
        second.references,
        [("task:a".to_string(), first.items[0].hash)]
    );
    assert_eq!(second.tokens, counter.count(&second.render()));
    // The line is held like the items: it is in the session's usage, within the window.
    assert_eq!(second.session_tokens, first.session_tokens + second.tokens);
    assert_eq!(second.session_tokens, optimizer.session_tokens("s"));
    assert!(
        second.session_tokens <= window,
        "{} of {window}: {:?}",
        second.session_tokens,
        second.items
    );
    // The memory was still sent, in what the line leaves.
    assert_eq!(second.items.len(), 1, "{:?}", second.warnings);
    assert!(second.items[0].compressed);

    // With the window full, even the line is left out rather than overflow it.
    assert!(second.session_tokens + line > window);
    let third = optimizer.build(&req);
    assert_eq!(third.session_tokens, second.session_tokens);
    assert!(third.references.is_empty() && third.items.is_empty());
    assert!(
        third.warnings.iter().any(|w| w.contains("left out")),
        "{:?}",
        third.warnings
    );
}
