//! Behaviour of the permission engine against Claude Code's documented rules.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::json;
use tetrarch::permissions::{
    CallbackApproval, DenyAll, List, PermissionEngine, PermissionError, Rule, ToolCall, Verdict,
    split_command,
};

fn engine(allow: &[&str], ask: &[&str], deny: &[&str]) -> PermissionEngine {
    engine_with(json!({"permissions": {"allow": allow, "ask": ask, "deny": deny}}))
}

fn engine_with(settings: serde_json::Value) -> PermissionEngine {
    PermissionEngine::from_settings_json(
        &settings.to_string(),
        Path::new("/proj/.claude/settings.json"),
        Path::new("/proj/sub"),
        Path::new("/home/u"),
    )
    .unwrap()
}

fn bash(e: &PermissionEngine, command: &str) -> Verdict {
    e.decide(&ToolCall::from_text("Bash", command)).verdict
}

fn call(e: &PermissionEngine, tool: &str, input: &str) -> Verdict {
    e.decide(&ToolCall::from_text(tool, input)).verdict
}

#[test]
fn deny_then_ask_then_allow_whatever_the_specificity() {
    let e = engine(
        &["Bash(aws s3 ls)", "Bash(git status)", "Bash(npm run test)"],
        &["Bash(npm run *)"],
        &["Bash(aws *)"],
    );
    let d = e.decide(&ToolCall::from_text("Bash", "aws s3 ls"));
    assert_eq!(d.verdict, Verdict::Deny);
    let rule = d.rule.unwrap();
    assert_eq!(
        (rule.list, rule.index, rule.text.as_str()),
        (List::Deny, 0, "Bash(aws *)")
    );
    assert_eq!(bash(&e, "npm run test"), Verdict::Ask);
    assert_eq!(bash(&e, "git status"), Verdict::Allow);
    // Nothing matches: ask.
    let none = e.decide(&ToolCall::from_text("Bash", "make"));
    assert_eq!((none.verdict, none.rule), (Verdict::Ask, None));
}

#[test]
fn bash_wildcards_and_word_boundary() {
    let e = engine(
        &[
            "Bash(ls *)",
            "Bash(cat:*)",
            "Bash(git * --dry-run)",
            "Bash(echo hi)",
        ],
        &[],
        &[],
    );
    assert_eq!(bash(&e, "ls"), Verdict::Allow);
    assert_eq!(bash(&e, "ls -la"), Verdict::Allow);
    assert_eq!(bash(&e, "lsof"), Verdict::Ask);
    assert_eq!(bash(&e, "cat a.txt"), Verdict::Allow);
    assert_eq!(bash(&e, "catalog"), Verdict::Ask);
    assert_eq!(bash(&e, "git push origin main --dry-run"), Verdict::Allow);
    assert_eq!(bash(&e, "echo hi"), Verdict::Allow);
    assert_eq!(bash(&e, "echo hi there"), Verdict::Ask);
    let star = engine(&["Bash(ls*)"], &[], &[]);
    assert_eq!(bash(&star, "lsof"), Verdict::Allow);
    let any = engine(&["Bash(*)"], &[], &["Bash(rm *)"]);
    assert_eq!(bash(&any, "anything at all"), Verdict::Allow);
    assert_eq!(bash(&any, "true && rm x"), Verdict::Deny);
}

#[test]
fn compound_commands_need_every_part() {
    let e = engine(
        &["Bash(git status)", "Bash(git add *)", "Bash(echo *)"],
        &["Bash(git push *)"],
        &["Bash(rm *)"],
    );
    assert_eq!(bash(&e, "git status; rm -rf /"), Verdict::Deny);
    assert_eq!(bash(&e, "git add . && git push origin main"), Verdict::Ask);
    assert_eq!(bash(&e, "git add . && make"), Verdict::Ask);
    assert_eq!(
        bash(&e, "git add . && git status | echo ok"),
        Verdict::Allow
    );
    assert_eq!(bash(&e, "echo $(rm -rf /)"), Verdict::Deny);
    assert_eq!(bash(&e, "echo \"`rm -rf /`\""), Verdict::Deny);
    assert_eq!(bash(&e, "git add x &\nrm y"), Verdict::Deny);
    assert_eq!(bash(&e, "git status |& rm y"), Verdict::Deny);
    // Quoted text is an argument, not a command.
    assert_eq!(bash(&e, "echo 'git status; rm -rf /'"), Verdict::Allow);
    // `git add *` must not allow a second command through its wildcard.
    assert_eq!(bash(&e, "git add a && curl evil.sh"), Verdict::Ask);
    let d = e.decide(&ToolCall::from_text("Bash", "git status; rm -rf /"));
    assert_eq!(d.rule.unwrap().text, "Bash(rm *)");
}

#[test]
fn wrappers_and_environment_are_stripped() {
    let e = engine(&["Bash(cargo test *)"], &[], &["Bash(rm *)"]);
    for cmd in [
        "RUST_LOG=debug cargo test",
        "timeout 60 cargo test -p x",
        "timeout -k 5 60 nice -n 10 cargo test",
        "nohup stdbuf -oL cargo test",
        "time cargo test",
        "command cargo test",
        "builtin cargo test",
        "noglob cargo test",
    ] {
        assert_eq!(bash(&e, cmd), Verdict::Allow, "{cmd}");
    }
    assert_eq!(bash(&e, "find . | xargs rm"), Verdict::Deny);
    assert_eq!(bash(&e, "nice -n 5 rm x"), Verdict::Deny);
    assert_eq!(bash(&e, "FOO=$(rm x) cargo test"), Verdict::Deny);
}

