//! The Reviewer: applies a task's gates to its outcome and sends the verdict to the Orchestrator.
//!
//! A task passes when every gate passes. A task without an `exit` gate must exit 0: a non-zero
//! exit is then an error of the tool (retried up to `retries`), not a gate failure; with an
//! explicit `exit` gate it is a gate failure (another attempt with feedback). A task that
//! declares its `outputs` also fails its review, as a failed gate, when its output lacks one of
//! them (or is not a JSON object). `score` gates
//! call the score pool (an image scorer session) and run as tasks of the actor so a slow score
//! does not hold up other reviews. Relative paths in gates resolve against the plan's folder.
//! Compensations are not gated: they pass when their tool exits 0.

use std::path::Path;
use std::sync::Arc;
use tracing::Instrument;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::task::JoinSet;

use super::AgentKind;
use super::mailbox::Envelope;
use super::pipeline::{
    Attempt, OrchestratorMsg, Outcome, Peers, Purpose, ReviewerMsg, Verdict, injected_fault,
};
use super::runtime::PoolSet;
use crate::plan::template::render_text;
use crate::plan::{Gate, GateResult, ScoreBound, ScoreMetric, TemplateContext};
use crate::session::{ToolOutcome, ToolRequest};
use crate::store::ContextCache;

/// The Reviewer actor.
pub(crate) struct Reviewer;

/// What the supervisor starts it with.
#[derive(Clone)]
pub(crate) struct ReviewerArgs {
    pub peers: Peers,
    pub pools: PoolSet,
    pub score_pool: String,
    /// Where a cached result that failed the gates is dropped.
    pub cache: ContextCache,
    /// Dropped with the agent's state, after the fields above (declared last: fields drop in
    /// order, and the store's last handle closes the file as it drops). See
    /// [`super::supervisor::StateToken`].
    pub _token: super::supervisor::StateToken,
}

pub(crate) struct ReviewerState {
    shared: Arc<ReviewerArgs>,
    scoring: JoinSet<()>,
}

/// The task's output as later templates see it: the JSON result, else the trimmed text.
fn output_value(outcome: &ToolOutcome) -> Value {
    outcome
        .json
        .clone()
        .unwrap_or_else(|| Value::String(outcome.stdout.trim().to_owned()))
}

fn metric_tool(metric: ScoreMetric) -> &'static str {
    match metric {
        ScoreMetric::Flip => "flip",
        ScoreMetric::HdrFlip => "hdr-flip",
        ScoreMetric::Ssim => "ssim",
        ScoreMetric::MsSsim => "msssim",
        ScoreMetric::Psnr => "psnr",
    }
}

/// The failure of an output that lacks fields its task declares (`outputs`), if it does. Later
/// tasks' templates were checked against those fields before the run, so the producer fails
/// here, where another attempt can act on the feedback, rather than its dependents failing to
/// render. A field present with a `null` value is present.
fn missing_outputs(output: &Value, declared: &[String]) -> Option<GateResult> {
    let missing: Vec<String> = match output.as_object() {
        Some(fields) => declared
            .iter()
            .filter(|field| !fields.contains_key(field.as_str()))
            .map(|field| format!("{field:?}"))
            .collect(),
        None => {
            return Some(GateResult {
                passed: false,
                reason: format!(
                    "output is not a JSON object, and the task declares outputs: {}",
                    declared.join(", ")
                ),
            });
        }
    };
    (!missing.is_empty()).then(|| GateResult {
        passed: false,
        reason: format!(
            "output lacks field{} {} that the task declares (outputs: {})",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            declared.join(", ")
        ),
    })
}

/// What a score gate came to: a judgement of the task's image, or a failure that is not the
/// task's fault (a reference that cannot be read, no scorer, a scorer that timed out or
/// crashed), which must not send the task back with feedback it cannot act on.
enum ScoreGateOutcome {
    Judged(GateResult),
    Broken { reason: String, retryable: bool },
}

