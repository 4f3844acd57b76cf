//! Read/Edit path patterns: gitignore-style anchors turned into absolute
//! globs, matched with `globset` (`literal_separator(true)`, so `*` never
//! crosses a `/` and `**` does).

use std::path::{Component, Path, PathBuf};

/// The directories a path rule can be anchored to.
#[derive(Debug, Clone)]
pub(crate) struct Anchors {
    /// Project root: the directory holding `.claude/` when the settings file
    /// lives in a `.claude` folder, else the settings file's own directory.
    pub root: PathBuf,
    /// Working directory of the session.
    pub cwd: PathBuf,
    /// Home directory.
    pub home: PathBuf,
}

fn dir_glob(dir: &Path) -> String {
    let text = dir.to_string_lossy();
    globset::escape(text.trim_end_matches('/'))
}

/// Turns one specifier into the absolute globs it stands for (a pattern
/// names a file or, like gitignore, a directory and everything under it).
///
/// `.`, `..` and empty parts are resolved as a tool's path is (see [`normalise`]): a rule
/// written `Read(../.env)` or `Edit(./)` loaded, but its glob kept the parts literally and
/// matched no normalised path. A `..` after a wildcard cannot be resolved, and a pattern with
/// spaces around it matches no path as written: both are refused, with the reason.
pub(crate) fn anchored_globs(spec: &str, anchors: &Anchors) -> Result<Vec<String>, String> {
    resolve(spec, anchors).map(|(globs, _)| globs)
}

/// [`anchored_globs`], and whether a `..` took the pattern above its anchor directory (the
/// consolidation's symbolic anchors cannot follow it there).
pub(crate) fn resolve(spec: &str, anchors: &Anchors) -> Result<(Vec<String>, bool), String> {
    if spec.trim() != spec {
        return Err("a path pattern with spaces around it matches no path as written".to_owned());
    }
    if spec == "//" {
        // The filesystem root (its trailing `/` is not the directory-only mark).
        return Ok((vec!["/**".to_owned()], false));
    }
    let (spec, dir_only) = match spec.strip_suffix('/') {
        Some(s) if !s.is_empty() => (s, true),
        _ => (spec, false),
    };
    // The anchor directory, the pattern under it, and whether a bare name matches at any
    // depth (as in gitignore: `Edit(.bashrc)` is any `.bashrc` under the working directory,
    // not `~/.bashrc`).
    let (mut dir, rest, any_depth) = if let Some(abs) = spec.strip_prefix("//") {
        (PathBuf::from("/"), abs, false)
    } else if spec == "~" {
        (anchors.home.clone(), "", false)
    } else if let Some(rest) = spec.strip_prefix("~/") {
        (anchors.home.clone(), rest, false)
    } else if let Some(rest) = spec.strip_prefix('/') {
        (anchors.root.clone(), rest, false)
    } else if let Some(rest) = spec.strip_prefix("./") {
        (anchors.cwd.clone(), rest, false)
    } else if spec.contains('/') || spec == "." || spec == ".." {
        (anchors.cwd.clone(), spec, false)
    } else {
        (anchors.cwd.clone(), spec, true)
    };
    let mut parts: Vec<&str> = Vec::new();
    let mut above_anchor = false;
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                None => {
                    dir.pop();
                    above_anchor = true;
                }
                Some(last) if !has_glob_meta(last) => {
                    parts.pop();
                }
                Some(_) => {
                    return Err(
                        "a `..` after a wildcard cannot be resolved: write the path without it"
                            .to_owned(),
                    );
                }
            },
            _ => parts.push(part),
        }
    }
    let mut base = dir_glob(&dir);
    if any_depth {
        base.push_str("/**");
    }
    for part in &parts {
        base.push('/');
        base.push_str(part);
    }
    // `Read(/)` (the project root) and `Edit(//)` (the filesystem root) name a directory
    // whose glob would otherwise end in `/` and match nothing.
    let base = base.trim_end_matches('/').to_owned();
    let globs = if base.is_empty() {
        vec!["/**".to_owned()]
    } else if base.ends_with("/**") {
        vec![base]
    } else if dir_only {
        vec![format!("{base}/**")]
    } else {
        vec![format!("{base}/**"), base]
    };
    Ok((globs, above_anchor))
}

