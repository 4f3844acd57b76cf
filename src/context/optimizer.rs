//! The optimizer: skills loading, ranking, packing into the budget, per-session state.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::rank::{Bm25, analyze, compress};
use super::{
    Candidate, Category, ContextConfig, ContextError, ContextItem, ContextMonitor, ContextPayload,
    ContextRequest, TokenCounter, content_hash, item_overhead, references_line,
    rendered_item_tokens,
};
use crate::store::text::{Dictionary, DocTerms};

/// A compressed item smaller than this is not worth sending (except for critical items).
const MIN_COMPRESSED_TOKENS: usize = 32;

/// Terms the optimizer's dictionary may hold before it starts again from the skills' alone:
/// every request adds the words of its candidates (tool output full of ids and hashes adds
/// thousands), and a long-lived runtime would keep them all. About 80 MB at the limit.
const MAX_DICTIONARY_TERMS: usize = 1 << 20;

/// The term dictionary and the skills' terms in it: replaced together, so a build's terms all
/// come from one dictionary.
#[derive(Debug)]
struct Vocabulary {
    dictionary: Dictionary,
    /// Each skill's terms, in the order of [`ContextOptimizer::skills`].
    skill_terms: Vec<DocTerms>,
}

impl Vocabulary {
    fn of(skills: &[Skill]) -> Vocabulary {
        let dictionary = Dictionary::default();
        let skill_terms = skills
            .iter()
            .map(|skill| analyze(&skill.text, &dictionary))
            .collect();
        Vocabulary {
            dictionary,
            skill_terms,
        }
    }
}

/// A skill document loaded from the skills folder.
#[derive(Debug)]
struct Skill {
    source: String,
    text: String,
    hash: u64,
    /// Tokens of the skill as rendered, heading included (counted once, at load).
    tokens: usize,
    /// Tokens of its `## skill:NAME` heading and spacing counted apart (for compression).
    overhead: usize,
    modified: SystemTime,
}

/// What one session holds: every item sent to it since its last compaction.
#[derive(Debug, Default)]
struct SessionState {
    held: Vec<ContextItem>,
    /// Tokens of the lines naming held items that its payloads carried: they stay in the
    /// session's context like the items do.
    reference_tokens: usize,
}

impl SessionState {
    fn tokens(&self) -> usize {
        self.held.iter().map(|item| item.tokens).sum::<usize>() + self.reference_tokens
    }

    fn clear(&mut self) {
        self.held.clear();
        self.reference_tokens = 0;
    }

    fn tokens_in(&self, category: Category) -> usize {
        self.held
            .iter()
            .filter(|item| item.category == category)
            .map(|item| item.tokens)
            .sum()
    }

    /// Whether the session already holds this content: whole, or as the same extract.
    fn holds(&self, source: &str, hash: u64, text: Option<&str>) -> Option<&ContextItem> {
        self.held.iter().find(|item| {
            item.source == source
                && item.hash == hash
                && (!item.compressed || text.is_some_and(|t| t == item.text))
        })
    }
}

/// One candidate of a request, analysed.
struct Entry<'a> {
    category: Category,
    source: Cow<'a, str>,
    text: &'a str,
    terms: Cow<'a, DocTerms>,
    hash: u64,
    importance: f32,
    age: Duration,
    /// Upstream outputs and named files: sent whatever their relevance.
    always: bool,
    /// Known token count of the item as rendered, heading included (skills are counted when
    /// loaded, the others when packed).
    tokens: Option<usize>,
    /// Tokens of the item's `## SOURCE` heading and spacing counted apart from its text, what
    /// compression leaves room for (0: not counted yet).
    overhead: usize,
    score: f64,
}

/// Builds context payloads for agent sessions within their windows.
///
/// `Send + Sync`: one optimizer serves every session; per-session state is behind locks, and
/// concurrent builds for different sessions only share the term dictionary.
pub struct ContextOptimizer {
    config: ContextConfig,
    counter: Arc<dyn TokenCounter>,
    vocabulary: parking_lot::RwLock<Arc<Vocabulary>>,
    /// [`MAX_DICTIONARY_TERMS`], lower in tests.
    max_terms: usize,
    skills: Vec<Skill>,
    sessions: Mutex<HashMap<String, Arc<Mutex<SessionState>>>>,
    monitor: ContextMonitor,
}

