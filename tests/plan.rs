//! Plan parsing, validation, DAG analysis and templates through the public API.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use tetrarch::plan::{
    Gate, Plan, PlanError, ScoreBound, ScoreMetric, StaticCatalog, Task, TaskId, TemplateContext,
    render,
};
use tetrarch::session::PoolKind;

const POSTER: &str = include_str!("fixtures/plans/poster.toml");
const BROKEN: &str = include_str!("fixtures/plans/broken.toml");

fn ids(v: &[TaskId]) -> Vec<&str> {
    v.iter().map(TaskId::as_str).collect()
}

fn set(v: &[&str]) -> HashSet<TaskId> {
    v.iter().map(|s| TaskId::from(*s)).collect()
}

fn errors(text: &str) -> Vec<String> {
    Plan::from_toml(text, "p.toml").unwrap_err().lines()
}

#[test]
fn example_plan_parses_with_defaults_applied() {
    let plan = Plan::from_toml(POSTER, "poster.toml").unwrap();
    assert_eq!(plan.name, "poster");
    assert_eq!(plan.tasks.len(), 5);
    let compose = plan.task("compose").unwrap();
    assert_eq!(compose.tool.pool, "shell");
    assert_eq!(compose.tool.tool, "magick");
    assert_eq!(compose.timeout, Some(Duration::from_secs(120)));
    assert_eq!(compose.retries, 1);
    assert_eq!(compose.max_attempts, 3);
    assert_eq!(compose.gates.len(), 3);
    assert!(matches!(
        compose.gates[2],
        Gate::Score { metric: ScoreMetric::Flip, bound: ScoreBound::Max(m), .. } if m == 0.05
    ));
    let publish = plan.task("publish").unwrap();
    assert_eq!(publish.retries, 3);
    assert_eq!(publish.max_attempts, 1);
    let comp = publish.compensate.as_ref().unwrap();
    assert_eq!(comp.tool.to_string(), "cdn.delete");
    assert_eq!(
        comp.args,
        json!({"version": "{{tasks.publish.output.version}}"})
    );
    assert!(plan.task("render-day").unwrap().cacheable);
    assert!(!publish.cacheable);
}

#[test]
fn example_plan_dag() {
    let plan = Plan::from_toml(POSTER, "poster.toml").unwrap();
    let dag = plan.dag();
    let all = dag.levels();
    let levels: Vec<Vec<&str>> = all.iter().map(|l| ids(l)).collect();
    assert_eq!(
        levels,
        vec![
            vec!["render-day", "render-dusk", "render-night"],
            vec!["compose"],
            vec!["publish"]
        ]
    );
    let (path, length) = dag.critical_path();
    assert_eq!(ids(&path), ["render-night", "compose", "publish"]);
    // estimate 50s + default timeout 2m + timeout 30s.
    assert_eq!(length, Duration::from_secs(200));
    assert_eq!(
        ids(&dag.ready(&HashSet::new())),
        ["render-day", "render-dusk", "render-night"]
    );
    assert_eq!(
        ids(&dag.ready(&set(&["render-day", "render-dusk"]))),
        ["render-night"]
    );
    assert_eq!(
        ids(&dag.ready(&set(&["render-day", "render-dusk", "render-night"]))),
        ["compose"]
    );
    assert_eq!(ids(&dag.dependents("compose")), ["publish"]);
    assert_eq!(
        ids(&dag.dependents_transitive("render-dusk")),
        ["compose", "publish"]
    );
    assert!(dag.dependents_transitive("publish").is_empty());
    assert_eq!(
        ids(&dag.reverse_completion_order(&set(&["render-day", "publish", "compose"]))),
        ["publish", "compose", "render-day"]
    );
}

#[test]
fn every_error_is_reported_with_its_line() {
    let lines = Plan::from_toml(BROKEN, "broken.toml").unwrap_err().lines();
    let expected = [
        "broken.toml:4:11: defaults.timeout must be more than zero",
        "broken.toml:15:18: task \"render\" depends on unknown task \"rendr\"",
        "broken.toml:15:27: task \"render\" depends on itself",
        "broken.toml:16:57: task \"render\" args.seed: unknown template reference `{{seed}}`",
        "broken.toml:17:16: task \"render\" max_attempts must be at least 1",
        "broken.toml:18:11: task \"render\" timeout \"soon\" is not a duration",
        "broken.toml:21:6: duplicate task id \"render\" (first defined on line 13)",
        "broken.toml:22:8: task \"render\" tool: \"blender\" is not POOL.TOOL",
        "broken.toml:23:10: task \"render\" gates[0]: gate `matches` has a bad regex \"(\"",
        "broken.toml:23:29: task \"render\" gates[1]: unknown score metric \"mse\"",
        "broken.toml:28:9: cycle: fetch -> publish -> fetch",
        "broken.toml:29:18: task \"publish\" args.file: {{tasks.render.output.path}} refers to task \"render\", which is not upstream of \"publish\"",
        "broken.toml:36:18: task \"notify\" args.link: {{tasks.publish.output.link}} refers to output field \"link\", which task \"publish\" does not declare",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(line.starts_with(want), "got {line:?}\nwant {want:?}");
    }
}

#[test]
fn catalogue_checks_pools_and_tools() {
    let catalog = StaticCatalog::new()
        .with_open_pool("shell")
        .with_tools("blender", ["render"])
        .with_tools("cdn", ["upload"]);
    let err = Plan::from_toml_with_catalog(POSTER, "poster.toml", &catalog).unwrap_err();
    assert_eq!(
        err.lines(),
        [
            "poster.toml:59:23: task \"publish\" compensate.tool: pool \"cdn\" has no tool \"delete\" (its tools: upload)"
        ]
    );
    let catalog = catalog.with_tools("cdn", ["upload", "delete"]);
    Plan::from_toml_with_catalog(POSTER, "poster.toml", &catalog).unwrap();
    let catalog = StaticCatalog::new().with_open_pool("cdn");
    let err = Plan::from_toml_with_catalog(POSTER, "poster.toml", &catalog).unwrap_err();
    assert_eq!(err.diagnostics.len(), 4, "{err}"); // 3 blender tasks + compose
    assert!(err.lines()[0].ends_with("task \"render-day\" tool: unknown pool \"blender\""));
}