/// Whether a path part holds a glob metacharacter (it is a pattern, not a name).
pub(crate) fn has_glob_meta(part: &str) -> bool {
    part.contains(['*', '?', '[', '{', '\\'])
}

/// Makes a tool's path absolute (relative to `cwd`, `~/` to `home`) and
/// removes `.` and `..` lexically. Symlinks are not resolved: the engine
/// judges the path the tool was given.
pub(crate) fn normalise(path: &str, anchors: &Anchors) -> String {
    let joined = if let Some(rest) = path.strip_prefix("~/") {
        anchors.home.join(rest)
    } else if path == "~" {
        anchors.home.clone()
    } else {
        anchors.cwd.join(path)
    };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn anchors() -> Anchors {
        Anchors {
            root: "/proj".into(),
            cwd: "/proj/sub".into(),
            home: "/home/u".into(),
        }
    }

    #[test]
    fn anchors_resolve() {
        let a = anchors();
        let anchored_globs = |spec: &str, a: &Anchors| super::anchored_globs(spec, a).unwrap();
        assert_eq!(
            anchored_globs("//etc/passwd", &a),
            ["/etc/passwd/**", "/etc/passwd"]
        );
        assert_eq!(anchored_globs("~/.ssh/**", &a), ["/home/u/.ssh/**"]);
        assert_eq!(
            anchored_globs("/src/*.rs", &a),
            ["/proj/src/*.rs/**", "/proj/src/*.rs"]
        );
        assert_eq!(anchored_globs("./a", &a), ["/proj/sub/a/**", "/proj/sub/a"]);
        assert_eq!(
            anchored_globs("a/b", &a),
            ["/proj/sub/a/b/**", "/proj/sub/a/b"]
        );
        assert_eq!(
            anchored_globs(".env", &a),
            ["/proj/sub/**/.env/**", "/proj/sub/**/.env"]
        );
        assert_eq!(anchored_globs("build/", &a), ["/proj/sub/**/build/**"]);
    }

    /// A rule's `.`, `..` and doubled slashes are resolved as a tool's path is, so the rule
    /// matches what it names; what cannot be resolved is refused.
    #[test]
    fn a_rules_dots_and_doubled_slashes_resolve_as_a_paths_do() {
        let a = anchors();
        let globs = |spec: &str| anchored_globs(spec, &a).unwrap();
        assert_eq!(globs("../.env"), ["/proj/.env/**", "/proj/.env"]);
        assert_eq!(globs("."), ["/proj/sub/**", "/proj/sub"]);
        assert_eq!(globs("./"), ["/proj/sub/**"]);
        assert_eq!(globs(".."), ["/proj/**", "/proj"]);
        assert_eq!(globs("src//x"), ["/proj/sub/src/x/**", "/proj/sub/src/x"]);
        assert_eq!(
            globs("./a/../b/*.rs"),
            ["/proj/sub/b/*.rs/**", "/proj/sub/b/*.rs"]
        );
        assert_eq!(globs("~/../v/.ssh/**"), ["/home/v/.ssh/**"]);
        assert_eq!(globs("//etc/./passwd"), ["/etc/passwd/**", "/etc/passwd"]);
        assert!(resolve("../x", &a).unwrap().1);
        assert!(!resolve("a/../x", &a).unwrap().1);
        assert!(
            anchored_globs("src/*/../x", &a)
                .unwrap_err()
                .contains("after a wildcard")
        );
        assert!(anchored_globs(" ./x", &a).unwrap_err().contains("spaces"));
    }

    #[test]
    fn normalises_lexically() {
        let a = anchors();
        assert_eq!(normalise("../x/./y", &a), "/proj/x/y");
        assert_eq!(normalise("/a/../../etc", &a), "/etc");
        assert_eq!(normalise("~/f", &a), "/home/u/f");
    }
}