/// Why the reference image cannot be scored by `metric` whatever the test image is, if so:
/// it does not decode, (HDR-FLIP) it has no exposure range, or (SSIM, MS-SSIM) it is smaller
/// than the metric's window or outside 0..1. Asked only after the scorer
/// refused a pair, so a good reference is decoded once more only on that path.
async fn reference_problem(reference: &Path, metric: ScoreMetric) -> Option<String> {
    let path = reference.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let image = match crate::scoring::RgbImage::open(&path) {
            Ok(image) => image,
            Err(e) => return Some(e.to_string()),
        };
        match metric {
            ScoreMetric::HdrFlip => {
                let linear = crate::scoring::hdr_linear(&image);
                crate::scoring::exposures(image.label(), &linear)
                    .err()
                    .map(|e| e.to_string())
            }
            // The scorer's own checks: it refuses such a pair whatever the test image (one of
            // another size is refused for that).
            ScoreMetric::Ssim | ScoreMetric::MsSsim => {
                let windowed = if metric == ScoreMetric::Ssim {
                    crate::scoring::Metric::Ssim
                } else {
                    crate::scoring::Metric::Msssim
                };
                crate::scoring::check_size(windowed, &image)
                    .and_then(|()| image.check_unit_range(metric_tool(metric)))
                    .err()
                    .map(|e| e.to_string())
            }
            ScoreMetric::Flip | ScoreMetric::Psnr => None,
        }
    })
    .await
    .ok()
    .flatten()
}