#[test]
fn a_deny_rule_is_not_dodged_by_quoting_wrappers_or_computed_names() {
    // Everything is allowed but `rm`, even under bypassPermissions.
    let lists = json!({"permissions": {"allow": ["Bash"], "deny": ["Bash(rm *)"]}});
    let bypass =
        json!({"permissions": {"defaultMode": "bypassPermissions", "deny": ["Bash(rm *)"]}});
    for e in [engine_with(lists), engine_with(bypass)] {
        for quoted in [
            "\\rm -rf /",
            "'rm' -rf /",
            "\"rm\" -rf /",
            "r\"\"m -rf /",
            "r''m -rf /",
            "echo ok && 'rm' -rf /",
            "env rm -rf /",
            "env -i FOO=1 rm -rf /",
            "exec rm -rf /",
            "sudo -u root rm -rf /",
            "sudo 'rm' -rf /",
        ] {
            assert_eq!(bash(&e, quoted), Verdict::Deny, "{quoted}");
        }
        // `$'…'` is decoded as bash decodes it, so the deny rule sees `rm`.
        assert_eq!(bash(&e, "$'rm' -rf /"), Verdict::Deny);
        assert_eq!(bash(&e, "$'\\x72m' -rf /"), Verdict::Deny);
        // The shell computes the name: no rule can say it is not `rm`.
        // Brace expansion is expanded as bash would.
        assert_eq!(bash(&e, "{rm,-rf,/tmp/x}"), Verdict::Deny);
        for computed in [
            "rm${IFS}-rf${IFS}/",
            "$CMD -rf /",
            "/bin/r? -rf /",
            "/bin/r[m] -rf /",
        ] {
            assert_eq!(bash(&e, computed), Verdict::Ask, "{computed}");
        }
        assert_eq!(bash(&e, "ls -la"), Verdict::Allow);
        assert_eq!(bash(&e, "'my tool' --help"), Verdict::Allow);
        // A script handed to another shell is judged too.
        for wrapped in [
            "sh -c 'rm -rf /'",
            "bash -lc 'echo a; rm -rf /'",
            "env sh -c 'rm -rf /'",
            "timeout 60 bash --norc -o pipefail -c 'rm -rf /'",
            "eval 'rm -rf /'",
            "bash -c \"sh -c 'rm -rf /'\"",
            "sh -c 'echo $(rm -rf /)'",
        ] {
            assert_eq!(bash(&e, wrapped), Verdict::Deny, "{wrapped}");
        }
        assert_eq!(bash(&e, "sh -c 'echo ok'"), Verdict::Allow);
        assert_eq!(bash(&e, "bash script.sh"), Verdict::Allow);
        // A script the shell computes cannot be judged.
        assert_eq!(bash(&e, "bash -c \"$CMD\""), Verdict::Ask);
        // `[` alone is the test command, not a glob (it was never allowed).
        assert_eq!(bash(&e, "[ -f x ]"), Verdict::Allow);
        assert_eq!(bash(&e, "[ 1 -ge 2 ] && echo a"), Verdict::Allow);
        assert_eq!(bash(&e, "[ -f x ] && rm x"), Verdict::Deny);
    }
}

/// An argument the shell computes may be any text: a command a deny rule would hold back for
/// some value of it is never allowed (asked, naming that rule; `dontAsk` denies it), where an
/// allow rule let it through as written.
#[test]
fn a_deny_rule_is_not_dodged_by_an_expansion_inside_an_argument() {
    let e = engine(
        &["Bash(git *)", "Bash(cat *)", "Bash(echo *)"],
        &["Bash(git commit --amend*)"],
        &["Bash(git push *)", "Bash(cat ~/.ssh/*)"],
    );
    for dodge in [
        "git pu${x}sh origin main",
        "git pu$x origin",
        "git pu\"$(printf sh)\" origin",
        "git pu`printf sh`",
        "git \"pu${empty}sh\"",
        "timeout 5 git pu${x}sh",
        "git ${verb}",
        "cat $HOME/.ssh/id_rsa",
        "echo ok && git pu${x}sh",
        // `$HOME` may be any text, `~/.ssh/x` among them.
        "cat $HOME/notes.txt",
    ] {
        assert_eq!(bash(&e, dodge), Verdict::Ask, "{dodge}");
    }
    let decision = e.decide(&ToolCall::from_text("Bash", "git pu${x}sh"));
    let rule = decision.rule.unwrap();
    assert_eq!(
        (rule.list, rule.text.as_str()),
        (List::Deny, "Bash(git push *)")
    );
    // Under `dontAsk`, never allowed is denied.
    let strict = engine_with(json!({"permissions": {
        "defaultMode": "dontAsk", "allow": ["Bash(git *)"], "deny": ["Bash(git push *)"]
    }}));
    assert_eq!(bash(&strict, "git pu${x}sh"), Verdict::Deny);
    // As written it is still a plain deny.
    assert_eq!(bash(&e, "git push origin"), Verdict::Deny);
    assert_eq!(bash(&e, "git commit --am${x}end"), Verdict::Ask);
    // No value of the expansion makes a denied command: allowed as before.
    for fine in [
        "git status $FLAGS",
        "git log --oneline -n ${N}",
        "echo $HOME",
        "cat notes-$USER.txt",
        "git pull${x} origin",
    ] {
        assert_eq!(bash(&e, fine), Verdict::Allow, "{fine}");
    }
    assert_eq!(bash(&e, "$EDITOR notes.txt"), Verdict::Ask);
    // Words bash splits may vanish with their space: `"$@"` with no arguments, `$a$b` empty.
    let exact = engine(
        &["Bash(git *)", "Bash(rm *)"],
        &[],
        &["Bash(git push)", "Bash(rm -rf /)"],
    );
    for dodge in [
        "git push $x",
        "git push $a$b",
        "git push \"$@\"",
        "git push \"${refs[@]}\"",
        "rm $x -rf /",
        "rm -rf $(true) /",
    ] {
        assert_eq!(bash(&exact, dodge), Verdict::Ask, "{dodge}");
    }
    assert_eq!(bash(&exact, "git push \"$x\""), Verdict::Allow);
    // `"${!prefix@}"` is every matching name, or none.
    assert_eq!(bash(&exact, "git push \"${!zz@}\""), Verdict::Ask);
    // A script built from what the shell computes is read as code again.
    let scripts = engine(
        &[
            "Bash(git *)",
            "Bash(sh -c *)",
            "Bash(echo *)",
            "Bash(eval *)",
        ],
        &[],
        &["Bash(git push *)"],
    );
    for hidden in [
        "sh -c 'x=\";git push --force\"; eval echo $x'",
        "eval echo $x",
        "sh -c \"echo $x\"",
    ] {
        assert_eq!(bash(&scripts, hidden), Verdict::Ask, "{hidden}");
    }
    assert_eq!(bash(&scripts, "sh -c 'echo $x'"), Verdict::Allow);
    // A script file's arguments are not its options.
    let files = engine(&["Bash(bash *)"], &[], &["Bash(git push *)"]);
    assert_eq!(bash(&files, "bash script.sh \"$x\" $y"), Verdict::Allow);
    // A path after `~/` with quotes in it is seen unquoted.
    let home = engine(&["Bash(env *)"], &[], &["Bash(git push *)"]);
    assert_eq!(
        bash(&home, "env ~/../../../../usr/bin/'git' push --force"),
        Verdict::Deny
    );
    // What `xargs` and `find -exec` start is judged with its computed arguments open, what
    // `xargs` adds from its input (after the command, or for its replace string) may be
    // anything, and `find`'s `{}` is a path under a starting point.
    let spawning = engine(
        &[
            "Bash(git *)",
            "Bash(xargs *)",
            "Bash(find *)",
            "Bash(echo *)",
            "Bash(ls *)",
        ],
        &[],
        &["Bash(git push *)", "Bash(cat ~/.ssh/*)", "Bash(rm -rf *)"],
    );
    for dodge in [
        "xargs -n1 git pu${x}sh",
        "find . -maxdepth 0 -exec git pu$x origin \\;",
        "echo push | xargs git",
        "echo push | xargs nice git",
        "echo push | xargs timeout 5 git",
        "echo push | xargs -I{} git {} origin",
        "echo push | xargs -I X git X origin",
        "echo push | xargs --replace git {} origin",
        "find ~/.ssh -name id_rsa -exec cat {} \\;",
        // Split, these words move where the command starts.
        "timeout ${t:-1 rm -rf /x} git status",
        "find . ${x:--exec} rm -rf /x \\;",
        "xargs -n ${x:-1 rm -rf /x} echo",
        // Its input is the command.
        "echo rm | xargs -I X X -rf /x",
        // Options without a command after them; a prefix of `--replace`; a replace string a
        // later `-L` turns off.
        "echo origin | xargs -n ${n:-1 git push --force}",
        "echo push | xargs --rep git {} origin",
        "echo push | xargs -I Z -L 1 git",
        // A wrapper inside what `xargs` and `find` start.
        "echo /x | xargs -n1 timeout ${t:-1 rm -rf} echo",
        "find . -exec timeout ${t:-1 rm -rf} echo {} \\;",
        // Starting points after `find`'s own options.
        "find -L ~/.ssh -name id_rsa -exec cat {} \\;",
        // A quoted word after `~/`.
        "find ~/'.ssh' -exec cat {} \\;",
        // A computed word may end what `find` starts, and start another.
        "find . -maxdepth 0 -exec true $(echo ';') -exec git push \\;",
        "find . -maxdepth 0 -exec true \"$(echo ';')\" -exec git push \\;",
        // Input pasted into a script.
        "echo 'x; git push' | xargs -I{} sh -c 'echo {}'",
        // Starting points after `--`.
        "find -- push -maxdepth 0 -exec git {} \\;",
        // Quoted, a computed word may still be read as an option.
        "find . \"${x:--exec}\" rm -rf /x \\;",
        "env -\"$x\" echo git push",
        "echo o | xargs -\"$x\" echo git push",
        "env '--' \"x${y:-args}\" git push",
        "env sh \"${x:--c}\" 'git push'",
    ] {
        assert_eq!(bash(&spawning, dodge), Verdict::Ask, "{dodge}");
    }
    // It runs `git push` whatever the input.
    assert_eq!(
        bash(&spawning, "echo origin | xargs -n1 git push"),
        Verdict::Deny
    );
    // `env -a NAME` names the command's argv[0]: the command is the word after.
    let env = engine(&["Bash(env *)"], &[], &["Bash(git push *)"]);
    assert_eq!(bash(&env, "env -a x git push origin"), Verdict::Deny);
    // Braces in a long quoted word are never expanded: judged as before.
    let long = format!("echo '{}{{x}}'", "a".repeat(5000));
    assert_eq!(bash(&spawning, &long), Verdict::Allow);
    // Commands started by started commands, without end: cut off, never allowed, and quick.
    let chain = format!("{}true", "xargs -0 ".repeat(40));
    assert_eq!(bash(&spawning, &chain), Verdict::Ask);
    let finds = format!("{}true", "find a b c d -exec ".repeat(12));
    assert_ne!(bash(&spawning, &finds), Verdict::Allow);
    for fine in [
        "echo x | xargs git log -n1",
        "find \"$dir\" -name '*.o' -print",
        "ls | xargs -I{} echo {}",
        "find . -name x -exec sh -c 'echo \"$1\"' _ {} \\;",
        "find . -name '*.o' -exec ls -l {} \\;",
        "find src -exec git add {} +",
    ] {
        assert_eq!(bash(&spawning, fine), Verdict::Allow, "{fine}");
    }
    // Tildes other than the home folder are other folders.
    let tilde = engine(&["Bash(rm *)", "Bash(cd *)"], &[], &["Bash(rm -rf /*)"]);
    assert_eq!(bash(&tilde, "cd / && rm -rf ~+"), Verdict::Ask);
    assert_eq!(bash(&tilde, "rm -rf ~/build"), Verdict::Allow);
    // A rule that does not name its command is not matched through an expansion: every
    // command with one would be held back by it.
    let unanchored = engine(
        &["Bash(echo *)", "Bash(ls *)"],
        &[],
        &["Bash(*LD_PRELOAD*)"],
    );
    for fine in ["echo $HOME", "ls \"$TMPDIR\""] {
        assert_eq!(bash(&unanchored, fine), Verdict::Allow, "{fine}");
    }
    assert_eq!(bash(&unanchored, "LD_PRELOAD=x.so ls"), Verdict::Deny);
}

