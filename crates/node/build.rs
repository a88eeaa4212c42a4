//! Names this build for the cluster's membership (`PERENNIAL_BUILD`): the package's version,
//! and the git commit it was built from when there is one (`0.1.0+87519f3`; a `-dirty`
//! suffix for uncommitted changes).

use std::process::Command;

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let build = match git(&["rev-parse", "--short=7", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|changes| !changes.is_empty());
            format!("{version}+{commit}{}", if dirty { "-dirty" } else { "" })
        }
        _ => version.to_owned(),
    };
    println!("cargo:rustc-env=PERENNIAL_BUILD={build}");
    // Built again when the commit moves (HEAD, or the branch it names) or the index changes.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        for file in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={git_dir}/{file}");
        }
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{reference}");
        }
    }
}