/// Runs one score gate through the score pool.
async fn score_gate(
    shared: &ReviewerArgs,
    gate: &Gate,
    ctx: &TemplateContext,
    base_dir: &Path,
) -> ScoreGateOutcome {
    use ScoreGateOutcome::{Broken, Judged};
    let Gate::Score {
        metric,
        reference,
        test,
        bound,
    } = gate
    else {
        return Broken {
            reason: "not a score gate".to_owned(),
            retryable: false,
        };
    };
    let fail = |reason: String| {
        Judged(GateResult {
            passed: false,
            reason,
        })
    };
    let (reference, test) = match (render_text(reference, ctx), render_text(test, ctx)) {
        (Ok(r), Ok(t)) => (base_dir.join(r), base_dir.join(t)),
        (Err(e), _) | (_, Err(e)) => return fail(format!("score gate: {e}")),
    };
    // The reference is the plan's, not the task's: a missing one fails the task at once.
    let unreadable = match std::fs::metadata(&reference) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some("not a regular file".to_owned()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = unreadable {
        return Broken {
            reason: format!(
                "score gate: the reference {} cannot be read: {e}",
                reference.display()
            ),
            retryable: false,
        };
    }
    let Some((pool, def)) = shared.pools.get_with_def(&ctx.run_id, &shared.score_pool) else {
        return Broken {
            reason: format!(
                "score gate: no score pool {:?} is configured",
                shared.score_pool
            ),
            retryable: false,
        };
    };
    // Only the runtime's own scorer: a plan's `process` pool of that name would run its
    // command unchecked by the permission rules.
    if def.kind != crate::session::PoolKind::Scorer {
        return Broken {
            reason: format!(
                "score gate: pool {:?} is not a scorer pool",
                shared.score_pool
            ),
            retryable: false,
        };
    }
    let timeout = def.call_timeout;
    let name = metric_tool(*metric);
    let request = ToolRequest::new(
        name,
        serde_json::json!({
            "reference": reference.display().to_string(),
            "test": test.display().to_string(),
        }),
    )
    .with_timeout(timeout);
    let outcome = match pool.acquire_queued().await {
        Ok(mut session) => {
            let started = std::time::Instant::now();
            let outcome = session.call(request).await;
            // The same measure as the Executor's calls, labelled with the agent that called.
            metrics::histogram!(
                "tetrarch_tool_call_duration_seconds",
                "tool" => format!("{}.{name}", shared.score_pool),
                "agent" => AgentKind::Reviewer.as_str()
            )
            .record(started.elapsed().as_secs_f64());
            outcome
        }
        Err(e) => Err(e),
    };
    let value = match outcome {
        Ok(o) if o.succeeded() => o.json.as_ref().and_then(|j| j.get("value")?.as_f64()),
        // The scorer refused the images: the task's fault (its image unreadable, of another
        // size...) unless the reference alone cannot be scored (corrupt, no HDR exposure range).
        Ok(o) => {
            if let Some(problem) = reference_problem(&reference, *metric).await {
                return Broken {
                    reason: format!("score gate: the reference cannot be scored: {problem}"),
                    retryable: false,
                };
            }
            return fail(format!("{name} could not score: {}", o.stderr.trim()));
        }
        // The scorer itself failed (timed out, crashed, no session): retried as a tool error.
        Err(e) => {
            return Broken {
                reason: format!("{name} could not score: {e}"),
                retryable: true,
            };
        }
    };
    let Some(value) = value else {
        return fail(format!("{name}: the scorer returned no value"));
    };
    let (passed, relation, limit, side) = match bound {
        ScoreBound::Max(max) => (
            value <= *max,
            if value <= *max { "<=" } else { ">" },
            max,
            "max",
        ),
        ScoreBound::Min(min) => (
            value >= *min,
            if value >= *min { ">=" } else { "<" },
            min,
            "min",
        ),
    };
    // Identical images' PSNR comes back as the largest finite number (JSON has no infinity).
    let shown = if value >= f64::MAX {
        "inf".to_owned()
    } else {
        format!("{value:.4}")
    };
    Judged(GateResult {
        passed,
        reason: format!(
            "{name} {shown} {relation} {side} {limit} ({} vs {})",
            test.display(),
            reference.display()
        ),
    })
}

async fn review(shared: &ReviewerArgs, attempt: &Attempt, outcome: Outcome) -> Verdict {
    let outcome = match outcome {
        Outcome::Error { reason, retryable } => return Verdict::Error { reason, retryable },
        Outcome::NotStarted { reason } => return Verdict::NotStarted { reason },
        Outcome::Ran(outcome) => outcome,
    };
    let output = output_value(&outcome);
    if attempt.purpose == Purpose::Compensation {
        return if outcome.succeeded() {
            Verdict::Pass {
                output,
                summary: "compensation exited 0".to_owned(),
            }
        } else {
            let said = outcome.stderr.trim();
            Verdict::Error {
                reason: format!(
                    "compensation exited {}{}{said}",
                    outcome
                        .exit_status
                        .map_or_else(|| "without a status".to_owned(), |code| code.to_string()),
                    if said.is_empty() { "" } else { ": " }
                ),
                retryable: false,
            }
        };
    }
    let seen = crate::plan::ToolOutcome {
        exit_status: outcome.exit_status,
        output: outcome.stdout.clone(),
        json: outcome.json.clone(),
    };
    let mut ctx = attempt.ctx.clone();
    ctx.outputs
        .insert(attempt.task.id.as_str().to_owned(), output.clone());
    let has_exit_gate = attempt
        .task
        .gates
        .iter()
        .any(|g| matches!(g, Gate::ExitStatus { .. }));
    if !has_exit_gate && !outcome.succeeded() {
        // No exit gate: a non-zero exit is an error of the tool (retried up to `retries`).
        let said = outcome.error_text();
        return Verdict::Error {
            reason: format!(
                "{} exited with status {}{}",
                attempt.call(),
                outcome
                    .exit_status
                    .map_or_else(|| "none".to_owned(), |c| c.to_string()),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {}", said.chars().take(500).collect::<String>())
                }
            ),
            retryable: true,
        };
    }
    let gates = attempt.task.gates.iter();
    let mut results = Vec::new();
    let mut tool_failed = false;
    for gate in gates {
        let result = match gate.check_in(&seen, &ctx, &attempt.base_dir) {
            Some(result) => result,
            None => match score_gate(shared, gate, &ctx, &attempt.base_dir).await {
                ScoreGateOutcome::Judged(result) => result,
                ScoreGateOutcome::Broken { reason, retryable } => {
                    return Verdict::Error { reason, retryable };
                }
            },
        };
        tool_failed = !result.passed && matches!(gate, Gate::ExitStatus { .. });
        results.push(result);
        if tool_failed {
            // Nothing else is meaningful when the tool failed; say what it printed: its stderr,
            // else its output (where an MCP tool's error result puts its message).
            let (stream, said) = match (outcome.stderr.trim(), outcome.stdout.trim()) {
                ("", stdout) => ("output", stdout),
                (stderr, _) => ("stderr", stderr),
            };
            if !said.is_empty() {
                results.push(GateResult {
                    passed: false,
                    reason: format!("{stream}: {}", said.chars().take(500).collect::<String>()),
                });
            }
            break;
        }
    }
    if !tool_failed
        && let Some(declared) = &attempt.task.outputs
        && let Some(missing) = missing_outputs(&output, declared)
    {
        results.push(missing);
    }
    let mut failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.reason.as_str())
        .collect();
    // Feedback that blames the output for what the capture cut off would mislead the next
    // attempt (`{{feedback}}`).
    if !failed.is_empty() && outcome.truncated {
        failed.push(
            "the tool's output was cut at the capture limit, so the gates saw only its start",
        );
    }
    if failed.is_empty() {
        Verdict::Pass {
            output,
            summary: results
                .iter()
                .map(|r| r.reason.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        }
    } else {
        Verdict::GateFailed {
            feedback: failed.join("; "),
        }
    }
}