#[test]
fn syntax_and_shape_errors_have_locations() {
    assert_eq!(
        errors("name = \"x\"\n[[task]\n"),
        ["p.toml:2:8: unclosed array table, expected `]`"]
    );
    assert_eq!(
        errors("name = \"x\"\n[[task]]\nid = \"a\"\ntool = 3\n"),
        ["p.toml:4:8: invalid type: integer `3`, expected a string"]
    );
    let e = errors("name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\ntimeot = \"1s\"\n");
    assert!(
        e[0].starts_with("p.toml:5:1: unknown field `timeot`"),
        "{e:?}"
    );
    let e = errors("name = \"x\"\n[[task]]\ntool = \"p.t\"\n");
    assert!(e[0].contains("missing field `id`"), "{e:?}");
    assert_eq!(
        errors("name = \"x\"\n"),
        ["p.toml:1:1: plan has no tasks (add [[task]] tables)"]
    );
    let e = errors("name = \"\"\n[[task]]\nid = \"a b\"\ntool = \".t\"\n");
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains("plan name is empty"));
    assert!(e[1].contains("characters other than"));
    assert!(e[2].contains("pool name \"\""));
}

#[test]
fn template_scope_rules() {
    let plan = |args: &str| {
        format!(
            "name = \"t\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\noutputs = [\"path\"]\n\
             [[task]]\nid = \"b\"\ntool = \"p.t\"\ndeps = [\"a\"]\n\
             [[task]]\nid = \"c\"\ntool = \"p.t\"\ndeps = [\"b\"]\n\
             args = {args}\n"
        )
    };
    // Transitive upstream, declared field, whole output, the built-ins.
    for ok in [
        "{ p = \"{{tasks.a.output.path}}\" }",
        "{ p = \"{{tasks.a.output}}\", q = \"{{tasks.b.output.anything.0}}\" }",
        "[\"{{attempt}} {{feedback}} {{run.id}} {{plan.name}}\"]",
    ] {
        Plan::from_toml(&plan(ok), "p.toml").unwrap();
    }
    for (bad, why) in [
        ("{ p = \"{{tasks.a.output.size}}\" }", "does not declare"),
        ("{ p = \"{{tasks.c.output}}\" }", "own output"),
        ("{ p = \"{{tasks.zz.output}}\" }", "unknown task \"zz\""),
        (
            "{ p = \"{{tasks.a.result}}\" }",
            "unknown template reference",
        ),
        ("{ p = \"{{attempt\" }", "unclosed"),
    ] {
        let e = errors(&plan(bad));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with("p.toml:14:") && e[0].contains(why),
            "{bad}: {e:?}"
        );
        assert!(e[0].contains("task \"c\" args.p"), "{e:?}");
    }
    // Gates may name the task itself; a task that is not upstream is still an error.
    let gates = "name = \"t\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\n[[task]]\nid = \"b\"\ntool = \"p.t\"\n\
                 gates = [{ file_exists = \"{{tasks.b.output.path}}\" }, { score = \"ssim\", reference = \"{{tasks.a.output.path}}\", min = 0.9 }]\n";
    let e = errors(gates);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("gates[1].reference") && e[0].contains("not upstream"),
        "{e:?}"
    );
}

#[test]
fn rendering_args_with_upstream_outputs() {
    let plan = Plan::from_toml(POSTER, "poster.toml").unwrap();
    let mut ctx = TemplateContext {
        context: String::new(),
        attempt: 2,
        feedback: "FLIP 0.08 > 0.05".into(),
        run_id: "r7".into(),
        plan_name: plan.name.as_str().into(),
        ..TemplateContext::default()
    };
    for v in ["day", "dusk", "night"] {
        ctx.outputs.insert(
            format!("render-{v}"),
            json!({"path": format!("out/{v}.png"), "frames": 1}),
        );
    }
    let args = render(&plan.task("compose").unwrap().args, &ctx).unwrap();
    assert_eq!(
        args,
        json!({
            "inputs": ["out/day.png", "out/dusk.png", "out/night.png"],
            "out": "out/r7/poster.png",
            "notes": "attempt 2: FLIP 0.08 > 0.05"
        })
    );
    ctx.outputs.remove("render-dusk");
    let err = render(&plan.task("compose").unwrap().args, &ctx).unwrap_err();
    assert!(err.to_string().contains("render-dusk"), "{err}");
}

/// A TOML plan of `n` tasks where task i depends on each task in `deps[i]` (all < i).
fn plan_text(deps: &[Vec<usize>]) -> String {
    let mut text = String::from("name = \"gen\"\n");
    for (i, d) in deps.iter().enumerate() {
        let list: Vec<String> = d.iter().map(|j| format!("\"t{j}\"")).collect();
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"p.run\"\ndeps = [{}]\nestimate = \"{}s\"\n",
            list.join(", "),
            i % 7 + 1
        ));
    }
    text
}

fn dag_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..24).prop_flat_map(|n| {
        (0..n)
            .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(4)))
            .collect::<Vec<_>>()
    })
}

fn reaches(deps: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut stack = vec![from];
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n) {
            stack.extend(deps[n].iter().copied());
        }
    }
    false
}

