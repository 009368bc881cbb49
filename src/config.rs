//! Where `maxlofs mount`'s settings come from, highest precedence first: command-line flags and
//! `-o` options, `MAXLOFS_*` environment variables, the config file, the built-in defaults.
//! `maxlofs grants` reads the settings it shares with `mount` (`api`, `device_key_file`) the same
//! way, from the same config file, and passes over the file's other keys.
//!
//! How: clap parses the command line, falling back to the environment and then to the defaults,
//! and records where each value came from (`ArgMatches::value_source`). The settings that `-o`
//! options set, and those the config file sets that came from neither the command line nor the
//! environment, are then added to the command line as `--name=value` and it is parsed again. So
//! clap stays the one parser and validator of values, and config keys, `-o` options and
//! environment variables all take their names from the `MountArgs` fields (`settle_ms`,
//! `-o settle_ms=`, `MAXLOFS_SETTLE_MS`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches};

use crate::args::{Cli, Command, MountArgs};

/// mount(8) options that mean nothing to maxlofs, accepted and ignored: mount(8) and mount.fuse3
/// pass some on their own (`rw,dev,suid` always, `nosuid,nodev` for `user`). `rw` must not
/// override a `read_only` from the environment or the config file, as mount(8) always adds it.
/// `default_permissions` is implied by `allow_other`. Also ignored: `x-*` and `comment=`.
const IGNORED_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "default_permissions",
];

/// The command line as clap sees it. On/off settings of `mount` also take `=true|false` (or
/// yes/no, on/off, 1/0) so that -o options, the environment and the config file can turn them
/// either way.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("mount", |mount| {
        mount.mut_args(|arg| {
            if is_setting(&arg) && matches!(arg.get_action(), ArgAction::SetTrue) {
                arg.action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
                    .default_value("false")
                    .value_parser(BoolishValueParser::new())
            } else {
                arg
            }
        })
    })
}

/// Parses a command line (program name first) into a `Cli`, with the settings of `maxlofs mount`
/// and `maxlofs grants` resolved. Errors are clap's, formatted with usage, and exit with status 2.
pub fn parse<T: Into<OsString>>(argv: impl IntoIterator<Item = T>) -> Result<Cli, clap::Error> {
    let mut cmd = command();
    let mut argv = helper_form(&cmd, argv.into_iter().map(Into::into).collect());
    let mut matches = cmd.try_get_matches_from_mut(&argv)?;
    let added = match matches.subcommand() {
        Some((name @ ("mount" | "grants"), found)) => {
            let command = cmd.find_subcommand_mut(name).expect("a subcommand");
            overrides(command, found).map_err(|err| err.format(command))?
        }
        _ => Vec::new(),
    };
    if !added.is_empty() {
        // Right after the subcommand (always argv[1]: maxlofs has no options of its own that
        // take a value), so that a `--` later on cannot make them positional.
        argv.splice(2..2, added);
        matches = cmd.try_get_matches_from_mut(&argv)?;
    }
    let mut cli = Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut cmd))?;
    if let Command::Mount(mount) = &mut cli.command {
        make_paths_absolute(&mut mount.settings)
            .map_err(|err| clap::Error::raw(ErrorKind::ValueValidation, err).format(&mut cmd))?;
    }
    Ok(cli)
}

/// The command line that parses back to `args` whatever the environment:
/// `mount BACKING MOUNTPOINT --name=value ...` with every setting that has a value.
pub fn command_line(args: &MountArgs) -> anyhow::Result<Vec<OsString>> {
    let serde_json::Value::Object(fields) = serde_json::to_value(args)? else {
        unreachable!("a struct serializes to a JSON object")
    };
    let cmd = command();
    let mount = cmd.find_subcommand("mount").expect("mount is a subcommand");
    let mut line: Vec<OsString> = vec![
        "mount".into(),
        args.backing.clone().into(),
        args.mountpoint.clone().into(),
    ];
    for arg in settings(mount) {
        let text = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match &fields[arg.get_id().as_str()] {
            serde_json::Value::Null => {}
            serde_json::Value::Array(values) => {
                line.extend(values.iter().map(|value| flag(arg, Some(&text(value)))));
            }
            value => line.push(flag(arg, Some(&text(value)))),
        }
    }
    Ok(line)
}