impl std::fmt::Debug for ContextOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextOptimizer")
            .field("config", &self.config)
            .field("counter", &self.counter.name())
            .field("skills", &self.skills.len())
            .finish_non_exhaustive()
    }
}

impl ContextOptimizer {
    /// Validates the configuration and loads the skills folder. Skill files that cannot be read
    /// or are larger than `max_file_bytes`, and a missing skills folder, are skipped: the returned
    /// warnings say which and why.
    pub fn new(
        config: ContextConfig,
        counter: Arc<dyn TokenCounter>,
    ) -> Result<(Self, Vec<String>), ContextError> {
        config.validate()?;
        let mut warnings = Vec::new();
        let mut skills = Vec::new();
        if let Some(dir) = &config.skills_dir {
            let mut files = Vec::new();
            collect_markdown(dir, &mut files, &mut warnings);
            files.sort();
            for path in files {
                let Some((text, modified)) = read_limited(
                    &path,
                    config.max_file_bytes,
                    "skill document",
                    &mut warnings,
                ) else {
                    continue;
                };
                let name = path.strip_prefix(dir).unwrap_or(&path);
                let name: Vec<String> = name
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let source = format!("skill:{}", name.join("/"));
                skills.push(Skill {
                    overhead: item_overhead(counter.as_ref(), &source),
                    tokens: rendered_item_tokens(counter.as_ref(), &source, &text),
                    source,
                    hash: content_hash(&text),
                    text,
                    modified,
                });
            }
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        let monitor = ContextMonitor::new(config.alert_ratio);
        Ok((
            ContextOptimizer {
                config,
                counter,
                vocabulary: parking_lot::RwLock::new(Arc::new(Vocabulary::of(&skills))),
                max_terms: MAX_DICTIONARY_TERMS,
                skills,
                sessions: Mutex::new(HashMap::new()),
                monitor,
            },
            warnings,
        ))
    }

    /// The configuration in force.
    pub fn config(&self) -> &ContextConfig {
        &self.config
    }

    /// The token counter.
    pub fn counter(&self) -> &dyn TokenCounter {
        self.counter.as_ref()
    }

    /// The loaded skill documents as candidates (category [`Category::Skills`]).
    pub fn skills(&self) -> Vec<Candidate> {
        let now = SystemTime::now();
        self.skills
            .iter()
            .map(|skill| Candidate {
                category: Category::Skills,
                source: skill.source.clone(),
                text: skill.text.clone(),
                importance: 0.5,
                age: now.duration_since(skill.modified).unwrap_or_default(),
            })
            .collect()
    }

    /// The monitor of the sessions' usage.
    pub fn monitor(&self) -> &ContextMonitor {
        &self.monitor
    }

    /// The dictionary and skills' terms a build uses, started again from the skills' alone once
    /// it holds more than `max_terms` terms (builds under way keep the one they took).
    fn vocabulary(&self) -> Arc<Vocabulary> {
        let current = Arc::clone(&self.vocabulary.read());
        if current.dictionary.len() <= self.max_terms {
            return current;
        }
        let mut vocabulary = self.vocabulary.write();
        if vocabulary.dictionary.len() > self.max_terms {
            *vocabulary = Arc::new(Vocabulary::of(&self.skills));
        }
        Arc::clone(&vocabulary)
    }

    fn session(&self, session: &str) -> Arc<Mutex<SessionState>> {
        self.sessions
            .lock()
            .entry(session.to_string())
            .or_default()
            .clone()
    }

    /// Builds the payload for a request: ranks and packs the candidates into what is left of the
    /// session's window, sends only what the session does not already hold, and records the
    /// session's new usage with the monitor.
    pub fn build(&self, request: &ContextRequest) -> ContextPayload {
        let mut warnings = Vec::new();
        let now = SystemTime::now();
        let vocabulary = self.vocabulary();
        let dictionary = &vocabulary.dictionary;

        let files: Vec<(String, String, Duration)> = request
            .project_files
            .iter()
            .filter_map(|path| {
                let resolved = match &request.project_root {
                    Some(root) if path.is_relative() => Cow::Owned(root.join(path)),
                    _ => Cow::Borrowed(path.as_path()),
                };
                let (text, modified) = read_limited(
                    &resolved,
                    self.config.max_file_bytes,
                    "project file",
                    &mut warnings,
                )?;
                let age = now.duration_since(modified).unwrap_or_default();
                Some((format!("file:{}", path.display()), text, age))
            })
            .collect();

        let mut entries: Vec<Entry<'_>> = Vec::new();
        for (id, output) in &request.upstream {
            entries.push(self.entry(
                dictionary,
                Category::Critical,
                Cow::Owned(format!("task:{id}")),
                output,
                1.0,
                Duration::ZERO,
                true,
            ));
        }
        for (source, text, age) in &files {
            entries.push(self.entry(
                dictionary,
                Category::Project,
                Cow::Borrowed(source),
                text,
                1.0,
                *age,
                true,
            ));
        }
        for candidate in &request.memories {
            entries.push(self.entry(
                dictionary,
                candidate.category,
                Cow::Borrowed(&candidate.source),
                &candidate.text,
                // NaN (a library caller's) would pass `clamp` and outrank everything.
                if candidate.importance.is_nan() {
                    0.0
                } else {
                    candidate.importance.clamp(0.0, 1.0)
                },
                candidate.age,
                false,
            ));
        }
        for (skill, terms) in self.skills.iter().zip(&vocabulary.skill_terms) {
            entries.push(Entry {
                category: Category::Skills,
                source: Cow::Borrowed(&skill.source),
                text: &skill.text,
                terms: Cow::Borrowed(terms),
                hash: skill.hash,
                importance: 0.5,
                age: now.duration_since(skill.modified).unwrap_or_default(),
                always: false,
                tokens: Some(skill.tokens),
                overhead: skill.overhead,
                score: 0.0,
            });
        }

        let bm25 = Bm25::new(
            &request.query,
            dictionary,
            entries.iter().map(|e| e.terms.as_ref()),
        );
        let entries = self.rank(entries, &bm25);
        let session = self.session(&request.session);
        let mut state = session.lock();
        let mut payload = self.pack(entries, &bm25, &mut state, &mut warnings);
        payload.session_tokens = state.tokens();
        payload.window = self.config.budget.window;
        payload.alert =
            self.monitor
                .record(&request.session, payload.session_tokens, payload.window);
        for warning in &warnings {
            tracing::warn!(session = %request.session, "{warning}");
        }
        payload.warnings = warnings;
        payload
    }

    #[allow(clippy::too_many_arguments)]
    fn entry<'a>(
        &self,
        dictionary: &Dictionary,
        category: Category,
        source: Cow<'a, str>,
        text: &'a str,
        importance: f32,
        age: Duration,
        always: bool,
    ) -> Entry<'a> {
        Entry {
            category,
            source,
            text,
            terms: Cow::Owned(analyze(text, dictionary)),
            hash: content_hash(text),
            importance,
            age,
            always,
            tokens: None,
            overhead: 0,
            score: 0.0,
        }
    }

    /// Scores the entries, drops duplicates (keeping the always-sent copy, else the copy of the
    /// category first in priority order — a skill document before a project file before a
    /// memory, so the copy is named by where it came from — and within one category the best
    /// scored;
    /// two always-sent items with the same content are both kept, since each names its own
    /// source: two upstream tasks that printed the same text) and those below the relevance
    /// cut-off, and sorts the rest best first.
    fn rank<'a>(&self, mut entries: Vec<Entry<'a>>, bm25: &Bm25<'_>) -> Vec<Entry<'a>> {
        let ranking = &self.config.ranking;
        let relevance: Vec<f64> = entries
            .iter()
            .map(|e| f64::from(bm25.score(&e.terms)))
            .collect();
        // Relevance is relative to the best candidate that has to earn its place, so that a long
        // upstream output does not push every memory below the cut-off.
        let best = entries
            .iter()
            .zip(&relevance)
            .filter(|(e, _)| !e.always)
            .map(|(_, &r)| r)
            .fold(0.0f64, f64::max);
        let half_life = ranking.recency_half_life_hours * 3600.0;
        let mut keep = vec![true; entries.len()];
        for (i, entry) in entries.iter_mut().enumerate() {
            let relative = if best > 0.0 {
                (relevance[i] / best).min(1.0)
            } else {
                0.0
            };
            if !entry.always && (relevance[i] <= 0.0 || relative < ranking.min_relevance) {
                keep[i] = false;
            }
            let recency = 0.5f64.powf(entry.age.as_secs_f64() / half_life);
            entry.score = ranking.relevance * relative
                + ranking.importance * f64::from(entry.importance)
                + ranking.recency * recency;
        }
        let mut kept: Vec<Entry<'a>> = entries
            .into_iter()
            .zip(keep)
            .filter_map(|(e, k)| k.then_some(e))
            .collect();
        kept.sort_by(|a, b| {
            b.always
                .cmp(&a.always)
                .then(a.category.cmp(&b.category))
                .then(b.score.total_cmp(&a.score))
        });
        let mut seen = std::collections::HashSet::new();
        kept.retain(|e| seen.insert(e.hash) || e.always);
        kept.sort_by(|a, b| b.score.total_cmp(&a.score));
        kept
    }

    /// Packs ranked entries into what is left of the session's window.
    fn pack(
        &self,
        entries: Vec<Entry<'_>>,
        bm25: &Bm25<'_>,
        state: &mut SessionState,
        warnings: &mut Vec<String>,
    ) -> ContextPayload {
        let budget = &self.config.budget;
        let window = budget.window;
        let mut payload = ContextPayload::default();

        // Relevant items the session already holds are named on one line instead of sent. The
        // line is known before anything is packed, so its cost is set aside first: taken after
        // the items, it could push the session past its window.
        let entries: Vec<Entry<'_>> = entries
            .into_iter()
            .filter(|entry| match state.holds(&entry.source, entry.hash, None) {
                Some(held) => {
                    payload.references.push((held.source.clone(), held.hash));
                    false
                }
                None => true,
            })
            .collect();
        let mut remaining_total = window.saturating_sub(state.tokens());
        let mut line_tokens = self.references_tokens(&payload.references);
        if line_tokens > remaining_total {
            // The session holds these items either way; naming them is not worth overflowing.
            warnings.push(format!(
                "the line naming what the session already holds ({} items, {line_tokens} \
                 tokens) is left out: only {remaining_total} tokens of the window are left",
                payload.references.len()
            ));
            payload.references.clear();
            line_tokens = 0;
        }
        remaining_total -= line_tokens;
        let mut own = [0usize; 4];
        for category in Category::ALL {
            let share = (budget.share(category) * window as f64).floor() as usize;
            own[category.index()] = share.saturating_sub(state.tokens_in(category));
        }

        let mut deferred: Vec<Entry<'_>> = Vec::new();
        let mut pending = [0usize; 4];
        let mut taken: Vec<(usize, ContextItem)> = Vec::new();
        let mut order = 0usize;

        // Phase 1: each category but the critical one fills its own share in rank order; what
        // does not fit waits.
        for mut entry in entries {
            // Every item is charged as rendered, heading and spacing included, counted together
            // with its text (a skill was counted when it was loaded).
            let tokens = match entry.tokens {
                Some(tokens) => tokens,
                None => rendered_item_tokens(self.counter.as_ref(), &entry.source, entry.text),
            };
            entry.tokens = Some(tokens);
            let c = entry.category.index();
            // Upstream outputs all wait for phase 2, where they share their room fairly: taken
            // whole here in rank order, the first ones could leave the last none at all.
            if entry.category != Category::Critical && tokens <= own[c] && tokens <= remaining_total
            {
                own[c] -= tokens;
                remaining_total -= tokens;
                taken.push((order, item(&entry, entry.text.to_string(), tokens, false)));
                order += 1;
            } else {
                pending[c] += 1;
                deferred.push(entry);
            }
        }

        // Phase 2: shares left unused by categories with nothing waiting are passed on; those
        // with items waiting hold theirs back until their last item is in.
        // What each waiting category holds back is what it took out of the spare: no more
        // than was there (the shares can add up to more than the window has left).
        let mut spare = remaining_total;
        let mut held_back = [0usize; 4];
        for category in Category::ALL {
            let k = category.index();
            if pending[k] > 0 {
                held_back[k] = own[k].min(spare);
                spare -= held_back[k];
            }
        }
        let (critical, others): (Vec<_>, Vec<_>) = deferred
            .into_iter()
            .partition(|e| e.category == Category::Critical);

        // Critical items share what is available fairly, smallest first, each compressed to
        // its fair part when it is larger.
        let mut critical = critical;
        critical.sort_by_key(|e| e.tokens.unwrap_or(0));
        let critical_total: usize = critical.iter().filter_map(|e| e.tokens).sum();
        // Never more than the window has left: a category's own share can be larger when
        // another category took the spare shares in an earlier payload of the session.
        let free_for_critical = (own[Category::Critical.index()] + spare).min(remaining_total);
        let mut available = free_for_critical;
        let waiting = critical.len();
        let mut squeezed = Vec::new();
        for (i, entry) in critical.iter().enumerate() {
            let tokens = entry.tokens.unwrap_or(0);
            let fair = available / (waiting - i);
            if tokens <= fair {
                available -= tokens;
                taken.push((order, item(entry, entry.text.to_string(), tokens, false)));
            } else if let Some((text, sent)) = self.fit(entry, fair, bm25) {
                if let Some(held) = state.holds(&entry.source, entry.hash, Some(&text)) {
                    if let Some(extra) =
                        self.refer(&mut payload.references, held, line_tokens, fair)
                    {
                        line_tokens += extra;
                        available -= extra;
                    }
                    continue;
                }
                available -= sent.min(available);
                squeezed.push(format!("{} ({tokens} → {sent} tokens)", entry.source));
                taken.push((order, item(entry, text, sent, true)));
            } else {
                squeezed.push(format!("{} ({tokens} tokens) dropped", entry.source));
            }
            order += 1;
        }
        if !squeezed.is_empty() {
            warnings.push(format!(
                "the context window ({window} tokens, {free_for_critical} free) is smaller than \
                 the critical items ({critical_total} tokens waiting): compressed to fit: {}",
                squeezed.join(", ")
            ));
        }
        let critical_used = free_for_critical - available;
        remaining_total -= critical_used;
        spare = spare.saturating_sub(critical_used.saturating_sub(own[Category::Critical.index()]));
        own[Category::Critical.index()] =
            own[Category::Critical.index()].saturating_sub(critical_used);
        pending[Category::Critical.index()] = 0;

        // Other items in rank order: whole if they fit their share plus what was passed on,
        // else compressed to that.
        for entry in others {
            // A category with nothing left waiting passes on what its share has left (the
            // critical one's too, once its items are in: it held back its whole share while
            // any upstream output waited, and what they left went unused).
            for k in 0..held_back.len() {
                if held_back[k] > 0 && pending[k] == 0 {
                    spare += own[k].min(held_back[k]);
                    own[k] = 0;
                    held_back[k] = 0;
                }
            }
            let c = entry.category.index();
            pending[c] = pending[c].saturating_sub(1);
            let tokens = entry.tokens.unwrap_or(0);
            let room = (own[c] + spare).min(remaining_total);
            // What is sent comes out of the category's own share first, then the spare.
            let mut charge = |sent: usize| {
                let from_own = sent.min(own[c]);
                own[c] -= from_own;
                spare = spare.saturating_sub(sent - from_own);
                remaining_total = remaining_total.saturating_sub(sent);
            };
            let (text, sent, compressed) = if tokens <= room {
                (entry.text.to_string(), tokens, false)
            } else if room >= MIN_COMPRESSED_TOKENS || entry.always {
                match self.fit(&entry, room, bm25) {
                    Some((text, sent)) => {
                        if let Some(held) = state.holds(&entry.source, entry.hash, Some(&text)) {
                            if let Some(extra) =
                                self.refer(&mut payload.references, held, line_tokens, room)
                            {
                                line_tokens += extra;
                                charge(extra);
                            }
                            continue;
                        }
                        (text, sent, true)
                    }
                    None => {
                        if entry.always {
                            warnings.push(format!(
                                "{} ({tokens} tokens) left out: no room left in the window",
                                entry.source
                            ));
                        }
                        continue;
                    }
                }
            } else {
                if entry.always {
                    warnings.push(format!(
                        "{} ({tokens} tokens) left out: no room left in the window",
                        entry.source
                    ));
                }
                continue;
            };
            charge(sent);
            taken.push((order, item(&entry, text, sent, compressed)));
            order += 1;
        }

        taken.sort_by_key(|(rank, item)| (item.category, *rank));
        for (_, item) in taken {
            payload.tokens += item.tokens;
            state.held.push(item.clone());
            payload.items.push(item);
        }
        // The line stays in the session's context like the items it sends.
        payload.tokens += line_tokens;
        state.reference_tokens += line_tokens;
        payload
    }

    /// Tokens of the line naming `references` (0 for none).
    fn references_tokens(&self, references: &[(String, u64)]) -> usize {
        references_line(references).map_or(0, |line| self.counter.count(&line))
    }

    /// Names a held item on the references line if that makes the line, now `line_tokens`
    /// long, at most `room` tokens longer: what it adds, or `None` (not named; the session
    /// holds it either way).
    fn refer(
        &self,
        references: &mut Vec<(String, u64)>,
        held: &ContextItem,
        line_tokens: usize,
        room: usize,
    ) -> Option<usize> {
        references.push((held.source.clone(), held.hash));
        let extra = self
            .references_tokens(references)
            .saturating_sub(line_tokens);
        if extra <= room {
            Some(extra)
        } else {
            references.pop();
            None
        }
    }

    /// The entry's text compressed so that, rendered with its heading, it costs at most
    /// `budget` tokens; with that cost.
    fn fit(&self, entry: &Entry<'_>, budget: usize, bm25: &Bm25<'_>) -> Option<(String, usize)> {
        let counter = self.counter.as_ref();
        let overhead = match entry.overhead {
            0 => item_overhead(counter, &entry.source),
            overhead => overhead,
        };
        let mut room = budget.checked_sub(overhead)?;
        loop {
            let text = compress(entry.text, room, bm25, counter)?;
            let sent = rendered_item_tokens(counter, &entry.source, &text);
            if sent <= budget {
                return Some((text, sent));
            }
            // The heading counted apart from the text is a bound only in practice: should the
            // seams cost more, compress again into that much less room (always less: ends).
            room = room.checked_sub(sent - budget)?;
        }
    }
    /// The full context a session holds: everything sent to it since its last compaction, in
    /// the order it was sent (what the agent preserves in the store on an alert).
    pub fn session_snapshot(&self, session: &str) -> Vec<ContextItem> {
        let state = self.sessions.lock().get(session).cloned();
        state.map(|s| s.lock().held.clone()).unwrap_or_default()
    }

    /// Tokens a session holds.
    pub fn session_tokens(&self, session: &str) -> usize {
        let state = self.sessions.lock().get(session).cloned();
        state.map(|s| s.lock().tokens()).unwrap_or(0)
    }

    /// Drops a session's held context once it has been preserved: its usage goes back to 0 and
    /// the monitor is re-armed, so the next payload sends everything it needs again.
    pub fn compact(&self, session: &str) {
        let state = self.sessions.lock().get(session).cloned();
        // Re-armed under the session's lock, as `build` records under it: a build between the
        // clear and the record would refill the session unseen (no alert), and the record of 0
        // after it would leave the monitor below while the session is not.
        let _cleared = state.as_ref().map(|state| {
            let mut held = state.lock();
            held.clear();
            held
        });
        self.monitor
            .record(session, 0, self.config.budget.window.max(1));
    }

    /// Forgets a session entirely (it ended).
    pub fn forget_session(&self, session: &str) {
        self.sessions.lock().remove(session);
        self.monitor.forget(session);
    }
}