proptest! {
    #[test]
    fn acyclic_plans_validate_and_levels_respect_deps(deps in dag_strategy()) {
        let plan = Plan::from_toml(&plan_text(&deps), "gen.toml").unwrap();
        let dag = plan.dag();
        let mut level_of = vec![usize::MAX; deps.len()];
        for (n, level) in dag.levels().iter().enumerate() {
            for id in level {
                level_of[id.as_str()[1..].parse::<usize>().unwrap()] = n;
            }
        }
        for (i, d) in deps.iter().enumerate() {
            prop_assert!(level_of[i] != usize::MAX, "t{i} has no level");
            for &j in d {
                prop_assert!(level_of[j] < level_of[i]);
            }
            if !d.is_empty() {
                prop_assert_eq!(level_of[i], d.iter().map(|&j| level_of[j]).max().unwrap() + 1);
            }
        }
        // The critical path is a chain of deps whose weight is the maximum finish time.
        let (path, length) = dag.critical_path();
        let idx: Vec<usize> = path.iter().map(|t| t.as_str()[1..].parse().unwrap()).collect();
        for pair in idx.windows(2) {
            prop_assert!(deps[pair[1]].contains(&pair[0]));
        }
        let weight = |i: usize| Duration::from_secs((i % 7 + 1) as u64);
        prop_assert_eq!(length, idx.iter().map(|&i| weight(i)).sum::<Duration>());
        let mut finish = vec![Duration::ZERO; deps.len()];
        for i in 0..deps.len() {
            finish[i] = deps[i].iter().map(|&j| finish[j]).max().unwrap_or_default() + weight(i);
        }
        prop_assert_eq!(Some(length), finish.iter().copied().max());
    }

    #[test]
    fn added_back_edges_are_reported_as_real_cycles(deps in dag_strategy(), pick in any::<proptest::sample::Index>()) {
        // Pick a pair (lo, hi) with hi depending on lo, and make lo depend on hi.
        let pairs: Vec<(usize, usize)> = (0..deps.len())
            .flat_map(|hi| (0..hi).filter(move |&lo| lo < hi).map(move |lo| (lo, hi)))
            .filter(|&(lo, hi)| reaches(&deps, hi, lo))
            .collect();
        prop_assume!(!pairs.is_empty());
        let (lo, hi) = pairs[pick.index(pairs.len())];
        let mut deps = deps;
        deps[lo].push(hi);
        let err: PlanError = Plan::from_toml(&plan_text(&deps), "gen.toml").unwrap_err();
        // Other cycles through the same tasks are counted after the path, not listed.
        let cycles: Vec<&str> = err.diagnostics.iter()
            .filter_map(|d| d.message.strip_prefix("cycle: "))
            .filter_map(|c| c.split(" (and at least ").next())
            .collect();
        prop_assert!(!cycles.is_empty(), "{}", err);
        prop_assert_eq!(cycles.len(), err.diagnostics.len(), "{}", err);
        for cycle in cycles {
            let nodes: Vec<usize> = cycle.split(" -> ").map(|t| t[1..].parse().unwrap()).collect();
            prop_assert!(nodes.len() >= 3);
            prop_assert_eq!(nodes.first(), nodes.last());
            for pair in nodes.windows(2) {
                prop_assert!(deps[pair[0]].contains(&pair[1]), "{} is not an edge path", cycle);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        let _ = Plan::from_toml(&text, "fuzz.toml");
    }

    #[test]
    fn plan_like_text_never_panics(
        parts in proptest::collection::vec(prop_oneof![
            Just("name = \"x\"\n"), Just("[[task]]\n"), Just("id = \"a\"\n"), Just("id = \"b\"\n"),
            Just("tool = \"p.t\"\n"), Just("deps = [\"a\"]\n"), Just("deps = [\"b\"]\n"),
            Just("args = { x = \"{{tasks.a.output.y}}\" }\n"), Just("timeout = \"0s\"\n"),
            Just("gates = [{ json = \"/a\", lt = 3 }]\n"), Just("[defaults]\n"), Just("max_attempts = 0\n"),
            Just("é{{\n"), Just("outputs = [\"y\"]\n"),
        ], 0..16)
    ) {
        let text: String = parts.concat();
        if let Err(e) = Plan::from_toml(&text, "gen.toml") {
            for d in &e.diagnostics {
                prop_assert!(d.location.line >= 1 && d.location.line <= text.lines().count().max(1) + 1);
            }
        }
    }
}

/// The parts of a task that printing must keep (everything but source locations).
fn summary(plan: &Plan) -> Vec<String> {
    plan.tasks
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {:?} {:?} {:?} {} {} {:?} {:?} {} {:?}",
                t.id,
                t.tool,
                t.args,
                t.deps,
                t.timeout,
                t.estimate,
                t.retries,
                t.max_attempts,
                t.gates.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>(),
                t.compensate
                    .as_ref()
                    .map(|c| (c.tool.to_string(), c.args.clone())),
                t.cacheable,
                t.outputs
            )
        })
        .collect()
}

#[test]
fn plans_print_back_to_equal_plans() {
    let all_gates = "name = \"g\"\n[[task]]\nid = \"a\"\ntool = \"mcp.fs.read\"\nargs = [1, 2.5, true, \"s\"]\n\
        gates = [{ exit = 2 }, { contains = \"x\" }, { matches = 'a\\d+' }, { json = \"/a/0\", ge = 1.5 },\n\
        { json = \"\", exists = false }, { json = \"/s\", ne = \"bad\" }, { file_exists = \"{{tasks.a.output.p}}\" },\n\
        { score = \"psnr\", reference = \"r.exr\", min = 30 }, { score = \"hdr-flip\", reference = \"r.exr\", test = \"t.exr\", max = 0.1 }]\n";
    for text in [POSTER, all_gates] {
        let first = Plan::from_toml(text, "a.toml").unwrap();
        let printed = first.to_toml();
        let second =
            Plan::from_toml(&printed, "b.toml").unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(summary(&first), summary(&second), "{printed}");
        assert_eq!(first.name, second.name);
        assert_eq!(first.dag().levels(), second.dag().levels());
        assert_eq!(printed, second.to_toml());
    }
}