/// `$XDG_CONFIG_HOME/maxlofs/config.toml`, else `~/.config/maxlofs/config.toml`.
pub fn default_config_file() -> Option<PathBuf> {
    Some(xdg_dir("XDG_CONFIG_HOME", ".config")?.join("maxlofs/config.toml"))
}

/// An XDG base directory: `$var` when set to an absolute path, else `$HOME/fallback`.
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => Some(dir),
        _ => Some(PathBuf::from(std::env::var_os("HOME")?).join(fallback)),
    }
}

/// mount.fuse3 runs `maxlofs BACKING MOUNTPOINT -o OPTIONS` for fstab entries of type
/// fuse.maxlofs: a first argument that is no subcommand, followed by `-o`, means `maxlofs mount`.
fn helper_form(cmd: &clap::Command, mut argv: Vec<OsString>) -> Vec<OsString> {
    let is_helper = argv.get(1).is_some_and(|first| {
        !first.as_encoded_bytes().starts_with(b"-") && cmd.find_subcommand(first).is_none()
    }) && argv[2..]
        .iter()
        .any(|arg| arg.as_encoded_bytes().starts_with(b"-o"));
    if is_helper {
        argv.insert(1, "mount".into());
    }
    argv
}

/// The names of the settings, which are the config file keys and `-o` options: the flags of
/// `MountArgs`, not its positional paths.
fn setting_names() -> Vec<clap::Id> {
    MountArgs::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .filter(|arg| !arg.is_positional())
        .map(|arg| arg.get_id().clone())
        .collect()
}

/// Whether `arg` is one of the settings, not a positional path nor an argument of a subcommand's
/// own (`--config`, `--json`, ...).
fn is_setting(arg: &Arg) -> bool {
    setting_names().contains(arg.get_id())
}

/// The settings a subcommand takes.
fn settings(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| is_setting(arg))
}

fn setting<'a>(command: &'a clap::Command, name: &str) -> Option<&'a Arg> {
    settings(command).find(|arg| arg.get_id() == name)
}

fn names() -> String {
    let ids = setting_names();
    let names: Vec<&str> = ids.iter().map(clap::Id::as_str).collect();
    names.join(", ")
}

/// `--name=value`, or `--name` alone (an on/off setting turned on).
fn flag(arg: &Arg, value: Option<&str>) -> OsString {
    let long = arg.get_long().expect("settings are long flags");
    match value {
        Some(value) => format!("--{long}={value}").into(),
        None => format!("--{long}").into(),
    }
}

/// What an `-o` option says: a setting's name and value, or `None` for one that is ignored.
fn mount_option(option: &str) -> Option<(&str, Option<&str>)> {
    let (name, value) = match option.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    if option == "ro" {
        return Some(("read_only", Some("true")));
    }
    let ignored = name.is_empty()
        || IGNORED_OPTIONS.contains(&name)
        || name.starts_with("x-")
        || name == "comment";
    (!ignored).then_some((name, value))
}

/// The settings chosen so far, each with its `--name=value` arguments.
type Chosen<'a> = Vec<(&'a Arg, Vec<OsString>)>;

/// The `--name=value` arguments to add to a subcommand's command line for the settings that
/// `-o` options set (they rank as flags), and for those the config file sets that neither a flag
/// nor the environment does.
fn overrides(command: &clap::Command, found: &ArgMatches) -> Result<Vec<OsString>, clap::Error> {
    let mut chosen = Chosen::new();
    // -o options are mount(8)'s form, so `mount`'s alone.
    let config = if command.get_name() == "mount" {
        from_options(command, found, &mut chosen)?
    } else {
        config_file(found)
    };
    if let Some(path) = config {
        from_file(command, found, &path, &mut chosen)?;
    }
    Ok(chosen.into_iter().flat_map(|(_, flags)| flags).collect())
}

