//! Files the commands write (`perms consolidate`'s settings and report, `score --map`): never
//! over one of the command's own inputs, and a set of files written whole or not at all.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Refuses an output path that names one of the command's inputs (or another of its outputs):
/// `output` is the flag's value, each of `others` a `(path, what it is)`. Compared as files
/// (device and inode, so a hard or symbolic link counts) where both exist, else as paths with
/// their folders resolved.
pub(crate) fn refuse_overwriting(
    flag: &str,
    output: &Path,
    others: &[(&Path, &str)],
) -> Result<()> {
    for (other, what) in others {
        anyhow::ensure!(
            !same_file(output, other),
            "{flag} {} is {what} {}: refusing to overwrite it",
            output.display(),
            other.display()
        );
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => resolved(a) == resolved(b),
    }
}

/// `path` with its folder made absolute and free of links (the file itself may not exist yet).
fn resolved(path: &Path) -> PathBuf {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(folder), path.file_name()) {
        (Ok(folder), Some(name)) => folder.join(name),
        _ => path.to_path_buf(),
    }
}

/// Writes every file or none: each goes to a temporary file beside its destination first, and
/// only when all are written are they renamed into place (a rename within a folder does not fail
/// half done), so a report that cannot be written leaves no new settings file behind.
pub(crate) fn write_all_or_none(files: &[(&Path, &[u8])]) -> Result<()> {
    for (path, _) in files {
        // A folder in the way would only fail at the rename, after earlier files were replaced.
        anyhow::ensure!(
            !path.is_dir(),
            "cannot write {}: it is a folder",
            path.display()
        );
    }
    let mut written: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    let outcome = (|| {
        for (path, bytes) in files {
            let temporary = temporary_beside(path);
            // Pushed before writing: a partly written temporary file is removed too.
            written.push((temporary.clone(), path));
            std::fs::write(&temporary, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for (temporary, path) in &written {
            std::fs::rename(temporary, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    })();
    if outcome.is_err() {
        for (temporary, _) in &written {
            let _ = std::fs::remove_file(temporary);
        }
    }
    outcome
}

/// `.NAME.tmp-PID` in `path`'s folder.
fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or(path.as_os_str()));
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_output_naming_an_input_is_refused_by_path_or_by_link() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("settings.json");
        std::fs::write(&input, "{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let relative = dir.path().join(".").join("settings.json");
        for output in [&input, &link, &relative] {
            let refused = refuse_overwriting("--out", output, &[(&input, "the settings file")]);
            let message = refused.unwrap_err().to_string();
            assert!(message.contains("is the settings file"), "{message}");
        }
        let fresh = dir.path().join("new.json");
        refuse_overwriting("--out", &fresh, &[(&input, "the settings file")]).unwrap();
        // Two outputs that do not exist yet still clash by name.
        let refused = refuse_overwriting("--report", &fresh, &[(&fresh, "--out")]);
        assert!(refused.is_err());
    }

    #[test]
    fn a_file_that_cannot_be_written_leaves_none_written() {
        let dir = tempfile::tempdir().unwrap();
        let settings = dir.path().join("out.json");
        let report = dir.path().join("missing").join("report.md");
        let error = write_all_or_none(&[(&settings, b"{}"), (&report, b"# report")]).unwrap_err();
        assert!(format!("{error:#}").contains("report.md"), "{error:#}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let folder = dir.path().join("a-folder");
        std::fs::create_dir(&folder).unwrap();
        let error = write_all_or_none(&[(&settings, b"{}"), (&folder, b"# report")]).unwrap_err();
        assert!(error.to_string().contains("it is a folder"), "{error}");
        assert!(!settings.exists());

        write_all_or_none(&[(&settings, b"{}"), (&dir.path().join("r.md"), b"# r")]).unwrap();
        assert_eq!(std::fs::read_to_string(&settings).unwrap(), "{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