#[test]
fn plans_print_back_with_their_pools_fixes_context_files_and_permissions() {
    let text = r#"name = "full"
permissions = "rules/settings.json"

[pools.tools]
kind = "mcp"
command = ["./server", "--stdio"]
cwd = "servers"
env_allowlist = ["PATH", "HOME"]
env = { MODE = "fast" }
min_idle = 2
max_size = 3
acquire_timeout = "5s"
start_timeout = "1m 30s"
call_timeout = "250ms"
idle_timeout = "1h"
health_check_interval = "2m"
health_check_timeout = "750ms"
warmup = { tool = "count", args = { path = "a.md" }, calls = 3 }

[pools.judge]
kind = "scorer"
device = "cpu"
warmup_size = [640, 480]

[pools.sh]
kind = "process"
command = ["sh", "-c"]

[[task]]
id = "a"
tool = "tools.count"
args = { text = "{{context}}" }
context_files = ["docs/a.md", "b.md"]
fixes = [{ when = "timed? out", args = { fast = true } }, { when = "^x$", args = { x = 1 } }]

[[task]]
id = "b"
tool = "sh.run"
args = { argv = ["make"] }
fixes = [{ when = "timed? out", args = { argv = ["make", "-j1"] }, env = { RETRY = "1" } }, { when = "^x$", env = { X = "1" } }]
"#;
    let first = Plan::from_toml(text, "a.toml").unwrap();
    let printed = first.to_toml();
    let second = Plan::from_toml(&printed, "b.toml").unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(first.pools, second.pools, "{printed}");
    assert_eq!(first.pools["tools"].start_timeout, Duration::from_secs(90));
    assert_eq!(
        second.pools["tools"].idle_timeout,
        Duration::from_secs(3600)
    );
    assert_eq!(
        second.pools["tools"].health_check_timeout,
        Duration::from_millis(750)
    );
    assert_eq!(
        second.permissions.as_deref(),
        Some(Path::new("rules/settings.json"))
    );
    let (a, b) = (&first.tasks[0], &second.tasks[0]);
    assert_eq!(b.context_files, [Path::new("docs/a.md"), Path::new("b.md")]);
    assert_eq!(a.context_files, b.context_files);
    let fixes = |t: &Task| {
        t.fixes
            .iter()
            .map(|f| (f.when.as_str().to_owned(), f.args.clone(), f.env.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(fixes(a).len(), 2);
    assert_eq!(fixes(a), fixes(b), "{printed}");
    let (a, b) = (&first.tasks[1], &second.tasks[1]);
    assert_eq!(fixes(a).len(), 2);
    assert_eq!(fixes(a), fixes(b), "{printed}");
    assert_eq!(printed, second.to_toml());
}

#[test]
fn module_doc_example_is_the_fixture() {
    // The example in src/plan/mod.rs is the one the tests check; keep the two identical.
    let source = include_str!("../src/plan/mod.rs");
    let mut inside = false;
    let mut example = String::new();
    for line in source.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match (inside, doc) {
            (false, "```toml") => inside = true,
            (true, "```") => break,
            (true, text) => {
                example.push_str(text);
                example.push('\n');
            }
            _ => {}
        }
    }
    assert_eq!(example, POSTER);
}

#[test]
fn long_chains_and_long_cycles_are_handled() {
    let n = 5000;
    let deps: Vec<Vec<usize>> = (0..n)
        .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
        .collect();
    let plan = Plan::from_toml(&plan_text(&deps), "chain.toml").unwrap();
    assert_eq!(plan.dag().levels().len(), n);
    assert_eq!(plan.dag().critical_path().0.len(), n);
    assert_eq!(plan.dag().dependents_transitive("t0").len(), n - 1);

    let mut cyclic = deps;
    cyclic[0].push(n - 1);
    let err = Plan::from_toml(&plan_text(&cyclic), "chain.toml").unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    let message = &err.diagnostics[0].message;
    assert!(
        message.starts_with(&format!("cycle: t0 -> t{} -> t{}", n - 1, n - 2)),
        "{}",
        &message[..60]
    );
    assert!(message.ends_with("t1 -> t0"));
    // The search enters at t0 and closes the cycle at t1's dependency on t0.
    assert_eq!(err.diagnostics[0].location.line, 10);
}

#[test]
fn a_critical_path_too_long_for_a_duration_saturates() {
    let plan = Plan::from_toml(
        r#"
name = "long"
[[task]]
id = "a"
tool = "sh.run"
estimate = "18446744073709551615s"
[[task]]
id = "b"
tool = "sh.run"
deps = ["a"]
estimate = "18446744073709551615s"
"#,
        "long.toml",
    )
    .unwrap();
    let (path, length) = plan.dag().critical_path();
    assert_eq!(path.len(), 2);
    assert_eq!(length, Duration::MAX);
}

#[test]
fn a_fixs_templates_are_checked_like_the_tasks_args() {
    let e = errors(
        r#"
name = "fix"
[[task]]
id = "a"
tool = "sh.run"
[[task]]
id = "b"
tool = "sh.run"
args = { argv = ["build"] }
fixes = [
  { when = "oops", args = { argv = ["{{nope}}"] } },
  { when = "disk", env = { TARGET = "{{tasks.zz.output}}" } },
  { when = "late", args = { from = "{{tasks.a.output}}" } },
]
"#,
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("p.toml:11:")
            && e[0].contains("fixes[0].args.argv[0]: unknown template reference"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.toml:12:")
            && e[1].contains("fixes[1].env.TARGET")
            && e[1].contains("unknown task \"zz\""),
        "{e:?}"
    );
    assert!(e[2].contains("not upstream of \"b\""), "{e:?}");
}

#[test]
fn a_plans_own_pools_are_checked_with_their_lines() {
    let e = errors(
        r#"
name = "pools"
[pools.empty]
kind = "process"
[pools.crowded]
kind = "native"
min_idle = 5
max_size = 1
[pools.none]
kind = "native"
max_size = 0
[pools.instant]
kind = "mcp"
command = ["server"]
call_timeout = "0s"
[pools.misplaced]
kind = "process"
command = ["sh"]
device = "cuda"
[pools."a.b"]
kind = "native"
[pools.my__srv]
kind = "native"
[pools.ok]
kind = "process"
command = ["sh", "-c"]
[pools.hasty]
kind = "native"
health_check_timeout = "0s"
[[task]]
id = "t"
tool = "ok.run"
"#,
    );
    let expected = [
        ("p.toml:3:", "pool \"empty\": `command` is empty"),
        (
            "p.toml:5:",
            "pool \"crowded\": min_idle (5) is over max_size (1)",
        ),
        ("p.toml:9:", "pool \"none\": max_size must be at least 1"),
        (
            "p.toml:12:",
            "pool \"instant\": `call_timeout` must be more than zero",
        ),
        (
            "p.toml:16:",
            "pool \"misplaced\": `device` is for scorer pools only",
        ),
        (
            "p.toml:20:",
            "pool \"a.b\": a pool's name must be non-empty and without `.`",
        ),
        (
            "p.toml:22:",
            "pool \"my__srv\": a pool's name must be ASCII letters, digits, `-` and single inner `_`",
        ),
        (
            "p.toml:27:",
            "pool \"hasty\": `health_check_timeout` must be more than zero",
        ),
    ];
    assert_eq!(e.len(), expected.len(), "{e:?}");
    for (line, (at, why)) in e.iter().zip(expected) {
        assert!(
            line.starts_with(at) && line.contains(why),
            "{line:?}: want {at} {why}"
        );
    }
}

#[test]
fn a_pool_name_permission_rules_would_misread_is_refused() {
    // `mcp__my__srv__tool` is read by the rules as pool `my`, tool `srv__tool`.
    for bad in ["my__srv.tool", "_srv.tool", "srv_.tool"] {
        let error = tetrarch::plan::ToolRef::parse(bad).unwrap_err();
        assert!(error.contains("single inner `_`"), "{bad}: {error}");
    }
    let ok = tetrarch::plan::ToolRef::parse("my_srv.tool__x").unwrap();
    assert_eq!((ok.pool.as_str(), ok.tool.as_str()), ("my_srv", "tool__x"));
}

#[test]
fn each_bad_reference_in_one_string_has_its_own_column() {
    let text = "name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\n\
        args = { x = \"{{tasks.nope.output}} and {{ tasks.zip.output }}\" }\n";
    let err = Plan::from_toml(text, "p.toml").unwrap_err();
    let lines = err.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("p.toml:5:15: "), "{}", lines[0]);
    assert!(lines[0].contains("\"nope\""), "{}", lines[0]);
    assert!(lines[1].starts_with("p.toml:5:41: "), "{}", lines[1]);
    assert!(lines[1].contains("\"zip\""), "{}", lines[1]);
}

#[test]
fn a_reference_in_a_gates_expected_text_is_refused() {
    let text = "name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\n\
        gates = [{ contains = \"{{attempt}}\" }, { json = \"/v\", eq = \"{{tasks.a.output}}\" }, { contains = \"{{.Names}}\" }, { matches = \"^a{2}$\" }]\n";
    let err = Plan::from_toml(text, "p.toml").unwrap_err();
    let lines = err.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("gates[0].contains: {{attempt}} is not filled in"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("gates[1].eq: {{tasks.a.output}} is not filled in"),
        "{}",
        lines[1]
    );
}

#[test]
fn a_fixs_args_env_is_checked_beside_its_env() {
    // `Fix::apply` merges `env` into the args' `env`: both are rendered, so both are checked,
    // except a variable `env` replaces (never rendered).
    let text = r#"name = "fx"
[[task]]
id = "late"
tool = "sh.x"
[[task]]
id = "t"
tool = "sh.x"
fixes = [{ when = "m", args = { env = { MODE = "{{tasks.late.output}}", GONE = "{{tasks.zz.output}}" } }, env = { OTHER = "{{tasks.yy.output}}", GONE = "1" } }]
"#;
    let e = errors(text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("p.toml:8:49: task \"t\" fixes[0].args.env.MODE: {{tasks.late.output}} refers to task \"late\", which is not upstream"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.toml:8:124: task \"t\" fixes[0].env.OTHER: {{tasks.yy.output}} refers to unknown task \"yy\""),
        "{e:?}"
    );
}

#[test]
fn dense_cycles_are_reported_once_per_group_with_a_bounded_path() {
    // t{i} depends on t{i+1}, and every t{i>0} on t0: a cycle closes at each of 4999 entries.
    let n = 5000;
    let mut text = String::from("name = \"dense\"\n");
    for i in 0..n {
        let mut deps = Vec::new();
        if i + 1 < n {
            deps.push(format!("\"t{}\"", i + 1));
        }
        if i > 0 {
            deps.push("\"t0\"".to_owned());
        }
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"p.run\"\ndeps = [{}]\n",
            deps.join(", ")
        ));
    }
    let err = Plan::from_toml(&text, "dense.toml").unwrap_err();
    assert_eq!(err.diagnostics.len(), 1, "{}", err.diagnostics.len());
    let message = &err.diagnostics[0].message;
    assert_eq!(
        message,
        "cycle: t0 -> t1 -> t2 -> t3 -> t4 -> t5 -> t6 -> t7 -> t8 -> t9 -> … (4981 tasks) … -> \
         t4991 -> t4992 -> t4993 -> t4994 -> t4995 -> t4996 -> t4997 -> t4998 -> t4999 -> t0 \
         (and at least 4998 more among the same 5000 tasks)"
    );
    // The entry that closes the cycle: t4999's dependency on t0.
    assert_eq!(err.diagnostics[0].location.line, 4 * (n - 1) + 5);

    // Two groups, one with two cycles: one line each, the small path in full.
    let e = errors(
        "name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\ndeps = [\"b\"]\n[[task]]\nid = \"b\"\n\
         tool = \"p.t\"\ndeps = [\"a\", \"c\"]\n[[task]]\nid = \"c\"\ntool = \"p.t\"\ndeps = [\"a\"]\n\
         [[task]]\nid = \"d\"\ntool = \"p.t\"\ndeps = [\"e\"]\n[[task]]\nid = \"e\"\ntool = \"p.t\"\n\
         deps = [\"d\"]\n",
    );
    assert_eq!(
        e,
        [
            "p.toml:9:9: cycle: a -> b -> a (and at least 1 more among the same 3 tasks, which \
             also include c)",
            "p.toml:21:9: cycle: d -> e -> d",
        ]
    );
}

