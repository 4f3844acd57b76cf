//! The task graph of a validated plan: levels, ready sets, critical path, failure and
//! compensation orders. Hand-written: the graph is small and the operations are few, so a graph
//! crate would add a dependency for about a hundred lines.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::{Task, TaskId};

/// The weight of a task with neither `estimate` nor `timeout`.
pub const UNIT_WEIGHT: Duration = Duration::from_secs(1);

/// The dependency graph of a validated (acyclic) plan. Indices follow the plan's task order.
#[derive(Debug, Clone)]
pub struct Dag {
    ids: Vec<TaskId>,
    by_id: HashMap<TaskId, usize>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    weights: Vec<Duration>,
    levels: Vec<Vec<usize>>,
    /// Position of each task in a topological order (level by level).
    topo_rank: Vec<usize>,
}

impl Dag {
    /// Builds the graph of validated tasks (no unknown deps, no cycles), which
    /// [`super::Plan::from_toml`] guarantees.
    pub(super) fn new(tasks: &[Task]) -> Dag {
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
        let by_id: HashMap<TaskId, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let index = |id: &TaskId| by_id.get(id).copied();
        let deps: Vec<Vec<usize>> = tasks
            .iter()
            .map(|t| t.deps.iter().filter_map(index).collect())
            .collect();
        let mut dependents = vec![Vec::new(); ids.len()];
        for (task, task_deps) in deps.iter().enumerate() {
            for &d in task_deps {
                dependents[d].push(task);
            }
        }
        let weights = tasks
            .iter()
            .map(|t| t.estimate.or(t.timeout).unwrap_or(UNIT_WEIGHT))
            .collect();
        // Kahn's algorithm, one level at a time.
        let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut level: Vec<usize> = (0..ids.len()).filter(|&i| remaining[i] == 0).collect();
        let mut levels = Vec::new();
        let mut topo_rank = vec![0; ids.len()];
        let mut rank = 0;
        while !level.is_empty() {
            let mut next = Vec::new();
            for &task in &level {
                topo_rank[task] = rank;
                rank += 1;
                for &dependent in &dependents[task] {
                    remaining[dependent] -= 1;
                    if remaining[dependent] == 0 {
                        next.push(dependent);
                    }
                }
            }
            next.sort_unstable();
            levels.push(std::mem::replace(&mut level, next));
        }
        Dag {
            ids,
            by_id,
            deps,
            dependents,
            weights,
            levels,
            topo_rank,
        }
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    fn names(&self, indices: impl IntoIterator<Item = usize>) -> Vec<TaskId> {
        indices.into_iter().map(|i| self.ids[i].clone()).collect()
    }

    /// Tasks by level: level 0 has no deps; a task's level is one more than its deepest dep.
    pub fn levels(&self) -> Vec<Vec<TaskId>> {
        self.levels
            .iter()
            .map(|l| self.names(l.iter().copied()))
            .collect()
    }

    /// The tasks that depend directly on `id` (empty for an unknown id).
    pub fn dependents(&self, id: &str) -> Vec<TaskId> {
        self.index(id)
            .map(|i| self.names(self.dependents[i].iter().copied()))
            .unwrap_or_default()
    }

    /// The longest chain by weight (a task's `estimate`, else its `timeout`, else
    /// [`UNIT_WEIGHT`]) and its total weight.
    pub fn critical_path(&self) -> (Vec<TaskId>, Duration) {
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        order.sort_by_key(|&i| self.topo_rank[i]);
        let mut finish = vec![Duration::ZERO; self.ids.len()];
        let mut via: Vec<Option<usize>> = vec![None; self.ids.len()];
        for &task in &order {
            let best = self.deps[task].iter().copied().max_by_key(|&d| finish[d]);
            let start = best.map_or(Duration::ZERO, |d| finish[d]);
            via[task] = best;
            // Saturating: estimates are the plan's, and "584942417355y" twice overflows.
            finish[task] = start.saturating_add(self.weights[task]);
        }
        let Some(mut last) = order.iter().copied().max_by_key(|&i| finish[i]) else {
            return (Vec::new(), Duration::ZERO);
        };
        let total = finish[last];
        let mut path = vec![last];
        while let Some(prev) = via[last] {
            path.push(prev);
            last = prev;
        }
        path.reverse();
        (self.names(path), total)
    }

    /// Tasks not in `completed` whose deps are all in `completed`, in plan order. The caller
    /// removes tasks it already started.
    pub fn ready(&self, completed: &HashSet<TaskId>) -> Vec<TaskId> {
        (0..self.ids.len())
            .filter(|&i| {
                !completed.contains(&self.ids[i])
                    && self.deps[i]
                        .iter()
                        .all(|&d| completed.contains(&self.ids[d]))
            })
            .map(|i| self.ids[i].clone())
            .collect()
    }

    /// Every task that depends on `id` directly or indirectly, in topological order: what to
    /// mark skipped when `id` fails for good.
    pub fn dependents_transitive(&self, id: &str) -> Vec<TaskId> {
        let Some(start) = self.index(id) else {
            return Vec::new();
        };
        let mut seen = vec![false; self.ids.len()];
        let mut queue = VecDeque::from([start]);
        let mut found = Vec::new();
        while let Some(task) = queue.pop_front() {
            for &d in &self.dependents[task] {
                if !seen[d] {
                    seen[d] = true;
                    found.push(d);
                    queue.push_back(d);
                }
            }
        }
        found.sort_by_key(|&i| self.topo_rank[i]);
        self.names(found)
    }

    /// The completed tasks in reverse dependency order (dependents before what they depend
    /// on): the order in which to run compensations.
    pub fn reverse_completion_order(&self, completed: &HashSet<TaskId>) -> Vec<TaskId> {
        let mut done: Vec<usize> = (0..self.ids.len())
            .filter(|&i| completed.contains(&self.ids[i]))
            .collect();
        done.sort_by_key(|&i| std::cmp::Reverse(self.topo_rank[i]));
        self.names(done)
    }
}
