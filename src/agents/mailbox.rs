//! Bounded mailboxes in front of ractor's unbounded ones.
//!
//! A [`Mailbox`] is a semaphore of `bound` slots plus the agent's current `ActorRef` (swapped by
//! the supervisor when it restarts the agent, so senders keep one handle across restarts). A
//! message holds its slot inside its [`Envelope`] until the agent has handled it and drops it; the
//! messages of an agent that dies are dropped with its queue, which frees their slots.

use std::sync::Arc;

use parking_lot::RwLock;
use ractor::ActorRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AgentError, AgentKind};

/// A message and the mailbox slot it occupies.
pub struct Envelope<M> {
    /// The message.
    pub msg: M,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<M> Envelope<M> {
    /// An envelope outside the bound (the supervisor's own control messages).
    pub(crate) fn unbounded(msg: M) -> Self {
        Self { msg, _slot: None }
    }
}

struct Inner<M: Send + 'static> {
    agent: AgentKind,
    bound: usize,
    slots: Arc<Semaphore>,
    actor: RwLock<Option<ActorRef<Envelope<M>>>>,
}

/// A bounded handle to one agent that survives its restarts.
pub struct Mailbox<M: Send + 'static> {
    inner: Arc<Inner<M>>,
}

impl<M: Send + 'static> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Send + 'static> Mailbox<M> {
    /// An empty mailbox of `bound` slots for `agent` (no actor attached yet).
    pub(crate) fn new(agent: AgentKind, bound: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                agent,
                bound,
                slots: Arc::new(Semaphore::new(bound)),
                actor: RwLock::new(None),
            }),
        }
    }

    /// The agent behind this mailbox.
    pub fn agent(&self) -> AgentKind {
        self.inner.agent
    }

    /// The bound.
    pub fn bound(&self) -> usize {
        self.inner.bound
    }

    /// Messages queued or being handled now.
    pub fn depth(&self) -> usize {
        self.inner.bound - self.inner.slots.available_permits()
    }

    pub(crate) fn attach(&self, actor: ActorRef<Envelope<M>>) {
        *self.inner.actor.write() = Some(actor);
    }

    pub(crate) fn detach(&self) {
        *self.inner.actor.write() = None;
    }

    pub(crate) fn actor(&self) -> Option<ActorRef<Envelope<M>>> {
        self.inner.actor.read().clone()
    }

    fn deliver(&self, envelope: Envelope<M>) -> Result<(), AgentError> {
        let unavailable = AgentError::Unavailable {
            agent: self.inner.agent,
        };
        let guard = self.inner.actor.read();
        let Some(actor) = guard.as_ref() else {
            return Err(unavailable);
        };
        actor.send_message(envelope).map_err(|_| unavailable)
    }

    /// Sends `msg`, waiting while the mailbox is full.
    pub async fn send(&self, msg: M) -> Result<(), AgentError> {
        let slot = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| AgentError::ShutDown)?;
        self.deliver(Envelope {
            msg,
            _slot: Some(slot),
        })
    }

    /// Sends `msg` if a slot is free, else fails with [`AgentError::Busy`] at once.
    pub fn try_send(&self, msg: M) -> Result<(), AgentError> {
        let slot = Arc::clone(&self.inner.slots)
            .try_acquire_owned()
            .map_err(|_| AgentError::Busy {
                agent: self.inner.agent,
                bound: self.inner.bound,
            })?;
        self.deliver(Envelope {
            msg,
            _slot: Some(slot),
        })
    }

    /// Sends a control message outside the bound (supervisor notices, which must not wait).
    pub(crate) fn send_control(&self, msg: M) -> Result<(), AgentError> {
        self.deliver(Envelope::unbounded(msg))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::Notify;

    use super::*;

    /// Handles each message by waiting for a release.
    struct Stuck;

    impl Actor for Stuck {
        type Msg = Envelope<u32>;
        type State = Arc<Notify>;
        type Arguments = Arc<Notify>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            release: Arc<Notify>,
        ) -> Result<Arc<Notify>, ActorProcessingErr> {
            Ok(release)
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            _message: Self::Msg,
            release: &mut Arc<Notify>,
        ) -> Result<(), ActorProcessingErr> {
            release.notified().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_full_mailbox_pushes_back_and_frees_slots_as_messages_are_handled() {
        let release = Arc::new(Notify::new());
        let (actor, handle) = Actor::spawn(None, Stuck, Arc::clone(&release))
            .await
            .unwrap();
        let mailbox = Mailbox::new(AgentKind::Executor, 3);
        mailbox.attach(actor.clone());
        for i in 0..3 {
            mailbox.try_send(i).unwrap();
        }
        assert_eq!(mailbox.depth(), 3);
        let busy = mailbox.try_send(9).unwrap_err();
        assert!(
            matches!(
                busy,
                AgentError::Busy {
                    agent: AgentKind::Executor,
                    bound: 3
                }
            ),
            "{busy}"
        );
        assert!(busy.to_string().contains("mailbox of 3 messages is full"));
        // A waiting sender gets in once one message has been handled.
        let waiting = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.send(4).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "send must wait while the mailbox is full"
        );
        release.notify_one();
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // The actor is stuck in its next message: kill it rather than wait for it to stop.
        actor.kill();
        handle.await.unwrap();
        mailbox.detach();
        assert!(matches!(
            mailbox.try_send(5),
            Err(AgentError::Unavailable { .. } | AgentError::Busy { .. })
        ));
    }
}