#[test]
fn template_errors_point_at_their_own_value_in_header_and_inline_tables() {
    let e = errors(
        r#"name = "x"
[[task]]
id = "a"
tool = "sh.x"
[[task]]
id = "b"
tool = "sh.x"
deps = ["a"]
[task.args]
ok = "{{tasks.a.output}}"
v = "{{tasks.a.output}} {{tasks.zz.output}}"
[[task.gates]]
file_exists = "{{tasks.b.output}}"
[[task.gates]]
file_exists = "{{tasks.b.output}}/{{tasks.qq.output}}"
[task.compensate]
tool = "sh.undo"
args = { keep = "{{tasks.b.output}}", undo = "{{tasks.ww.output}}" }
[[task]]
id = "c"
tool = "sh.x"
args = { x = "{{ tasks.d.output }}", y = "{{tasks.d.output}}" }
[[task]]
id = "d"
tool = "sh.x"
"#,
    );
    assert_eq!(
        e.iter()
            .map(|l| l.split(": ").next().unwrap())
            .collect::<Vec<_>>(),
        [
            "p.toml:11:25",
            "p.toml:15:35",
            "p.toml:18:47",
            "p.toml:22:15",
            "p.toml:22:43"
        ],
        "{e:?}"
    );
    assert!(e[0].contains("args.v: {{tasks.zz.output}}"), "{e:?}");
    assert!(
        e[1].contains("gates[1].file_exists: {{tasks.qq.output}}"),
        "{e:?}"
    );
    assert!(
        e[2].contains("compensate.args.undo: {{tasks.ww.output}}"),
        "{e:?}"
    );
    assert!(e[3].contains("args.x: {{tasks.d.output}}"), "{e:?}");
    assert!(e[4].contains("args.y: {{tasks.d.output}}"), "{e:?}");
}

#[test]
fn a_reference_inside_a_gates_json_array_or_object_is_refused() {
    let e = errors(
        "name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\n\
         gates = [{ json = \"/a\", eq = [\"{{attempt}}\"] }, { json = \"/b\", ne = { k = [1, \"x {{run.id}}\"] } }, \
         { json = \"/c\", eq = [\"{{.Names}}\", { k = \"ok\" }] }]\n",
    );
    assert_eq!(
        e,
        [
            "p.toml:5:32: task \"a\" gates[0].eq[0]: {{attempt}} is not filled in: a gate's \
             expected text is compared as written (only file_exists, reference and test are \
             templates); to look for the text itself, use `matches` with the braces escaped (`\\{\\{`)",
            "p.toml:5:82: task \"a\" gates[1].ne.k[1]: {{run.id}} is not filled in: a gate's \
             expected text is compared as written (only file_exists, reference and test are \
             templates); to look for the text itself, use `matches` with the braces escaped (`\\{\\{`)",
        ]
    );
}