/// Chooses what the `-o` options set, and answers the config file to read.
fn from_options<'a>(
    mount: &'a clap::Command,
    found: &ArgMatches,
    chosen: &mut Chosen<'a>,
) -> Result<Option<PathBuf>, clap::Error> {
    let mut config = config_file(found);
    let options = found.get_many::<String>("options").into_iter().flatten();
    for (name, value) in options.flat_map(|o| o.split(',')).filter_map(mount_option) {
        // An fstab line has no other way to name a config file.
        if name == "config" {
            if found.value_source("config") == Some(ValueSource::CommandLine) {
                return Err(usage_error(
                    ErrorKind::ArgumentConflict,
                    "'config' is given both as --config and as -o config".into(),
                ));
            }
            let path = value.ok_or_else(|| needs_value(name))?;
            if !found.get_flag("no_config") {
                config = Some(path.into());
            }
            continue;
        }
        let arg = setting(mount, name).ok_or_else(|| {
            usage_error(
                ErrorKind::UnknownArgument,
                format!(
                    "unknown mount option '{name}'; the options are: {}, config, ro, and the \
                     usual mount options, which are ignored",
                    names()
                ),
            )
        })?;
        if found.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            return Err(usage_error(
                ErrorKind::ArgumentConflict,
                format!(
                    "'{name}' is given both as --{} and as -o {name}",
                    arg.get_long().unwrap_or(name)
                ),
            ));
        }
        // On/off settings alone mean on; the others need a value.
        let optional_value = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
        if value.is_none() && !optional_value {
            return Err(needs_value(name));
        }
        let flag = flag(arg, value);
        check(arg, &flag, value.unwrap_or_default(), &format!("-o {name}"))?;
        choose(chosen, arg, flag);
    }
    Ok(config)
}

/// Chooses what the config file at `path` sets and nothing before it did, of the settings
/// `command` takes.
fn from_file<'a>(
    command: &'a clap::Command,
    found: &ArgMatches,
    path: &Path,
    chosen: &mut Chosen<'a>,
) -> Result<(), clap::Error> {
    for (key, value) in read_config(path)? {
        let Some(arg) = setting(command, &key) else {
            if setting_names().iter().any(|name| name == key.as_str()) {
                // A setting of `mount` that this subcommand has no use for.
                continue;
            }
            return Err(usage_error(
                ErrorKind::UnknownArgument,
                format!(
                    "unknown key '{key}' in config file {}; the keys are: {}",
                    path.display(),
                    names()
                ),
            ));
        };
        let explicit = matches!(
            found.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if explicit || chosen.iter().any(|(seen, _)| seen.get_id() == arg.get_id()) {
            continue;
        }
        let origin = format!("'{key}' in config file {}", path.display());
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let values = match value {
            toml::Value::Array(values) if repeatable => values,
            toml::Value::Array(_) => {
                return Err(usage_error(
                    ErrorKind::InvalidValue,
                    format!("{origin} takes one value, not a list"),
                ))
            }
            value => vec![value],
        };
        for value in values {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.to_string()
                }
                _ => {
                    return Err(usage_error(
                        ErrorKind::InvalidValue,
                        format!("{origin}: expected a string, a number or true/false"),
                    ))
                }
            };
            let flag = flag(arg, Some(&text));
            check(arg, &flag, &text, &origin)?;
            choose(chosen, arg, flag);
        }
    }
    Ok(())
}

/// Records `flag` for `arg`. A later -o option replaces an earlier one, as in mount(8), except
/// for the repeatable `ignore` and `no_default_ignore`, which add.
fn choose<'a>(chosen: &mut Chosen<'a>, arg: &'a Arg, flag: OsString) {
    match chosen
        .iter_mut()
        .find(|(seen, _)| seen.get_id() == arg.get_id())
    {
        Some((_, flags)) if matches!(arg.get_action(), ArgAction::Append) => flags.push(flag),
        Some((_, flags)) => *flags = vec![flag],
        None => chosen.push((arg, vec![flag])),
    }
}

/// The config file to read unless an `-o config=FILE` says otherwise: `--config`, else the
/// default one when it exists; none at all with `--no-config`.
fn config_file(found: &ArgMatches) -> Option<PathBuf> {
    if found.get_flag("no_config") {
        return None;
    }
    match found.get_one::<PathBuf>("config") {
        Some(path) => Some(path.clone()),
        None => default_config_file().filter(|path| path.exists()),
    }
}