/// Reviews inside `span`, which ends before the verdict is sent: a span still open when the
/// Orchestrator finishes the run would keep the run's span open past its end.
async fn review_and_reply(
    shared: &ReviewerArgs,
    mut attempt: Box<Attempt>,
    outcome: Outcome,
    span: tracing::Span,
) {
    let verdict = review(shared, &attempt, outcome).instrument(span).await;
    // A result that failed the gates is not reused: the next attempt (or a later run) calls
    // the tool again. Cached results are only those whose call exited 0, not those that passed.
    // Nor is one a compensation has undone (whether the compensation worked or not): served
    // again, its task would complete without redoing what was undone.
    let dropped = match &verdict {
        _ if attempt.purpose == Purpose::Compensation => attempt.cache_key,
        Verdict::GateFailed { .. } => attempt.cache_key,
        _ => None,
    };
    if let Some(key) = dropped
        && let Err(e) = shared.cache.remove(key).await
    {
        tracing::warn!("reviewer: a result that failed its gates or was undone stays cached: {e}");
        // Called again, the task would be served the same result.
        attempt.served_from_cache = false;
    }
    if let Err(e) = shared
        .peers
        .orchestrator
        .send(OrchestratorMsg::Verdict { attempt, verdict })
        .await
    {
        tracing::warn!("reviewer: verdict not delivered: {e}");
    }
}

impl Actor for Reviewer {
    type Msg = Envelope<ReviewerMsg>;
    type State = ReviewerState;
    type Arguments = ReviewerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ReviewerArgs,
    ) -> Result<ReviewerState, ActorProcessingErr> {
        Ok(ReviewerState {
            shared: Arc::new(args),
            scoring: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut ReviewerState,
    ) -> Result<(), ActorProcessingErr> {
        while state.scoring.try_join_next().is_some() {}
        let Envelope { msg, .. } = envelope;
        match msg {
            ReviewerMsg::Review(attempt, outcome) => {
                let scored = attempt.purpose == Purpose::Task
                    && attempt
                        .task
                        .gates
                        .iter()
                        .any(|g| matches!(g, Gate::Score { .. }));
                // A warm-up belongs to no run, so it has no trace either.
                let span = if attempt.purpose == Purpose::WarmUp {
                    tracing::Span::none()
                } else {
                    tracing::info_span!(parent: &attempt.span, "review")
                };
                if scored {
                    let shared = Arc::clone(&state.shared);
                    state.scoring.spawn(async move {
                        review_and_reply(&shared, attempt, outcome, span).await;
                    });
                } else {
                    review_and_reply(&state.shared, attempt, outcome, span).await;
                }
            }
            ReviewerMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            ReviewerMsg::Crash => injected_fault(AgentKind::Reviewer),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::missing_outputs;
    use serde_json::json;

    #[test]
    fn an_output_is_checked_against_the_fields_its_task_declares() {
        let declared = ["path".to_owned(), "frames".to_owned(), "note".to_owned()];
        let complete = json!({ "path": "a.png", "frames": 3, "note": null, "extra": 1 });
        assert!(missing_outputs(&complete, &declared).is_none());

        let partial = missing_outputs(&json!({ "frames": 3 }), &declared).unwrap();
        assert!(!partial.passed);
        assert_eq!(
            partial.reason,
            r#"output lacks fields "path", "note" that the task declares (outputs: path, frames, note)"#
        );

        let text = missing_outputs(&json!("done"), &declared).unwrap();
        assert!(!text.passed);
        assert!(
            text.reason.starts_with("output is not a JSON object"),
            "{}",
            text.reason
        );
    }
}