#[test]
fn a_process_call_the_plans_own_pool_would_refuse_is_found_without_running() {
    let text = r#"name = "ak"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[pools.mcp]
kind = "mcp"
command = ["server"]
[[task]]
id = "t"
tool = "sh.x"
args = { arg = ["echo hi"] }
fixes = [{ when = "a", env = { A = "1" } }, { when = "b", args = { argvv = ["x"] } }]
compensate = { tool = "sh.undo", args = "echo undo" }
[[task]]
id = "m"
tool = "mcp.read"
args = { path = "x" }
[[task]]
id = "m2"
tool = "mcp.read"
args = "x.txt"
[[task]]
id = "elsewhere"
tool = "other.x"
args = { anything = 1 }
"#;
    let error = Plan::from_toml(text, "p.toml").unwrap_err();
    let found: Vec<String> = error
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}: {}", d.location.line, d.location.column, d.message))
        .collect();
    assert_eq!(
        found,
        [
            "10:8: task \"t\" tool args: unknown key `arg` for a process call (expected argv, stdin, env)",
            "10:8: task \"t\" fixes[1] args: unknown key `argvv` for a process call (expected argv, stdin, env)",
            "13:23: task \"t\" compensate args: a process call's args are a table of argv, stdin, env, not \"echo undo\"",
            "20:8: task \"m2\" tool args: an MCP tool's arguments are a table, not \"x.txt\"",
        ]
    );
    // A pool whose kind the catalogue knows is checked too; the plan's own pools keep theirs.
    let catalog = StaticCatalog::new()
        .with_kind("other", PoolKind::Process)
        .with_kind("sh", PoolKind::Mcp);
    let error = Plan::from_toml_with_catalog(text, "p.toml", &catalog).unwrap_err();
    let found: Vec<&str> = error
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(found.len(), 5, "{found:?}");
    assert!(found[0].contains("unknown key `arg` for a process call"));
    assert_eq!(
        found[4],
        "task \"elsewhere\" tool args: unknown key `anything` for a process call (expected argv, stdin, env)"
    );
}

#[test]
fn a_process_calls_argv_and_env_of_the_wrong_kind_are_found_without_running() {
    let plan = Plan::from_toml(
        r#"name = "ak"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "line"
tool = "sh.x"
args = { argv = "echo hi" }
[[task]]
id = "nested"
tool = "sh.x"
args = { argv = ["echo", ["hi"]] }
[[task]]
id = "list"
tool = "sh.x"
args = { argv = ["echo $A"], env = ["A=1"] }
[[task]]
id = "name"
tool = "sh.x"
args = { argv = ["echo $A"], env = { "A=B" = "1" } }
[[task]]
id = "fine"
tool = "sh.x"
deps = ["line"]
args = { argv = ["echo", 1, true], env = "{{tasks.line.output}}", stdin = 5 }
"#,
        "p.toml",
    )
    .unwrap_err();
    let found: Vec<String> = plan.diagnostics.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        found,
        [
            "task \"line\" tool args: `argv` must be a list of strings, not \"echo hi\"",
            "task \"nested\" tool args: `argv[1]` is [\"hi\"], not a string",
            "task \"list\" tool args: `env` must be a table of NAME = value, not [\"A=1\"]",
            "task \"name\" tool args: `env` names \"A=B\": a variable's name cannot hold `=`",
        ]
    );
}

#[test]
fn gates_that_could_never_check_what_they_say_are_refused() {
    let e = errors(
        "name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\n\
         gates = [{ json = \"/a~2\", exists = true }, { json = \"/a~0b~1c\", exists = true }, \
         { file_exists = \"\" }, { contains = '{{ \"{{\" }}run.id}}' }]\n",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].contains("gates[0]: gate `json` pointer \"/a~2\": a `~` must be followed by 0"),
        "{e:#?}"
    );
    assert!(
        e[1].contains("gates[2]: gate `file_exists` needs a path"),
        "{e:#?}"
    );
    assert!(
        e[2].contains("gates[3].contains: `{{ \"{{\" }}` escapes braces in templates"),
        "{e:#?}"
    );
}

#[test]
fn a_call_written_as_a_string_says_what_a_call_looks_like() {
    let e = errors("name = \"x\"\n[[task]]\nid = \"a\"\ntool = \"p.t\"\ncompensate = \"p.u\"\n");
    assert_eq!(
        e,
        [
            "p.toml:5:14: invalid type: string \"p.u\", expected a table such as { tool = \"POOL.TOOL\", args = { … } }"
        ]
    );
}

/// `--pools` naming a configured pool keeps its kind (its calls' args are still checked), and a
/// native pool with no registered tools says why.
#[test]
fn a_pool_named_twice_keeps_its_kind_and_an_empty_native_pool_says_why() {
    let text = "name = \"k\"\n[[task]]\nid = \"t\"\ntool = \"sh.x\"\nargs = { argvv = [\"echo\"] }\n\
                [[task]]\nid = \"n\"\ntool = \"nat.foo\"\n";
    let catalog = StaticCatalog::new()
        .with_kind("sh", PoolKind::Process)
        .with_open_pool("sh")
        .with_tools("nat", Vec::<String>::new())
        .with_kind("nat", PoolKind::Native);
    let error = Plan::from_toml_with_catalog(text, "k.toml", &catalog).unwrap_err();
    let found: Vec<&str> = error
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("unknown key `argvv`"), "{found:?}");
    assert!(
        found[1].contains(
            "has no tool \"foo\" (it is a native pool, and no native tools are registered"
        ),
        "{found:?}"
    );
}

/// A scorer's tools are its metrics and its args two image paths, whoever declares the pool: a
/// call the scorer would refuse is found without scoring anything.
#[test]
fn a_scorer_call_is_checked_against_its_metrics_and_arguments() {
    let text = "name = \"s\"\n[pools.own]\nkind = \"scorer\"\n\
                [[task]]\nid = \"a\"\ntool = \"scorer.nosuchmetric\"\n\
                args = { reference = \"r.png\", test = \"t.png\" }\n\
                [[task]]\nid = \"b\"\ntool = \"own.ssim\"\nargs = { reference = \"r.png\", test = \"t.png\", map = \"m.png\" }\n\
                [[task]]\nid = \"c\"\ntool = \"scorer.flip\"\nargs = { reference = \"r.png\", bogus = 1 }\n\
                [[task]]\nid = \"d\"\ntool = \"own.psnr\"\nargs = { reference = \"r.png\" }\n\
                [[task]]\nid = \"e\"\ntool = \"own.fl1p\"\n\
                [[task]]\nid = \"f\"\ntool = \"scorer.hdr-flip\"\nargs = { reference = \"r.png\", test = \"{{tasks.a.output.path}}\", map = \"m.png\" }\ndeps = [\"a\"]\n";
    let catalog = StaticCatalog::new()
        .with_tools("scorer", tetrarch::session::SCORER_TOOLS)
        .with_kind("scorer", PoolKind::Scorer);
    let error = Plan::from_toml_with_catalog(text, "s.toml", &catalog).unwrap_err();
    let found: Vec<&str> = error
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        found,
        [
            "task \"a\" tool: pool \"scorer\" has no tool \"nosuchmetric\" (its tools: flip, \
             hdr-flip, ms-ssim, msssim, psnr, ssim)",
            "task \"b\" tool args: `map` is only produced by flip and hdr-flip",
            "task \"c\" tool args: unknown argument `bogus` (a scorer call reads reference, test, map)",
            "task \"d\" tool args: missing `test` (an image path)",
            "task \"e\" tool: pool \"own\" has no tool \"fl1p\" (its tools: flip, hdr-flip, ssim, \
             msssim, ms-ssim, psnr)",
        ]
    );
}