fn read_config(path: &Path) -> Result<toml::Table, clap::Error> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        usage_error(
            ErrorKind::Io,
            format!("cannot read config file {}: {err}", path.display()),
        )
    })?;
    toml::from_str(&text).map_err(|err| {
        usage_error(
            ErrorKind::InvalidValue,
            format!(
                "config file {}: {}",
                path.display(),
                err.to_string().trim_end()
            ),
        )
    })
}

/// Parses `flag` alone as the final parse will, to say where a bad value came from.
fn check(arg: &Arg, flag: &OsString, value: &str, origin: &str) -> Result<(), clap::Error> {
    let probe = clap::Command::new("maxlofs")
        .no_binary_name(true)
        .arg(arg.clone());
    probe.try_get_matches_from([flag]).map(drop).map_err(|err| {
        let why = match (
            std::error::Error::source(&err),
            err.get(ContextKind::ValidValue),
        ) {
            (Some(source), _) => source.to_string(),
            (None, Some(valid)) => format!("expected one of {valid}"),
            (None, None) => err.kind().to_string(),
        };
        usage_error(
            ErrorKind::InvalidValue,
            format!("invalid value '{value}' for {origin}: {why}"),
        )
    })
}

fn needs_value(name: &str) -> clap::Error {
    usage_error(
        ErrorKind::InvalidValue,
        format!("-o {name} needs a value: -o {name}=VALUE"),
    )
}

/// An error for a subcommand's usage; `parse` adds the usage itself.
fn usage_error(kind: ErrorKind, message: String) -> clap::Error {
    clap::Error::raw(kind, message)
}

/// Relative paths are made absolute against the current directory, so that they mean the same
/// to the daemon, which runs in `/`.
fn make_paths_absolute(args: &mut MountArgs) -> std::io::Result<()> {
    let optional = [
        &mut args.device_key_file,
        &mut args.user_key_file,
        &mut args.state_dir,
        &mut args.log_file,
    ];
    let paths = [&mut args.backing, &mut args.mountpoint]
        .into_iter()
        .chain(optional.into_iter().flatten());
    for path in paths {
        *path = std::path::absolute(&*path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_args(argv: &[&str]) -> MountArgs {
        let argv = ["maxlofs", "mount", "--no-config"].iter().chain(argv);
        match parse(argv).unwrap().command {
            Command::Mount(mount) => mount.settings,
            other => panic!("not a mount: {other:?}"),
        }
    }

    #[test]
    fn command_line_parses_back_to_the_same_settings() {
        let args = mount_args(&[
            "/b",
            "/m",
            "--read-only",
            "--grant=photos",
            "--prefix=",
            "--ignore=*.tmp",
            "--ignore=*.{a,b}",
            "--no-default-ignore=trash",
            "--no-default-ignore=rsync-temp",
            "--settle-ms=7",
            "--log-level=debug",
            "--state-dir=/s",
        ]);
        let line = command_line(&args).unwrap();
        let again = match parse(["maxlofs".into()].into_iter().chain(line))
            .unwrap()
            .command
        {
            Command::Mount(mount) => mount.settings,
            other => panic!("not a mount: {other:?}"),
        };
        assert_eq!(again, args);
    }

    #[test]
    fn ignored_and_renamed_mount_options() {
        assert_eq!(mount_option("ro"), Some(("read_only", Some("true"))));
        assert_eq!(mount_option("settle_ms=5"), Some(("settle_ms", Some("5"))));
        assert_eq!(
            mount_option("api=http://h/?a=b"),
            Some(("api", Some("http://h/?a=b")))
        );
        for ignored in [
            "rw",
            "",
            "x-systemd.automount",
            "x-systemd.requires=a.service",
            "comment=x",
        ] {
            assert_eq!(mount_option(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn relative_paths_become_absolute() {
        let args = mount_args(&["b", "m", "--device-key-file=k"]);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(args.backing, cwd.join("b"));
        assert_eq!(args.device_key_file, Some(cwd.join("k")));
        assert_eq!(args.state_dir, None);
    }
}
