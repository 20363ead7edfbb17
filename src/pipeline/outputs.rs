//! Output safety: before anything is written, every output path of a run is resolved against every
//! input and every other output. An input is never an output (not even with `overwrite`); two outputs
//! never share a file; an existing output is an error unless the user asked to overwrite it.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// What a path is in a run, for messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Input,
    Output(&'static str),
    /// An output this run already writes (or wrote, for a stream that has ended): never replaced.
    Written(&'static str),
}

/// The inputs and outputs of one run (or of a whole batch), checked together.
#[derive(Debug, Default)]
pub struct OutputPlan {
    entries: Vec<(PathBuf, Role)>,
}

impl OutputPlan {
    pub fn input(&mut self, path: &Path) {
        self.entries.push((path.to_path_buf(), Role::Input));
    }

    /// `kind` names the output in messages ("video", "JSON Lines", "events"...).
    pub fn output(&mut self, path: &Path, kind: &'static str) {
        self.entries.push((path.to_path_buf(), Role::Output(kind)));
    }

    /// The outputs so far are this run's own files (streams started earlier): a stream added
    /// later may not write over them, even with `overwrite`.
    pub fn mark_written(&mut self) {
        for (_, role) in &mut self.entries {
            if let Role::Output(kind) = *role {
                *role = Role::Written(kind);
            }
        }
    }

    /// Every clash, as one error naming both paths; `overwrite` allows replacing existing outputs
    /// that are not inputs of this run.
    pub fn check(&self, overwrite: bool) -> Result<()> {
        let mut seen: HashMap<PathBuf, (&Path, &Role)> = HashMap::new();
        // inputs first, so a clash with an input is reported as such whatever the order given
        let ordered = self
            .entries
            .iter()
            .filter(|(_, r)| *r == Role::Input)
            .chain(self.entries.iter().filter(|(_, r)| *r != Role::Input));
        for (path, role) in ordered {
            let key = resolve(path)?;
            if let Some((other, other_role)) = seen.get(&key) {
                match (other_role, role) {
                    (Role::Input, Role::Input) => continue,
                    (Role::Written(_), Role::Written(_)) => continue,
                    (Role::Written(a), Role::Output(kind))
                    | (Role::Output(kind), Role::Written(a)) => {
                        return Err(Error::Config(format!(
                            "{kind} output {} is the {a} output of a stream of this run (running \
                             or ended): it is never replaced; add the stream under another name \
                             or choose another path",
                            path.display()
                        )))
                    }
                    (Role::Input, Role::Output(kind) | Role::Written(kind)) => {
                        return Err(Error::Config(format!(
                            "{kind} output {} would overwrite the input {}: choose another output \
                             path (an input is never replaced, even with --overwrite)",
                            path.display(),
                            other.display()
                        )))
                    }
                    (Role::Output(a) | Role::Written(a), _) => {
                        return Err(Error::Config(format!(
                            "{a} output {} and {} output {} are the same file: give each its own \
                             path (e.g. with {{name}})",
                            other.display(),
                            describe(role),
                            path.display()
                        )))
                    }
                }
            }
            if let Role::Output(kind) = role {
                if !overwrite && std::fs::symlink_metadata(path).is_ok() {
                    return Err(Error::Config(format!(
                        "{kind} output {} already exists: remove it, choose another path, or pass \
                         --overwrite ([output] overwrite = true) to replace it",
                        path.display()
                    )));
                }
            }
            seen.insert(key, (path, role));
        }
        Ok(())
    }
}

fn describe(role: &Role) -> &'static str {
    match role {
        Role::Input => "input",
        Role::Output(k) | Role::Written(k) => k,
    }
}

/// The path a file is (or would be) reached by: symlinks of the longest existing ancestor resolved,
/// the rest normalised lexically. Two spellings of one file give one key.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(Path::new("."), e))?
            .join(path)
    };
    let normal = normalise(&abs);
    // walk up to the longest prefix that exists, canonicalise it, append the rest
    let mut existing = normal.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return Ok(normal),
        }
    }
}

fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_never_an_output() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mp4");
        std::fs::write(&a, b"x").unwrap();
        let mut plan = OutputPlan::default();
        plan.input(&a);
        // another spelling of the same file
        plan.output(&dir.path().join("sub/../a.mp4"), "video");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let e = plan.check(true).unwrap_err().to_string();
        assert!(e.contains("would overwrite the input"), "{e}");
        assert!(e.contains("a.mp4"), "{e}");
    }

    #[test]
    fn outputs_never_share_a_file_and_existing_ones_need_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("x.jsonl");
        let mut plan = OutputPlan::default();
        plan.output(&j, "JSON Lines");
        plan.output(&dir.path().join("./x.jsonl"), "events");
        let e = plan.check(true).unwrap_err().to_string();
        assert!(e.contains("are the same file"), "{e}");

        let mut plan = OutputPlan::default();
        plan.output(&j, "JSON Lines");
        plan.check(false).unwrap();
        std::fs::write(&j, b"{}\n").unwrap();
        let e = plan.check(false).unwrap_err().to_string();
        assert!(
            e.contains("already exists") && e.contains("--overwrite"),
            "{e}"
        );
        plan.check(true).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("in.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let mut plan = OutputPlan::default();
        plan.input(&real.join("in.mp4"));
        plan.output(&dir.path().join("link/in.mp4"), "video");
        assert!(plan.check(true).is_err());
    }
}