fn item(entry: &Entry<'_>, text: String, tokens: usize, compressed: bool) -> ContextItem {
    ContextItem {
        category: entry.category,
        source: entry.source.to_string(),
        text,
        tokens,
        hash: entry.hash,
        compressed,
    }
}

/// Every `*.md` file under `dir`; folders that cannot be listed become warnings.
fn collect_markdown(dir: &Path, files: &mut Vec<PathBuf>, warnings: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warnings.push(format!(
                "skills folder {}: cannot be read: {e}; continuing without its skills",
                dir.display()
            ));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                warnings.push(format!("skills folder {}: {e}", dir.display()));
                continue;
            }
        };
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => collect_markdown(&path, files, warnings),
            Ok(_) if path.extension().is_some_and(|ext| ext == "md") => files.push(path),
            Ok(_) => {}
            Err(e) => warnings.push(format!("skill document {}: {e}; skipped", path.display())),
        }
    }
}

/// A text file's contents and modification time, or a warning saying why it was skipped.
fn read_limited(
    path: &Path,
    max_bytes: u64,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<(String, SystemTime)> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) => {
            warnings.push(format!(
                "{what} {}: cannot be read: {e}; skipped",
                path.display()
            ));
            return None;
        }
    };
    // A device or a FIFO reports no size (`/dev/zero` would be read until memory ran out, a
    // FIFO would block the Optimizer): only regular files are read.
    if !metadata.is_file() {
        warnings.push(format!(
            "{what} {}: not a regular file; skipped",
            path.display()
        ));
        return None;
    }
    let too_large = |size: u64| {
        format!(
            "{what} {}: {size} bytes is more than max_file_bytes ({max_bytes}); skipped",
            path.display()
        )
    };
    if metadata.len() > max_bytes {
        warnings.push(too_large(metadata.len()));
        return None;
    }
    // Read at most one byte past the limit: the file may have grown since its size was read.
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| {
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        warnings.push(format!(
            "{what} {}: cannot be read: {e}; skipped",
            path.display()
        ));
        return None;
    }
    if bytes.len() as u64 > max_bytes {
        warnings.push(too_large(bytes.len() as u64));
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(text) => Some((
            text,
            metadata.modified().unwrap_or_else(|_| SystemTime::now()),
        )),
        Err(_) => {
            warnings.push(format!(
                "{what} {}: cannot be read: stream did not contain valid UTF-8; skipped",
                path.display()
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::context::{BudgetConfig, CalibratedCounter};

    /// Past its limit the dictionary starts again from the skills' terms: the words of earlier
    /// requests are not kept for ever, and skills still rank by the new dictionary's ids.
    #[test]
    fn the_dictionary_starts_again_from_the_skills_past_its_limit() {
        let skills = tempfile::tempdir().unwrap();
        std::fs::write(
            skills.path().join("bloom.md"),
            "Plasma renders need the bloom pass before tone mapping.",
        )
        .unwrap();
        let config = ContextConfig {
            skills_dir: Some(skills.path().to_path_buf()),
            budget: BudgetConfig {
                window: 4_000,
                ..BudgetConfig::default()
            },
            ..ContextConfig::default()
        };
        let counter = Arc::new(CalibratedCounter::with_chars_per_token(4.0).unwrap());
        let (mut optimizer, _) = ContextOptimizer::new(config, counter).unwrap();
        optimizer.max_terms = 100;
        let ids: Vec<String> = (0..300).map(|i| format!("id{i}x")).collect();
        let noisy = Candidate {
            category: Category::General,
            source: "memory:ids".to_owned(),
            text: ids.join(" "),
            importance: 0.5,
            age: Duration::from_secs(60),
        };
        let first = ContextRequest {
            session: "first".to_owned(),
            query: "id1x".to_owned(),
            memories: vec![noisy],
            ..ContextRequest::default()
        };
        optimizer.build(&first);
        assert!(optimizer.vocabulary.read().dictionary.len() > 300);
        let second = ContextRequest {
            session: "second".to_owned(),
            query: "render the plasma with bloom".to_owned(),
            ..ContextRequest::default()
        };
        let payload = optimizer.build(&second);
        assert!(optimizer.vocabulary.read().dictionary.len() < 100);
        assert_eq!(payload.items[0].source, "skill:bloom.md", "{payload:?}");
    }
}
