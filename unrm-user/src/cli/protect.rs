//! `unrm protect`, `unrm unprotect` and `unrm protect --list`.
//!
//! A path is resolved here, as the caller (symbolic links and `..` are the
//! caller's to follow); the daemon opens the result following none, and
//! lets a user protect only a directory of their own.

use std::{path::Path, process::ExitCode};

use anyhow::{Context, Result, bail};

use super::{call, format::clean};
use crate::{
    api::proto::{Request, Response},
    protect::TreeView,
};

pub fn protect(socket: &Path, paths: &[std::path::PathBuf], any_fs: bool) -> Result<ExitCode> {
    each(paths, "protect", |path| {
        let tree = one(socket, &Request::Protect { path, any_fs })?;
        let mut line = format!("protected {}: {} files", clean(&tree.path), tree.files);
        if tree.excluded > 0 {
            line += &format!(", {} excluded", tree.excluded);
        }
        if tree.not_protected > 0 {
            line += &format!(
                ", {} not protected ({})",
                tree.not_protected,
                clean(tree.why.as_deref().unwrap_or(""))
            );
        }
        println!("{line}");
        Ok(())
    })
}

pub fn unprotect(socket: &Path, paths: &[std::path::PathBuf]) -> Result<ExitCode> {
    each(paths, "unprotect", |path| {
        let tree = one(socket, &Request::Unprotect { path })?;
        println!("unprotected {}", clean(&tree.path));
        Ok(())
    })
}

pub fn list(socket: &Path, json: bool) -> Result<ExitCode> {
    let Response::Trees { trees } = call(socket, &Request::Protected)? else { bail!("unexpected answer") };
    if json {
        println!("{}", serde_json::to_string_pretty(&trees)?);
        return Ok(ExitCode::SUCCESS);
    }
    if trees.is_empty() {
        println!("no protected tree");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<11} {:>9} {:>9} {:>9} {:<6} PATH", "STATE", "FILES", "EXCLUDED", "NOT", "BY");
    for t in &trees {
        let by = if t.source == "config" { "config".to_owned() } else { t.uid.to_string() };
        println!(
            "{:<11} {:>9} {:>9} {:>9} {:<6} {}",
            t.state,
            t.files,
            t.excluded,
            t.not_protected,
            by,
            clean(&t.path)
        );
        if let Some(why) = &t.why {
            println!("{:<11} {}", "", clean(why));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` on each path, made absolute and real; one line per failure,
/// and a nonzero exit if any failed.
fn each(
    paths: &[std::path::PathBuf],
    what: &str,
    mut f: impl FnMut(String) -> Result<()>,
) -> Result<ExitCode> {
    if paths.is_empty() {
        bail!("{what}: name at least one directory");
    }
    let mut failed = 0;
    for path in paths {
        let result = std::fs::canonicalize(path)
            .with_context(|| clean(&path.to_string_lossy()).into_owned())
            .and_then(|real| {
                real.into_os_string()
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))
            })
            .and_then(&mut f);
        if let Err(err) = result {
            failed += 1;
            eprintln!("unrm: {}", clean(&format!("{err:#}")));
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn one(socket: &Path, request: &Request) -> Result<TreeView> {
    match call(socket, request)? {
        Response::Trees { mut trees } if trees.len() == 1 => Ok(trees.remove(0)),
        _ => bail!("unexpected answer"),
    }
}
