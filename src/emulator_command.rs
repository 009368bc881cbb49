//! `maxlofs emulator`: the emulator's settings from the command line, then its server.

use anyhow::Context;
use maxlofs_emulator::objects::{ObjectStore, ObjectsConfig};
use maxlofs_emulator::server;
use maxlofs_emulator::store::{Store, StoreConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::args::EmulatorArgs;

pub fn run(args: &EmulatorArgs) -> anyhow::Result<()> {
    // Its database, the -wal and -shm files and the object store hold keys' records and content:
    // created for its user alone (0600 files, 0700 folders), whatever the umask it started with.
    rustix::process::umask(rustix::fs::Mode::RWXG | rustix::fs::Mode::RWXO);
    let faults = maxlofs_emulator::Faults::new(
        args.fail_rate,
        args.drop_rate,
        Duration::from_millis(args.latency_ms),
    )?;
    let config = store_config(args)?;
    let store = match &args.db {
        Some(path) => Store::open(path, config)
            .with_context(|| format!("cannot open the database {}", path.display()))?,
        None => Store::in_memory(config)?,
    };
    let objects_config = ObjectsConfig {
        dir: args
            .objects
            .clone()
            .or_else(|| args.db.as_deref().map(objects_next_to)),
        url_ttl: Duration::from_secs(args.url_ttl_secs),
        body_idle: (args.body_idle_secs > 0).then(|| Duration::from_secs(args.body_idle_secs)),
        upload_disabled: args.upload_disabled,
        no_active_file: args.multipart_no_active_file,
    };
    let objects = ObjectStore::open(objects_config).context("cannot open the object store")?;
    tracing::info!(folder = %objects.root().display(), "object store");
    tokio::runtime::Runtime::new()?.block_on(server::serve(&args.listen, store, objects, faults))
}

/// `<db>.objects`: the objects of a database live and persist next to it.
fn objects_next_to(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".objects");
    PathBuf::from(name)
}

/// The store's settings from the command line: each list as given, or the store's default when
/// nothing was given for it.
fn store_config(args: &EmulatorArgs) -> anyhow::Result<StoreConfig> {
    let defaults = StoreConfig::default();
    Ok(StoreConfig {
        grants: or_default(args.grants.clone(), defaults.grants),
        device_keys: or_default(
            keys(&args.device_keys, &args.device_key_files)?,
            defaults.device_keys,
        ),
        user_keys: or_default(
            keys(&args.user_keys, &args.user_key_files)?,
            defaults.user_keys,
        ),
        merge_parallel_creates: args.merge_parallel_creates,
        strict_delete_auth: args.strict_delete_auth,
        device_upload_disabled: args.device_upload_disabled,
    })
}

fn or_default<T>(given: Vec<T>, default: Vec<T>) -> Vec<T> {
    if given.is_empty() {
        default
    } else {
        given
    }
}

/// The keys given on the command line, then those of each file, one per line (blank lines and
/// surrounding white space do not count). A file without a key is an error, not "no keys".
fn keys(given: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut keys = given.to_vec();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the key file {}", file.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(String::from),
        );
        anyhow::ensure!(
            keys.len() > before,
            "the key file {} holds no key",
            file.display()
        );
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn settings(args: &[&str]) -> anyhow::Result<StoreConfig> {
        let argv = ["maxlofs", "emulator"].iter().chain(args);
        match Cli::parse_from(argv).command {
            Command::Emulator(args) => store_config(&args),
            _ => unreachable!("parsed the emulator subcommand"),
        }
    }

    #[test]
    fn no_flags_give_the_store_defaults() {
        assert_eq!(settings(&[]).unwrap(), StoreConfig::default());
    }

    #[test]
    fn keys_come_from_flags_then_files_and_replace_the_demo_keys() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("devices");
        let users = dir.path().join("users");
        std::fs::write(&devices, "file-dev-1\n\n  file-dev-2 \n").unwrap();
        std::fs::write(&users, "file-user\n").unwrap();
        let config = settings(&[
            "--device-key-file",
            devices.to_str().unwrap(),
            "--device-key",
            "flag-dev",
            "--user-key-file",
            users.to_str().unwrap(),
            "--grant",
            "4",
        ])
        .unwrap();
        assert_eq!(config.device_keys, ["flag-dev", "file-dev-1", "file-dev-2"]);
        assert_eq!(config.user_keys, ["file-user"]);
        assert_eq!(config.grants, [4]);

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n \n").unwrap();
        let err = settings(&["--device-key-file", empty.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("holds no key"), "{err:#}");
        let missing = dir.path().join("missing");
        let err = settings(&["--user-key-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("cannot read the key file"),
            "{err:#}"
        );
    }
}