#[test]
fn an_allow_rule_is_not_stretched_by_assignments_or_xargs() {
    let e = engine(
        &[
            "Bash(git status)",
            "Bash(git push)",
            "Bash(ls *)",
            "Bash(grep *)",
            "Bash(echo *)",
            "Bash(find *)",
        ],
        &[],
        &[],
    );
    // Variables that make the allowed program run other code.
    for dangerous in [
        "GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.fsmonitor GIT_CONFIG_VALUE_0='touch x' git status",
        "LD_PRELOAD=/tmp/evil.so ls",
        "BASH_ENV=/tmp/x ls",
        "PAGER='sh -c id' git status",
        "CI=1 LD_PRELOAD=/tmp/e.so ls",
        "CI=$(id) ls",
    ] {
        assert_eq!(bash(&e, dangerous), Verdict::Ask, "{dangerous}");
    }
    // Harmless ones keep the match.
    for harmless in [
        "CI=1 ls -la",
        "RUST_LOG=debug NO_COLOR=1 git status",
        "TERM=dumb ls",
    ] {
        assert_eq!(bash(&e, harmless), Verdict::Allow, "{harmless}");
    }
    // A bare xargs adds the arguments it reads: an exact rule does not cover them, `CMD *` does.
    assert_eq!(
        bash(&e, "echo --force origin main | xargs git push"),
        Verdict::Ask
    );
    assert_eq!(
        bash(&e, "find . -name '*.rs' | xargs grep -n todo"),
        Verdict::Allow
    );
    assert_eq!(bash(&e, "git push"), Verdict::Allow);
    // Wrappers that do not change what runs still keep the match; env, exec and sudo do not.
    assert_eq!(bash(&e, "timeout 5 git status"), Verdict::Allow);
    assert_eq!(bash(&e, "sudo git status"), Verdict::Ask);
    assert_eq!(bash(&e, "env ls"), Verdict::Ask);
}