/// Score gates run on the Reviewer's score pool: a plan with one is refused before anything runs
/// when the catalogue's score pool is missing or is not a scorer, and accepted when the plan
/// declares that pool as a scorer or the pool's kind is not known.
#[test]
fn a_score_gate_needs_the_reviewers_score_pool_to_be_a_scorer() {
    let plan = |pools: &str| {
        format!(
            "name = \"g\"\n{pools}[[task]]\nid = \"a\"\ntool = \"sh.x\"\n\
             gates = [{{ score = \"flip\", reference = \"ref.png\", max = 0.1 }}]\n"
        )
    };
    let base = || StaticCatalog::new().with_kind("sh", PoolKind::Process);
    let refused = |text: &str, catalog: &StaticCatalog| {
        let error = Plan::from_toml_with_catalog(text, "g.toml", catalog).unwrap_err();
        error.lines()
    };
    let missing = base().with_score_pool("nosuch");
    assert_eq!(
        refused(&plan(""), &missing),
        [
            "g.toml:4:8: task \"a\" has a score gate, but the score pool \"nosuch\" (the \
             Reviewer's `score_pool`, reviewer.toml) cannot run it: no such pool is configured"
        ]
    );
    let wrong_kind = base().with_score_pool("sh");
    assert!(
        refused(&plan(""), &wrong_kind)[0].ends_with("cannot run it: it is not a scorer pool"),
        "{:?}",
        refused(&plan(""), &wrong_kind)
    );
    // The plan's own pool by that name counts, as a run would start it.
    let own_scorer = plan("[pools.nosuch]\nkind = \"scorer\"\n");
    Plan::from_toml_with_catalog(&own_scorer, "g.toml", &missing).unwrap();
    let own_process = plan("[pools.nosuch]\nkind = \"process\"\ncommand = [\"sh\"]\n");
    assert!(refused(&own_process, &missing)[0].ends_with("it is not a scorer pool"));
    // `--pools` names pools of unknown kind: given the benefit of the doubt.
    Plan::from_toml_with_catalog(
        &plan(""),
        "g.toml",
        &missing.clone().with_open_pool("nosuch"),
    )
    .unwrap();
    // Without a score gate the score pool does not matter.
    let ungated = "name = \"g\"\n[[task]]\nid = \"a\"\ntool = \"sh.x\"\n";
    Plan::from_toml_with_catalog(ungated, "g.toml", &missing).unwrap();
}

/// References to indirect ancestors are accepted and to non-ancestors refused, for more distinct
/// targets than the check keeps the dependents of (the rest are searched).
#[test]
fn references_to_many_distinct_indirect_ancestors_are_judged_alike() {
    let n = 150;
    let mut text = String::from("name = \"far\"\n");
    for i in 0..n {
        let deps = if i == 0 {
            String::new()
        } else {
            format!("\"t{}\"", i - 1)
        };
        let args = if i >= 2 {
            format!("args = {{ x = \"{{{{tasks.t{}.output}}}}\" }}\n", i - 2)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"p.run\"\ndeps = [{deps}]\n{args}"
        ));
    }
    Plan::from_toml(&text, "far.toml").unwrap();
    // A side task beside the chain is upstream of nobody in it.
    text.push_str("[[task]]\nid = \"side\"\ntool = \"p.run\"\n");
    text.push_str(&format!(
        "[[task]]\nid = \"last\"\ntool = \"p.run\"\ndeps = [\"t{}\"]\n\
         args = {{ a = \"{{{{tasks.t0.output}}}}\", b = \"{{{{tasks.side.output}}}}\" }}\n",
        n - 1
    ));
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("refers to task \"side\", which is not upstream of \"last\""),
        "{e:?}"
    );
}

#[test]
fn a_template_that_can_only_render_to_text_is_checked_where_a_list_or_table_is_needed() {
    let plan = |args: &str| {
        format!(
            "name = \"p\"\n[pools.sh]\nkind = \"process\"\ncommand = [\"render\"]\n\
             [pools.m]\nkind = \"mcp\"\ncommand = [\"srv\"]\n\
             [[task]]\nid = \"a\"\ntool = \"sh.x\"\n\
             [[task]]\nid = \"b\"\ntool = \"m.draft\"\ndeps = [\"a\"]\n{args}\n"
        )
    };
    // Text around the reference: it renders to a string, which `argv` and MCP args refuse.
    let refused = errors(&plan(
        "args = \"draft {{attempt}}\"\n[[task]]\nid = \"c\"\ntool = \"sh.y\"\nargs = { argv = \"--attempt {{attempt}}\" }",
    ));
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(
        refused[0].contains("task \"b\" tool args: an MCP tool's arguments are a table"),
        "{refused:#?}"
    );
    assert!(
        refused[1].contains("task \"c\" tool args:") && refused[1].contains("argv"),
        "{refused:#?}"
    );
    // A whole-string reference may render to a list or a table: left to the call.
    Plan::from_toml(
        &plan("args = \"{{tasks.a.output}}\"\n[[task]]\nid = \"c\"\ntool = \"sh.y\"\ndeps = [\"a\"]\nargs = { argv = \"{{tasks.a.output.argv}}\" }"),
        "p.toml",
    )
    .unwrap();
}

