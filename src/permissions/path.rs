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
pub(crate) fn anchored_globs(spec: &str, anchors: &Anchors) -> Vec<String> {
    if spec == "//" {
        // The filesystem root (its trailing `/` is not the directory-only mark).
        return vec!["/**".to_owned()];
    }
    let (spec, dir_only) = match spec.strip_suffix('/') {
        Some(s) if !s.is_empty() => (s, true),
        _ => (spec, false),
    };
    let base = if let Some(abs) = spec.strip_prefix("//") {
        format!("/{abs}")
    } else if spec == "~" {
        dir_glob(&anchors.home)
    } else if let Some(rest) = spec.strip_prefix("~/") {
        format!("{}/{rest}", dir_glob(&anchors.home))
    } else if spec.starts_with('/') {
        format!("{}{spec}", dir_glob(&anchors.root))
    } else if let Some(rest) = spec.strip_prefix("./") {
        format!("{}/{rest}", dir_glob(&anchors.cwd))
    } else if spec.contains('/') {
        format!("{}/{spec}", dir_glob(&anchors.cwd))
    } else {
        // A bare name is relative to the working directory like `./name`, and matches at any
        // depth under it, as in gitignore (`Edit(.bashrc)` is not `~/.bashrc`).
        format!("{}/**/{spec}", dir_glob(&anchors.cwd))
    };
    // `Read(/)` (the project root) and `Edit(//)` (the filesystem root) name a directory
    // whose glob would otherwise end in `/` and match nothing.
    let base = base.trim_end_matches('/').to_owned();
    if base.is_empty() {
        vec!["/**".to_owned()]
    } else if base.ends_with("/**") {
        vec![base]
    } else if dir_only {
        vec![format!("{base}/**")]
    } else {
        vec![format!("{base}/**"), base]
    }
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

    #[test]
    fn normalises_lexically() {
        let a = anchors();
        assert_eq!(normalise("../x/./y", &a), "/proj/x/y");
        assert_eq!(normalise("/a/../../etc", &a), "/etc");
        assert_eq!(normalise("~/f", &a), "/home/u/f");
    }
}
