//! A Python virtual environment with pinned packages from PyPI, for tests that drive a Python tool (the `openai`
//! SDK, kubernetes-validate): made once under `target/`, reused while its packages are the pinned ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The interpreter of the virtual environment at `dir` with `packages` (`name==version`) installed; made (or remade)
/// unless `ready`, a Python statement run with `-c`, already exits 0 in it. `None` to skip the test: no Python, or
/// the install failed while `require` is not `1` (the reason printed as a skip); with `require=1` either fails.
pub fn venv(dir: &Path, packages: &[&str], ready: &str, require: &str) -> Result<Option<PathBuf>> {
    let Some(python) = super::proc::installed("python3", require, "python3-venv") else {
        return Ok(None);
    };
    let py = dir.join("bin/python");
    let is_ready = Command::new(&py)
        .args(["-c", ready])
        .output()
        .is_ok_and(|o| o.status.success());
    if is_ready {
        return Ok(Some(py));
    }
    let dir_arg = dir.display().to_string();
    let make = vec!["-m", "venv", "--clear", &dir_arg];
    let mut install = vec!["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    install.extend_from_slice(packages);
    let steps: [(&Path, Vec<&str>); 2] = [(&python, make), (&py, install)];
    for (program, args) in steps {
        let out = Command::new(program)
            .args(&args)
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            let why = format!(
                "cannot install {} ({} {}): {}",
                packages.join(" "),
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            if std::env::var(require).as_deref() == Ok("1") {
                bail!("{why}");
            }
            super::proc::skipped(&why);
            return Ok(None);
        }
    }
    Ok(Some(py))
}
