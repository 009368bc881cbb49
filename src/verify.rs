//! `maxlofs verify FOLDER`: asks the service (`download`) for the content of every record the
//! index says was synced, and reports records whose content it lacks or marks deleted; with
//! `--deep`, downloads each content and checks its Maxlo hash (`maxlofs_sync::verify`). On a
//! live mount its daemon does the check, with the key it holds; an unmounted backing folder's
//! index is read here, and the key is given.

use std::time::Duration;

use maxlofs_api::content_client::DOWNLOAD_FLOOR_BYTES;
use maxlofs_sync::verify::{Problem, VerifyReport};
use maxlofs_sync::HealRequest;

use crate::args::VerifyArgs;

/// Exit status: 0 all content is held (and, deep, intact), 1 some is not, 2 it could not check
/// (or some of it: downloads too slow).
pub fn run(args: &VerifyArgs) -> i32 {
    match verify(args) {
        Ok(report) => {
            if let Err(err) = print(&report, args.download_floor_secs, args.json) {
                eprintln!("maxlofs: verify: {}", crate::output::error_line(&err));
                return 2;
            }
            if report.lacking > 0 {
                1
            } else if report.too_slow > 0 {
                2
            } else {
                0
            }
        }
        Err(err) => {
            eprintln!("maxlofs: verify: {}", crate::output::error_line(&err));
            2
        }
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<VerifyReport> {
    let deep = args
        .deep
        .then(|| Duration::from_secs(args.download_floor_secs));
    let request = HealRequest::Verify {
        floor_window_secs: deep.map(|window| window.as_secs()),
    };
    crate::heal::run_verify(&args.folder, &args.unmounted, request)
}

fn print(report: &VerifyReport, floor_window_secs: u64, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    for finding in &report.findings {
        let what = match finding.problem {
            Problem::Missing => "missing  ",
            Problem::Corrupted => "corrupted",
            Problem::TooSlow => "too slow ",
        };
        println!(
            "{what} {} ({})",
            crate::output::escaped(&finding.path),
            finding.file_hash
        );
    }
    let (lacking, too_slow) = (report.lacking, report.too_slow);
    let mut said = Vec::new();
    if lacking > 0 {
        said.push(format!("{lacking} records lack their content"));
    }
    if too_slow > 0 {
        said.push(format!(
            "{too_slow} records not checked: their download brought less than {} KiB in {} s \
             and was given up",
            DOWNLOAD_FLOOR_BYTES / 1024,
            floor_window_secs
        ));
    }
    if said.is_empty() {
        said.push("all held".into());
    }
    println!(
        "{} records, {} contents checked{}: {}",
        report.records,
        report.contents,
        if report.deep { " (downloaded)" } else { "" },
        said.join("; ")
    );
    Ok(())
}