#[test]
fn a_fix_is_checked_like_the_call_it_changes_and_must_have_tables_to_merge_into() {
    let plan = |task: &str| {
        format!(
            "name = \"p\"\n[pools.sh]\nkind = \"process\"\ncommand = [\"make\"]\n\
             [pools.m]\nkind = \"mcp\"\ncommand = [\"srv\"]\n\
             [[task]]\nid = \"prep\"\ntool = \"m.prepare\"\n{task}\n"
        )
    };
    let typed = errors(&plan(
        "[[task]]\nid = \"t\"\ntool = \"sh.x\"\nargs = { argv = [\"all\"] }\n\
         fixes = [{ when = \"oom\", args = { argv = \"-j1\" } }, { when = \"x\", env = { \"A=B\" = \"1\" } }]",
    ));
    assert_eq!(typed.len(), 2, "{typed:#?}");
    assert!(
        typed[0].contains("task \"t\" fixes[0] args:") && typed[0].contains("argv"),
        "{typed:#?}"
    );
    assert!(
        typed[1].contains("task \"t\" fixes[1] env names \"A=B\""),
        "{typed:#?}"
    );

    // Merged over args or an env that are templates as written, a fix would be lost.
    let targets = errors(&plan(
        "[[task]]\nid = \"d\"\ntool = \"m.draft\"\ndeps = [\"prep\"]\nargs = \"{{tasks.prep.output}}\"\n\
         fixes = [{ when = \"oom\", args = { quality = \"low\" } }]\n\
         [[task]]\nid = \"b\"\ntool = \"sh.x\"\ndeps = [\"prep\"]\n\
         args = { argv = [\"all\"], env = \"{{tasks.prep.output}}\" }\n\
         fixes = [{ when = \"oom\", env = { MAKEFLAGS = \"-j1\" } }]",
    ));
    assert_eq!(targets.len(), 2, "{targets:#?}");
    assert!(
        targets[0].ends_with(
            "task \"d\" fixes[0]: a fix is merged over the task's args, which are \"{{tasks.prep.output}}\" here, not a table"
        ),
        "{targets:#?}"
    );
    assert!(
        targets[1].contains("task \"b\" fixes[0] env:"),
        "{targets:#?}"
    );
}

/// A fix's `env` is a process call's environment: on any other kind of call it is refused (it
/// was sent to an MCP tool as an argument); a scorer task's fixed args are checked as its own
/// are; a NUL in a fix's env value is refused as in the task's own env.
#[test]
fn a_fix_has_an_env_only_for_a_process_call_and_its_args_suit_the_scorer() {
    let text = "name = \"p\"\n\
                [pools.sh]\nkind = \"process\"\ncommand = [\"make\"]\n\
                [pools.m]\nkind = \"mcp\"\ncommand = [\"srv\"]\n\
                [pools.judge]\nkind = \"scorer\"\ndevice = \"cpu\"\n\
                [[task]]\nid = \"m\"\ntool = \"m.draft\"\n\
                fixes = [{ when = \"slow\", env = { FAST = \"1\" } }]\n\
                [[task]]\nid = \"s\"\ntool = \"judge.flip\"\n\
                args = { reference = \"r.png\", test = \"t.png\" }\n\
                fixes = [{ when = \"slow\", args = { quality = \"low\" } }]\n\
                [[task]]\nid = \"p\"\ntool = \"sh.x\"\n\
                fixes = [{ when = \"slow\", env = { A = \"a\\u0000b\" } }]\n";
    let lines = errors(text);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].contains("task \"m\" fixes[0] env: only a process call has an environment")
            && lines[0].contains("pool is mcp"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("task \"s\" fixes[0] args:") && lines[1].contains("quality"),
        "{lines:#?}"
    );
    assert!(
        lines[2].contains("task \"p\" fixes[0] env \"A\": its value holds a NUL byte"),
        "{lines:#?}"
    );
}

/// A score gate's empty path (the plan's folder, which nothing can score) is refused before
/// the run; `context_files` read by a fix's args alone are accepted (that fix sends them).
#[test]
fn an_empty_score_path_is_refused_and_a_fix_may_be_what_reads_the_context() {
    let text = "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\n\
                gates = [{ score = \"flip\", reference = \" \", test = \"t.png\", max = 0.1 }]\n";
    let lines = errors(text);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("score gate `reference` is an empty path"),
        "{lines:#?}"
    );
    let text = "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\n\
                gates = [{ score = \"ssim\", reference = \"r.png\", test = \"./\", min = 0.9 }]\n";
    let lines = errors(text);
    assert!(
        lines.len() == 1 && lines[0].contains("score gate `test` names the plan's folder"),
        "{lines:#?}"
    );
    // A left-out `test` is named as the default, not as a key the plan holds.
    let text = "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\n\
                outputs = [\"image\"]\n\
                gates = [{ score = \"ssim\", reference = \"r.png\", min = 0.9 }]\n";
    let lines = errors(text);
    assert!(
        lines.len() == 1 && lines[0].contains("gates[0].test (the default `test`):"),
        "{lines:#?}"
    );
    let text = "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\n\
                args = { argv = [\"draft\"] }\ncontext_files = [\"notes.md\"]\n\
                fixes = [{ when = \"too short\", args = { stdin = \"{{context}}\" } }]\n";
    let plan = Plan::from_toml(text, "p.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.tasks[0].context_files, [Path::new("notes.md")]);
}

#[test]
fn a_template_error_is_placed_at_the_opening_that_fails() {
    let text = "name = \"p\"\n\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\n\n[task.args]\nstdin = '''\necho \"attempt {{attempt}}\"\ndocker ps --format '{{.Names}}'\n'''\n";
    let lines = errors(text);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("p.toml:10:21: "), "{lines:#?}");
}

#[test]
fn a_template_error_after_an_escaped_pair_of_braces_is_placed_at_its_own_opening() {
    let text = "name = \"p\"\n[[task]]\nid = \"x\"\ntool = \"sh.run\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\ndeps = [\"x\"]\nargs = { f = '--format {{ \"{{\" }}.Names}} {{tasks.x.outptu}}' }\n";
    let lines = errors(text);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("p.toml:9:43: "), "{lines:#?}");
}

#[test]
fn a_brace_before_a_reference_is_literal() {
    let text = "name = \"poster\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\nargs = { tex = '\\textbf{{{plan.name}}}' }\n";
    let plan = Plan::from_toml(text, "p.toml").unwrap();
    let ctx = tetrarch::plan::TemplateContext {
        plan_name: "poster".into(),
        ..Default::default()
    };
    let rendered = tetrarch::plan::render(&plan.tasks[0].args, &ctx).unwrap();
    assert_eq!(rendered["tex"], "\\textbf{poster}");
}

#[test]
fn a_gates_expected_text_is_refused_for_a_reference_beside_literal_braces() {
    let text = "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"sh.run\"\n\
                gates = [{ contains = \"{{.Names}} attempt {{attempt}}\" }]\n";
    let lines = errors(text);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("{{attempt}} is not filled in"),
        "{lines:#?}"
    );
}
