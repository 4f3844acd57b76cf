//! The Optimizer: assembles a task's context and renders its arguments.
//!
//! For a task whose args use `{{context}}`, the context is the outputs of its direct
//! dependencies, then the run's memories most relevant to the task (store search in the run's
//! namespace), within the configured budget. Every attempt's args are rendered here, then the
//! attempt goes on to the Executor.

use std::fmt::Write as _;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::AgentKind;
use super::config::OptimizerConfig;
use super::mailbox::Envelope;
use super::pipeline::{Attempt, ExecutorMsg, OptimizerMsg, Peers, injected_fault};
use crate::plan::render;
use crate::store::{Namespace, SearchOptions, Store};

/// The Optimizer actor.
pub(crate) struct Optimizer;

/// What the supervisor starts it with.
#[derive(Clone)]
pub(crate) struct OptimizerArgs {
    pub peers: Peers,
    pub store: Store,
    pub config: OptimizerConfig,
}

/// The run's memory namespace.
pub(crate) fn run_namespace(run_id: &str) -> Option<Namespace> {
    Namespace::session("run", run_id).ok()
}

fn assemble(args: &OptimizerArgs, attempt: &Attempt) -> String {
    let budget = args.config.max_context_chars;
    let mut context = String::new();
    for dep in &attempt.task.deps {
        if let Some(output) = attempt.ctx.outputs.get(dep.as_str()) {
            let _ = writeln!(context, "## output of {dep}\n{output}\n");
        }
    }
    if let Some(namespace) = run_namespace(&attempt.run_id) {
        let query = format!(
            "{} {} {}",
            attempt.task.id, attempt.call, attempt.args_template
        );
        let options = SearchOptions {
            namespace: Some(namespace),
            limit: args.config.memories,
            ..SearchOptions::default()
        };
        for hit in args.store.search(&query, &options) {
            let _ = writeln!(context, "## memory\n{}\n", hit.memory.content);
        }
    }
    if context.len() > budget {
        // Cut at a character boundary, then back to the last whole word.
        let mut end = budget;
        while !context.is_char_boundary(end) {
            end -= 1;
        }
        let cut = context[..end].rfind(char::is_whitespace).unwrap_or(end);
        context.truncate(cut);
    }
    context
}

impl Actor for Optimizer {
    type Msg = Envelope<OptimizerMsg>;
    type State = OptimizerArgs;
    type Arguments = OptimizerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: OptimizerArgs,
    ) -> Result<OptimizerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut OptimizerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let Envelope { msg, .. } = envelope;
        match msg {
            OptimizerMsg::Prepare(mut attempt) => {
                if attempt.wants_context {
                    attempt.ctx.context = assemble(state, &attempt);
                }
                attempt.args =
                    Some(render(&attempt.args_template, &attempt.ctx).map_err(|e| e.to_string()));
                if let Err(e) = state
                    .peers
                    .executor
                    .send(ExecutorMsg::Execute(attempt))
                    .await
                {
                    // The Orchestrator re-dispatches in-flight work when the Executor is back.
                    tracing::warn!("optimizer: attempt not delivered: {e}");
                }
            }
            OptimizerMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            OptimizerMsg::Crash => injected_fault(AgentKind::Optimizer),
        }
        Ok(())
    }
}