#[test]
fn unparseable_commands_are_never_allowed() {
    let e = engine(&["Bash(*)"], &[], &[]);
    assert_eq!(bash(&e, "echo 'unterminated"), Verdict::Ask);
    assert_eq!(bash(&e, "echo ${x:-$(rm -rf /)}"), Verdict::Ask);
    assert_eq!(bash(&e, "[[ -f $(whoami) ]]"), Verdict::Ask);
    // A Bash call without a command string, or text that merely looks like JSON.
    assert_eq!(
        e.decide(&ToolCall {
            tool: "Bash".into(),
            input: json!({})
        })
        .verdict,
        Verdict::Ask
    );
    assert_eq!(bash(&e, "{ }\n"), Verdict::Ask);
    let deny = engine(&["Bash(*)"], &[], &["Bash(echo *)"]);
    assert_eq!(bash(&deny, "echo 'unterminated"), Verdict::Deny);
    assert!(split_command("if then fi (").is_err());
}

#[test]
fn each_tool_is_judged_on_its_own_field_and_a_missing_subject_is_never_allowed() {
    let bypass = |deny: &[&str]| {
        engine_with(json!({"permissions": {"defaultMode": "bypassPermissions", "deny": deny}}))
    };
    let e = bypass(&["Read(//proj/secrets)", "Edit(//etc/**)"]);
    let decide = |tool: &str, input: serde_json::Value| {
        e.decide(&ToolCall {
            tool: tool.to_owned(),
            input,
        })
        .verdict
    };
    // A decoy field beside the one the tool uses.
    assert_eq!(
        decide(
            "Grep",
            json!({"file_path": "/tmp/ok", "path": "/proj/secrets"})
        ),
        Verdict::Deny
    );
    assert_eq!(
        decide(
            "NotebookEdit",
            json!({"file_path": "/tmp/x.ipynb", "notebook_path": "/etc/x.ipynb"})
        ),
        Verdict::Deny
    );
    // Nothing to judge: asked, even under bypassPermissions.
    assert_eq!(decide("Read", json!({})), Verdict::Ask);
    assert_eq!(decide("Edit", json!({"path": "/etc/passwd"})), Verdict::Ask);
    assert_eq!(
        decide("WebFetch", json!({"url": "evil.com/page"})),
        Verdict::Ask
    );
    assert_eq!(
        decide("WebFetch", json!({"url": ["https://a.com"]})),
        Verdict::Ask
    );
    assert_eq!(
        decide("WebFetch", json!({"url": "https://a.com/x"})),
        Verdict::Allow
    );
    assert_eq!(
        decide("Read", json!({"file_path": "/tmp/a"})),
        Verdict::Allow
    );
    // A whole-tool deny still denies a call it cannot judge.
    let no_web = bypass(&["WebFetch"]);
    assert_eq!(
        no_web
            .decide(&ToolCall {
                tool: "WebFetch".to_owned(),
                input: json!({}),
            })
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn root_patterns_name_everything_under_them() {
    // `Read(/)` is the project root (/proj) and `Edit(//)` the filesystem root; both used to
    // become globs ending in `/` that matched nothing.
    let e = engine(&[], &[], &["Read(/)", "Edit(//)"]);
    assert_eq!(call(&e, "Read", "/proj/sub/a.txt"), Verdict::Deny);
    assert_eq!(call(&e, "Read", "/proj"), Verdict::Deny);
    assert_eq!(call(&e, "Read", "/elsewhere/a.txt"), Verdict::Ask);
    assert_eq!(call(&e, "Edit", "/etc/passwd"), Verdict::Deny);
    assert_eq!(call(&e, "Write", "/tmp/x"), Verdict::Deny);
}

#[test]
fn read_edit_path_anchors() {
    let e = engine(
        &[
            "Read(src/**)",
            "Read(//etc/hosts)",
            "Read(~/notes/*.md)",
            "Read(/docs/**)",
            "Edit(./src/*.rs)",
            "Read(*.log)",
        ],
        &[],
        &["Read(.env)", "Read(secrets/)"],
    );
    // Relative rules are anchored at the working directory /proj/sub.
    assert_eq!(call(&e, "Read", "/proj/sub/src/a/b.rs"), Verdict::Allow);
    assert_eq!(call(&e, "Read", "src/main.rs"), Verdict::Allow);
    assert_eq!(call(&e, "Read", "/proj/src/main.rs"), Verdict::Ask);
    // `..` cannot climb out of an allowed directory.
    assert_eq!(call(&e, "Read", "src/../../../etc/shadow"), Verdict::Ask);
    assert_eq!(call(&e, "Read", "/etc/hosts"), Verdict::Allow);
    assert_eq!(call(&e, "Read", "/home/u/notes/todo.md"), Verdict::Allow);
    assert_eq!(call(&e, "Read", "/home/u/notes/deep/todo.md"), Verdict::Ask);
    // `/docs` is relative to the project root (the folder holding .claude/).
    assert_eq!(call(&e, "Read", "/proj/docs/x.md"), Verdict::Allow);
    // A bare name matches at any depth under the working directory, and nowhere else (as
    // Claude Code documents `Read(*.env)`: relative to the working directory).
    assert_eq!(call(&e, "Read", "/proj/sub/src/.env"), Verdict::Deny);
    assert_eq!(call(&e, "Read", "/proj/sub/var/log/x.log"), Verdict::Allow);
    assert_eq!(call(&e, "Read", "/var/log/app/x.log"), Verdict::Ask);
    assert_eq!(call(&e, "Read", "/proj/.env"), Verdict::Ask);
    // Trailing slash: the directory's contents.
    assert_eq!(
        call(&e, "Read", "/proj/sub/src/secrets/k.pem"),
        Verdict::Deny
    );
    // Edit: `*` does not cross `/`.
    assert_eq!(call(&e, "Edit", "src/lib.rs"), Verdict::Allow);
    assert_eq!(call(&e, "Write", "src/x/lib.rs"), Verdict::Ask);
    // A Read deny blocks Edit of the same path, naming the Read rule.
    let d = e.decide(&ToolCall::from_text("Edit", "/proj/sub/.env"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule.unwrap().text, "Read(.env)");
    // Grep/Glob follow Read rules; without a path they search the working directory.
    assert_eq!(
        e.decide(&ToolCall {
            tool: "Grep".into(),
            input: json!({"pattern": "x", "path": "src/a.rs"})
        })
        .verdict,
        Verdict::Allow
    );
    // `src/**` names what is inside `src`, not the directory itself: searching
    // the directory needs `Read(src)`.
    assert_eq!(
        e.decide(&ToolCall {
            tool: "Grep".into(),
            input: json!({"pattern": "x", "path": "src"})
        })
        .verdict,
        Verdict::Ask
    );
    assert_eq!(
        e.decide(&ToolCall {
            tool: "Glob".into(),
            input: json!({"pattern": "*"})
        })
        .verdict,
        Verdict::Ask
    );
}

#[test]
fn webfetch_domains_and_mcp() {
    let e = engine(
        &[
            "WebFetch(domain:docs.rs)",
            "WebFetch(domain:*.github.com)",
            "mcp__memory",
            "mcp__gh__get_issue",
            "mcp__fs__*",
            "WebSearch",
        ],
        &[],
        &["mcp__gh__delete_repo"],
    );
    assert_eq!(
        call(&e, "WebFetch", "https://docs.rs/regex"),
        Verdict::Allow
    );
    assert_eq!(call(&e, "WebFetch", "https://DOCS.RS./x"), Verdict::Allow);
    assert_eq!(call(&e, "WebFetch", "https://evil-docs.rs/"), Verdict::Ask);
    assert_eq!(
        call(&e, "WebFetch", "https://api.github.com/x"),
        Verdict::Allow
    );
    assert_eq!(call(&e, "WebFetch", "https://github.com/x"), Verdict::Ask);
    assert_eq!(call(&e, "WebFetch", "not a url"), Verdict::Ask);
    let mcp = |tool: &str| {
        e.decide(&ToolCall {
            tool: tool.into(),
            input: json!({}),
        })
        .verdict
    };
    assert_eq!(mcp("mcp__memory__search"), Verdict::Allow);
    assert_eq!(mcp("mcp__memoryx__search"), Verdict::Ask);
    assert_eq!(mcp("mcp__gh__get_issue"), Verdict::Allow);
    assert_eq!(mcp("mcp__gh__list_issues"), Verdict::Ask);
    assert_eq!(mcp("mcp__gh__delete_repo"), Verdict::Deny);
    assert_eq!(mcp("mcp__fs__read"), Verdict::Allow);
    assert_eq!(mcp("WebSearch"), Verdict::Allow);
    assert_eq!(mcp("Task"), Verdict::Ask);
}

#[test]
fn default_modes_and_approval_handlers() {
    let settings = |mode: &str| json!({"permissions": {"allow": ["Bash(ls)"], "deny": ["Bash(rm *)"], "defaultMode": mode}});
    let dont_ask = engine_with(settings("dontAsk"));
    assert_eq!(bash(&dont_ask, "make"), Verdict::Deny);
    let bypass = engine_with(settings("bypassPermissions"));
    assert_eq!(bash(&bypass, "make"), Verdict::Allow);
    assert_eq!(bash(&bypass, "rm x"), Verdict::Deny);
    let accept = engine_with(settings("acceptEdits"));
    assert_eq!(call(&accept, "Edit", "a.rs"), Verdict::Allow);
    assert_eq!(call(&accept, "Edit", "/etc/a.rs"), Verdict::Ask);

    let e = engine(&["Bash(ls)"], &[], &[]);
    let make = ToolCall::from_text("Bash", "make");
    assert_eq!(e.resolve(&make, &DenyAll).verdict, Verdict::Deny);
    let approve_make = CallbackApproval(|c: &ToolCall, _: &_| c.input["command"] == "make");
    assert_eq!(e.resolve(&make, &approve_make).verdict, Verdict::Allow);
    assert_eq!(
        e.resolve(&ToolCall::from_text("Bash", "make x"), &approve_make)
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn bad_input_names_the_rule_and_position() {
    let load = |text: &str| {
        PermissionEngine::from_settings_json(
            text,
            Path::new("s.json"),
            Path::new("/"),
            Path::new("/h"),
        )
        .err()
        .unwrap()
    };
    assert!(matches!(
        load("{not json"),
        PermissionError::InvalidJson { .. }
    ));
    let err = load(r#"{"permissions": {"allow": ["Bash(ls)", "Bash(ls"]}}"#);
    assert!(
        matches!(
            &err,
            PermissionError::InvalidRule {
                list: List::Allow,
                index: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("allow[1] `Bash(ls`"), "{err}");
    let err = load(r#"{"permissions": {"deny": ["Bash()"]}}"#);
    assert!(
        err.to_string().contains("deny[0]") && err.to_string().contains("empty specifier"),
        "{err}"
    );
    // Rules that would load but never match are refused, naming why.
    for (rule, why) in [
        ("Bash( rm *)", "leading or trailing spaces"),
        ("Bash(git push --force )", "leading or trailing spaces"),
        ("bash", "write `Bash`"),
        ("webfetch", "write `WebFetch`"),
        ("read", "write `Read`"),
    ] {
        let err = load(&json!({"permissions": {"deny": [rule]}}).to_string());
        assert!(
            err.to_string().contains("deny[0]") && err.to_string().contains(why),
            "{rule}: {err}"
        );
    }
    let err = load(r#"{"permissions": {"ask": ["not a tool!"]}}"#);
    assert!(
        err.to_string().contains("ask[0]") && err.to_string().contains("tool name"),
        "{err}"
    );
    assert!(matches!(
        load(r#"{"permissions": {"allow": "Bash"}}"#),
        PermissionError::WrongType { .. }
    ));
    assert!(matches!(
        load(r#"{"permissions": {"defaultMode": "yolo"}}"#),
        PermissionError::UnknownMode { .. }
    ));
    assert_eq!(
        Rule::parse("Bash(npm run:*)").unwrap().to_string(),
        "Bash(npm run *)"
    );
}

/// The shapes a review found getting past deny rules: bash reads options after `-c`,
/// decodes `$'…'`, runs what `env -S`, `xargs [OPTIONS]` and `find -exec` are given, runs a
/// command named by its path, takes `a+=b` as an assignment, and evaluates `$(…)` inside
/// array subscripts later.
#[test]
fn deny_rules_see_what_bash_will_really_run() {
    let allow_all = [
        "Bash(bash *)",
        "Bash(sh *)",
        "Bash(git *)",
        "Bash(env *)",
        "Bash(nice *)",
        "Bash(eval *)",
        "Bash(find *)",
        "Bash(xargs *)",
        "Bash(printf *)",
        "Bash(test *)",
        "Bash(declare *)",
        "Bash(let *)",
        "Bash(unset *)",
        "Bash(echo *)",
        "Bash(ls *)",
    ];
    let e = engine(
        &allow_all,
        &[],
        &[
            "Bash(rm *)",
            "Bash(git push --force *)",
            "Bash(*LD_PRELOAD*)",
        ],
    );
    for denied in [
        // Options after `-c`, and `--`, before the script.
        "bash -c -- 'rm -rf x'",
        "bash -c -e 'rm -rf x'",
        "sh -c -- 'rm x'",
        "nice -n5 bash -c -- 'rm x'",
        "bash -eo pipefail -c 'rm x'",
        "eval -- rm -rf x",
        // ANSI-C quoting.
        "git push $'--force' origin",
        "git push --$'force' origin",
        "git push $'\\x2d-force' origin",
        "git $'push' --force origin",
        // The string `env -S` splits into a command.
        "env -S 'rm -rf x'",
        "env -iS 'rm -rf x'",
        "env --split-string='rm -rf x'",
        // Commands xargs (with options) and find start.
        "xargs -0 rm -rf",
        "xargs -I{} rm {}",
        "xargs -n 1 rm",
        "find . -exec rm -rf {} +",
        "find . -name '*.o' -execdir rm {} \\;",
        "find . -exec sh -c 'rm x' \\;",
        // A command named by its path.
        "/bin/rm -rf x",
        "./rm -rf x",
        // `NAME+=value` is an assignment; `env` takes any `NAME=value`.
        "a+=b rm -rf x",
        "A=1 B+=2 rm x",
        "env a+=b rm -rf x",
        // Deny rules see leading assignments.
        "LD_PRELOAD=/tmp/e.so ls",
    ] {
        assert_eq!(bash(&e, denied), Verdict::Deny, "{denied}");
    }
    // Code the shell runs later, or reads from standard input: never allowed.
    for hidden in [
        "test -v 'x[$(rm -rf ~)]'",
        "printf -v 'x[$(rm -rf ~)]' %s 1",
        // The subscript of the variable `printf -v` writes is evaluated, `x`'s value with it.
        "printf -v 'a[x]' %s 1",
        "printf '-va[x]' %s 1",
        "let 'x[$(rm -rf ~)]=1'",
        "declare 'x[$(rm -rf ~)]=1'",
        "unset 'x[$(rm -rf ~)]'",
        "x='a[$(rm -rf ~)]' echo $((x))",
        "printf -v x %s \"\\$(rm -rf ~)\"; echo \"${x@P}\"",
        "echo 'rm x' | bash",
        "bash -s <<< 'rm x'",
    ] {
        assert_eq!(bash(&e, hidden), Verdict::Ask, "{hidden}");
    }
    // What the allow rules allowed before still is.
    for allowed in [
        "bash -c 'ls -l'",
        "bash script.sh",
        "bash --version",
        "env -S 'ls -l'",
        "find . -name x -print",
        "xargs -n1 echo",
        "printf '%s\\n' hello",
        // A format or argument with brackets is text to printf: only `-v`'s name is evaluated.
        "printf '[%s] %s\\n' x 'a[b]'",
        "printf -v 'a[1]' %s 1",
        "test -f x",
        "declare -a arr",
        "git push origin main",
    ] {
        assert_eq!(bash(&e, allowed), Verdict::Allow, "{allowed}");
    }
    // In bypass mode nothing is asked, so the deny rules must catch these.
    let bypass = engine_with(json!({"permissions": {
        "deny": ["Bash(rm *)"], "defaultMode": "bypassPermissions"}}));
    for denied in ["env -S \"rm -rf x\"", "xargs -0 rm -rf", "/bin/rm x"] {
        assert_eq!(bash(&bypass, denied), Verdict::Deny, "{denied}");
    }
    assert_eq!(bash(&bypass, "echo hi | bash"), Verdict::Ask);
}

#[test]
fn a_search_of_a_denied_folder_is_denied() {
    let e = engine(
        &["Read(./**)"],
        &[],
        &["Read(./secrets/**)", "Read(./keys/)", "Read(.env)"],
    );
    let search = |tool: &str, input: serde_json::Value| {
        e.decide(&ToolCall {
            tool: tool.into(),
            input,
        })
        .verdict
    };
    assert_eq!(
        search("Grep", json!({"pattern": "k", "path": "secrets"})),
        Verdict::Deny
    );
    assert_eq!(
        search("Glob", json!({"pattern": "*", "path": "secrets"})),
        Verdict::Deny
    );
    assert_eq!(
        search("Grep", json!({"pattern": "k", "path": "keys"})),
        Verdict::Deny
    );
    assert_eq!(
        search(
            "Grep",
            json!({"pattern": "KEY", "path": "src", "glob": ".env"})
        ),
        Verdict::Deny
    );
    // A folder holding some denied files is judged on the folder.
    assert_eq!(
        search("Grep", json!({"pattern": "k", "path": "src"})),
        Verdict::Allow
    );
    assert_eq!(
        search("Glob", json!({"pattern": "*.rs", "path": "src"})),
        Verdict::Allow
    );
}

#[test]
fn relative_settings_and_working_directory_are_taken_from_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let here = std::env::current_dir().unwrap();
    let settings = json!({"permissions": {"deny": ["Read(/private/)"], "allow": ["Read(./**)"]}});
    // A relative settings path anchors `/private/` at the process's folder, as an absolute one does.
    let relative = PermissionEngine::from_settings_json(
        &settings.to_string(),
        Path::new("settings.json"),
        dir.path(),
        Path::new("/home/u"),
    )
    .unwrap();
    assert_eq!(
        call(
            &relative,
            "Read",
            &here.join("private/x").display().to_string()
        ),
        Verdict::Deny
    );
    // A relative working directory is under the process's folder, not under `/`.
    let relative_cwd = PermissionEngine::from_settings_json(
        &json!({"permissions": {"deny": ["Read(./secrets/**)"], "allow": ["Read(./**)"]}})
            .to_string(),
        Path::new("/proj/settings.json"),
        Path::new("sub"),
        Path::new("/home/u"),
    )
    .unwrap();
    assert_eq!(
        call(
            &relative_cwd,
            "Read",
            &here.join("sub/secrets/k").display().to_string()
        ),
        Verdict::Deny
    );
}

/// A second review's shapes: each ran the denied command in bash (a `touch` stand-in) while the
/// engine said allow (or, with nothing asked in bypass mode, let it through).
#[test]
fn deny_rules_see_through_nul_braces_clusters_launchers_and_unseen_scripts() {
    let e = engine(
        &[
            "Bash(git *)",
            "Bash(find *)",
            "Bash(echo *)",
            "Bash(bash *)",
            "Bash(xargs *)",
            "Bash(printf *)",
            "Bash(grep *)",
        ],
        &[],
        &["Bash(touch *)", "Bash(git push --force *)"],
    );
    for denied in [
        // Bash ends `$'…'` at a NUL.
        "git push $'--force\\0' origin main",
        "find . -maxdepth 0 -exec $'touch\\0' ran ';'",
        // Brace expansion in the arguments.
        "git push {--force,origin,main}",
        "git push --force{,} origin main",
        "git {push,--force,origin,main}",
        // Every `o` of a cluster takes a word.
        "bash -oc pipefail 'touch ran'",
        "bash -c -oe pipefail 'touch ran'",
        "bash -oo pipefail errexit -c 'touch ran'",
        // getopt's long-option prefixes.
        "echo ran | xargs --max-a 1 touch",
    ] {
        assert_eq!(bash(&e, denied), Verdict::Deny, "{denied}");
    }
    for unseen in [
        "bash /dev/stdin <<< 'touch ran'",
        "bash <(echo touch ran)",
        "bash --rcfile <(echo touch ran) -ic true",
        "printf -v x 'a[%s(touch ran)]' '$'; echo ${a[x]}",
        "printf -v x 'a[%s(touch ran)]' '$'; echo ${!x}",
        "git push --force{,}\"\" origin",
    ] {
        assert_eq!(bash(&e, unseen), Verdict::Ask, "{unseen}");
    }
    for allowed in [
        "xargs -0 grep foo",
        "find . -print0 | xargs -0 grep foo",
        "echo '{a,b}'",
        "echo {1..3}",
        "echo ${#a[@]} ${a[0]} ${!a[@]}",
        "find . -name '*.rs' -exec grep -l foo {} +",
    ] {
        assert_eq!(bash(&e, allowed), Verdict::Allow, "{allowed}");
    }
    let bypass = engine_with(json!({"permissions": {
        "deny": ["Bash(touch *)"], "defaultMode": "bypassPermissions"}}));
    for denied in [
        "/usr/bin/env touch ran",
        "/usr/bin/timeout 5 touch ran",
        "env -iu FOO touch ran",
        "exec -ca foo touch ran",
        "env --uns FOO touch ran",
        "timeout --sig KILL 5 touch ran",
        "env S=1 touch ran",
        "env -S 'touch\\_ran'",
        "env {touch,ran}",
        "setsid -w touch ran",
        "flock F touch ran",
        "flock F -c 'touch ran'",
        "taskset -c 0 touch ran",
        "ionice -c 3 touch ran",
        "chroot / touch ran",
        "script -qc 'touch ran' /dev/null",
        "rbash -c 'touch ran'",
        "su -c 'touch ran' root",
        "runuser -u root touch ran",
        // A fourth review's shapes: GNU time's options with values, sudo's assignments and
        // value options, runuser's and su's `-c` after the user or past another option's value.
        "/usr/bin/time -o echo touch ran",
        "command time --format echo touch ran",
        "sudo LANG=C touch ran",
        "sudo -R / touch ran",
        "runuser root -c 'touch ran'",
        "runuser -l root -c 'touch ran'",
        "runuser root -- -c 'touch ran'",
        "runuser -s/usr/bin/bash root -c 'touch ran'",
        "runuser -g users root -c 'touch ran'",
        "su -c 'touch ran' -w -c root",
        "su -w -c -c 'touch ran' root",
        // A script that cannot be analysed does not hide a denied one beside it.
        "sh -c 'touch ran'; bash -c '[[ -e x ]]'",
        "bash -c '[[ -e x ]]'; sh -c 'touch ran'",
        "sh -c 'touch ran' && sh -c '((1))'",
        "busybox sh -c 'touch ran'",
        "trap 'touch ran' EXIT",
        "mapfile -C 'touch ran #' -c 1 < f",
        "alias x='touch ran'",
        "watch touch ran",
    ] {
        assert_eq!(bash(&bypass, denied), Verdict::Deny, "{denied}");
    }
    for unseen in [
        "source /dev/stdin <<< x",
        ". <(echo touch ran)",
        "env $x ran",
    ] {
        assert_eq!(bash(&bypass, unseen), Verdict::Ask, "{unseen}");
    }
}

/// A third review's shapes (each ran the denied command in bash while the engine allowed it).
#[test]
fn deny_rules_see_through_expanded_options_stdin_spellings_and_code_variables() {
    let e = engine(
        &[
            "Bash(git *)",
            "Bash(bash *)",
            "Bash(echo *)",
            "Bash(env *)",
            "Bash(xargs *)",
            "Bash(find *)",
            "Bash(printf *)",
        ],
        &[],
        &["Bash(touch *)"],
    );
    for denied in [
        // Brace expansion building options.
        "find . -maxdepth 0 {-exec,touch} ran \\;",
        "bash -{a..e..2} 'touch ran'",
        // Bash's long options after one dash.
        "bash -login -c 'touch ran'",
        "bash -noediting -c 'touch ran'",
        // The last `-c` of `su` counts.
        "bash -c 'su -c true -c \"touch ran\"'",
    ] {
        assert_eq!(bash(&e, denied), Verdict::Deny, "{denied}");
    }
    for unseen in [
        "echo x | xargs -{t,E} echo touch ran",
        "bash -rcfile /dev/fd/3 -i 3<<<'touch ran'",
        "bash /dev/./stdin <<< 'touch ran'",
        "bash ../../../../dev/stdin <<< 'touch ran'",
        "bash -c 'source /dev/./stdin' <<< 'touch ran'",
        "env BASH_ENV=/dev/stdin bash -c true <<< 'touch ran'",
        "printf -v x 'a[\\x24(touch ran)]'; echo ${PWD:x}",
        "printf -v x 'a[\\x24(touch ran)]'; printf -v 'a[x]' 1",
        "bash -c 'printf -v x \"a[\\x24(touch ran)]\"; let y=x'",
        "bash -c $'PS4=\\'$(touch ran)\\'\\nset -x\\n:'",
        "bash -O expand_aliases -c $'BASH_ALIASES[e]=touch\\ne ran'",
    ] {
        assert_ne!(bash(&e, unseen), Verdict::Allow, "{unseen}");
    }
    for allowed in [
        "echo ${PATH//:/,}",
        "echo ${HOME:-x} ${PWD:1:3}",
        "bash -c 'cargo test'",
    ] {
        assert_eq!(bash(&e, allowed), Verdict::Allow, "{allowed}");
    }
    let bypass = engine_with(json!({"permissions": {
        "deny": ["Bash(touch *)"], "defaultMode": "bypassPermissions"}}));
    for denied in [
        "su -c true -c 'touch ran'",
        "su -c true --session-command='touch ran'",
        "su '-ctouch ran'",
        "script -q --comm 'touch ran' /dev/null",
        "watch -n 1 touch ran",
        "mapfile -c1 -tC 'touch ran #' a <<< hi",
    ] {
        assert_eq!(bash(&bypass, denied), Verdict::Deny, "{denied}");
    }
    // `command -v` runs nothing.
    assert_eq!(bash(&bypass, "command -v touch"), Verdict::Allow);
}

/// GNU time's `-o FILE` (or `-a`, `-f FORMAT`) writes a file of the caller's choosing: an allow
/// rule for the timed command does not allow it (`time -p` and `-v` still do).
#[test]
fn an_allow_rule_does_not_stretch_over_time_writing_a_file() {
    let e = engine(&["Bash(true)", "Bash(true *)"], &[], &[]);
    for written in [
        "/usr/bin/time -o ~/.ssh/authorized_keys true",
        "/usr/bin/time -f 'x' -o out true",
        "command time --output=out true",
    ] {
        assert_ne!(bash(&e, written), Verdict::Allow, "{written}");
    }
    for inert in ["time true", "time -p true", "/usr/bin/time -v true"] {
        assert_eq!(bash(&e, inert), Verdict::Allow, "{inert}");
    }
}

/// A brace range spanning every 64-bit integer overflowed its count inside the parser thread (a
/// panic in debug builds), and each such panic kept one of the parser's few places for good:
/// after a handful, every command waited out the parse deadline and was refused.
#[test]
fn a_brace_range_over_every_integer_neither_panics_nor_uses_up_the_parser() {
    let e = engine(&["Bash(echo *)"], &[], &["Bash(touch *)"]);
    let started = std::time::Instant::now();
    for _ in 0..8 {
        assert_eq!(
            bash(
                &e,
                "echo {-9223372036854775808..9223372036854775807}; touch ran"
            ),
            Verdict::Deny
        );
    }
    assert_eq!(bash(&e, "echo fine"), Verdict::Allow);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Path rules with `.`, `..` or doubled slashes name what they say (they loaded but matched
/// nothing); a `..` after a wildcard and spaces around a path are refused naming the rule.
#[test]
fn a_path_rules_dots_resolve_and_what_cannot_resolve_is_refused() {
    let e = engine(&["Read", "Edit"], &[], &["Read(../.env)", "Edit(./)"]);
    // The working directory is /proj/sub.
    assert_eq!(call(&e, "Read", "../.env"), Verdict::Deny);
    assert_eq!(call(&e, "Read", "/proj/.env"), Verdict::Deny);
    assert_eq!(call(&e, "Write", "notes.txt"), Verdict::Deny);
    assert_eq!(call(&e, "Write", "/proj/other.txt"), Verdict::Allow);
    for (bad, why) in [
        ("Read(src/*/../x)", "after a wildcard"),
        ("Read( ./x)", "spaces"),
    ] {
        let err = PermissionEngine::from_settings_json(
            &json!({"permissions": {"deny": ["Read(a)", bad]}}).to_string(),
            Path::new("/proj/.claude/settings.json"),
            Path::new("/proj/sub"),
            Path::new("/home/u"),
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                &err,
                PermissionError::InvalidRule {
                    list: List::Deny,
                    index: 1,
                    ..
                }
            ) && err.to_string().contains(why),
            "{err}"
        );
    }
}

/// A search reaches what an ask rule covers as it reaches what a deny rule covers, and a
/// Glob pattern that is absolute or climbs out with `..` is judged where it points.
#[test]
fn searches_meet_ask_rules_and_glob_patterns_are_judged_where_they_point() {
    let e = engine(
        &["Grep", "Glob"],
        &["Read(./secrets/**)"],
        &["Read(~/.ssh/**)"],
    );
    let search = |tool: &str, input: serde_json::Value| {
        e.decide(&ToolCall {
            tool: tool.into(),
            input,
        })
        .verdict
    };
    assert_eq!(
        search("Grep", json!({"pattern": ".", "path": "secrets"})),
        Verdict::Ask
    );
    assert_eq!(
        search("Grep", json!({"pattern": ".", "path": "src"})),
        Verdict::Allow
    );
    for pattern in [
        "/home/u/.ssh/*",
        "../../home/u/.ssh/*",
        "/home/u/.ssh/id_rsa",
    ] {
        assert_eq!(
            search("Glob", json!({"path": ".", "pattern": pattern})),
            Verdict::Deny,
            "{pattern}"
        );
    }
    for harmless in ["src/**/*.rs", "{src,tests}/**/*.rs", "{a,b}/*.rs"] {
        assert_eq!(
            search("Glob", json!({"path": ".", "pattern": harmless})),
            Verdict::Allow,
            "{harmless}"
        );
    }
    // No lexical reading bounds these: `**` may match no folder, and braces may climb out.
    for pattern in [
        "**/../../../home/u/.ssh/id_rsa",
        "{../../../home/u/.ssh,src}/*",
    ] {
        assert_eq!(
            search("Glob", json!({"path": ".", "pattern": pattern})),
            Verdict::Deny,
            "{pattern}"
        );
    }
    // A Grep `glob` filters names under the searched folder: a leading `/` is that folder.
    let dotenv = engine(&["Grep"], &[], &["Read(./.env)"]);
    let grep = dotenv.decide(&ToolCall {
        tool: "Grep".into(),
        input: json!({"pattern": "x", "path": ".", "glob": "/.env"}),
    });
    assert_eq!(grep.verdict, Verdict::Deny);
}

/// `dontAsk` asks no one: what an ask rule holds back is denied. Plan mode is read-only:
/// reads go by the rules, anything else is asked even where an allow rule matches.
#[test]
fn dont_ask_denies_what_an_ask_rule_holds_and_plan_mode_only_reads() {
    let dont_ask = engine_with(json!({"permissions": {
        "defaultMode": "dontAsk",
        "allow": ["Bash(git *)"],
        "ask": ["Bash(git push *)"],
    }}));
    assert_eq!(bash(&dont_ask, "git push origin"), Verdict::Deny);
    assert_eq!(bash(&dont_ask, "git status"), Verdict::Allow);
    let plan = engine_with(json!({"permissions": {
        "defaultMode": "plan",
        "allow": ["Bash(rm *)", "Edit", "Read", "WebFetch"],
        "deny": ["Read(.env)"],
    }}));
    let rm = plan.decide(&ToolCall::from_text("Bash", "rm -rf build"));
    assert_eq!(rm.verdict, Verdict::Ask);
    // The allow rule that would have let it through is named.
    assert_eq!(rm.rule.map(|r| r.list), Some(List::Allow));
    assert_eq!(call(&plan, "Write", "x.txt"), Verdict::Ask);
    assert_eq!(call(&plan, "Read", "src/lib.rs"), Verdict::Allow);
    assert_eq!(call(&plan, "Read", ".env"), Verdict::Deny);
    assert_eq!(
        call(&plan, "WebFetch", "https://docs.rs/regex"),
        Verdict::Allow
    );
}

/// A misspelt key under `permissions` fails the load naming it (a `denny` list dropped every
/// deny rule without a word); a list item that is not a string is named by its index.
#[test]
fn an_unknown_permissions_key_and_a_non_string_rule_are_named() {
    let load = |settings: serde_json::Value| {
        PermissionEngine::from_settings_json(
            &settings.to_string(),
            Path::new("/proj/.claude/settings.json"),
            Path::new("/proj/sub"),
            Path::new("/home/u"),
        )
        .err()
        .unwrap()
        .to_string()
    };
    let typo = load(json!({"permissions": {"allow": ["Bash"], "denny": ["Bash(rm *)"]}}));
    assert!(typo.contains("unknown key `permissions.denny`"), "{typo}");
    let number = load(json!({"permissions": {"allow": ["Bash", 1]}}));
    assert!(
        number.contains("`permissions.allow[1]` must be a string"),
        "{number}"
    );
}
