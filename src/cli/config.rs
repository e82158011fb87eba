//! The config keys as flags: every key of `TrainConfig` is a flag of each subcommand that trains
//! or plans (`--max-steps 3`, `--max_steps=3`), with its doc comment as help and its default
//! shown; booleans also stand alone (`--padded`, `--padded false`). clap checks each value's type
//! (`--lr abc` is a usage error naming `--lr`); the given keys then go over the TOML file and the
//! defaults through the library's own `TrainConfig::load_table`, as the string overrides of the
//! library do.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use gradscope::train::TrainConfig;
use gradscope::train::config::{ConfigError, ModelKind, NANOGPT_ALIASES, default_table, model_in, override_value, read_file};

const CONFIG_FILE: &str = "config";

/// The heading of nanoGPT's names in `--help`.
const ALIAS_HEADING: &str = "nanoGPT's names for config keys (--batch-size 12 = --micro-batch 12)";

/// The heading of the config keys in `--help`.
const HEADING: &str = "Config keys (defaults, then --config FILE, then these; `--max-steps` = `--max_steps`)";

/// A config file and the config keys given on the command line.
#[derive(Clone, Debug, Default)]
pub struct ConfigFlags {
    /// `--config FILE`: TOML with config keys.
    pub file: Option<PathBuf>,
    /// The keys given as flags, with their text as typed (in key order).
    pub given: Vec<(String, String)>,
}

impl ConfigFlags {
    /// The given keys as a table of typed values.
    pub fn table(&self) -> toml::Table {
        self.given.iter().map(|(k, v)| (k.clone(), override_value(k, v))).collect()
    }

    /// The given keys as the library's `--key=value` overrides.
    pub fn overrides(&self) -> Vec<String> {
        self.given.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }

    /// Defaults, then the file, then the flags.
    pub fn load(&self) -> Result<TrainConfig, ConfigError> {
        TrainConfig::load_table(self.file.as_deref(), self.table())
    }

    /// Defaults, then a command's `profile`, then the file, then the flags.
    pub fn load_over(&self, profile: toml::Table) -> Result<TrainConfig, ConfigError> {
        TrainConfig::load_layers(profile, self.file.as_deref(), self.table())
    }

    /// The model that the file and the flags select.
    pub fn model(&self) -> Result<ModelKind, ConfigError> {
        let mut table = self.file.as_deref().map(read_file).transpose()?.unwrap_or_default();
        table.extend(self.table());
        model_in(&table)
    }

    /// The file and the keys as flags that `gradscope` accepts again, with `set` replacing or
    /// adding keys (for `plan`'s suggested command).
    pub fn command_line(&self, set: &[(&str, String)]) -> Vec<String> {
        let mut given = self.given.clone();
        for (key, text) in set {
            match given.iter_mut().find(|(k, _)| k == key) {
                Some(g) => g.1 = text.clone(),
                None => given.push((key.to_string(), text.clone())),
            }
        }
        let file = self.file.iter().flat_map(|f| ["--config".to_string(), shell_word(&f.display().to_string())]);
        file.chain(given.iter().flat_map(|(k, v)| [format!("--{}", k.replace('_', "-")), shell_word(v)])).collect()
    }
}

/// `text` as one shell word (quoted when it holds anything but plain characters).
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) { text.to_string() } else { format!("'{}'", text.replace('\'', r"'\''")) }
}

/// One config key's flag (the derive makes each field a positional argument): `--kebab-case`,
/// not required, its default shown (and returned when absent, so `TrainConfig::from_arg_matches`
/// works too); a boolean takes an optional value.
fn key_flag(arg: Arg, default: &toml::Value) -> Arg {
    let text = match default {
        toml::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let long = arg.get_id().as_str().replace('_', "-");
    let arg = arg.long(long).required(false).help_heading(HEADING).hide_default_value(text.is_empty()).default_value(text);
    match default {
        toml::Value::Boolean(_) => arg.action(ArgAction::Set).num_args(0..=1).default_missing_value("true").require_equals(false),
        // `--seed -1` reaches the key's type check (which names it) instead of reading as a flag
        toml::Value::Integer(_) | toml::Value::Float(_) => arg.allow_negative_numbers(true),
        _ => arg,
    }
}

impl Args for ConfigFlags {
    fn augment_args(cmd: Command) -> Command {
        let defaults = default_table();
        let cmd = cmd.arg(
            Arg::new(CONFIG_FILE)
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Config file: TOML (`key = value`), or a nanoGPT-style config/*.py (`key = value` lines of Python literals and arithmetic)")
                .help_heading(HEADING)
                .display_order(0),
        );
        // in the struct's order (the derive gives positional arguments no place in the help)
        let mut order = 0;
        let cmd = TrainConfig::augment_args(cmd).mut_args(|arg| match defaults.get(arg.get_id().as_str()) {
            Some(default) => {
                order += 1;
                key_flag(arg, default).display_order(order)
            }
            None => arg,
        });
        NANOGPT_ALIASES.iter().fold(cmd, |cmd, (alias, key, meaning)| {
            let arg = Arg::new(*alias)
                .long(alias.replace('_', "-"))
                .value_name("VALUE")
                .help(format!("= --{}: {meaning}", key.replace('_', "-")))
                .help_heading(ALIAS_HEADING)
                .allow_negative_numbers(true)
                .display_order(1000);
            cmd.arg(if *alias == "decay_lr" { arg.num_args(0..=1).default_missing_value("true") } else { arg })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let keys = default_table().keys().cloned().chain(NANOGPT_ALIASES.iter().map(|a| a.0.to_string())).collect::<Vec<_>>();
        let given = keys
            .iter()
            .filter(|k| m.value_source(k) == Some(ValueSource::CommandLine))
            .filter_map(|k| {
                let text = m.get_raw(k)?.next_back()?;
                Some((k.clone(), text.to_string_lossy().into_owned()))
            })
            .collect();
        Ok(Self { file: m.get_one::<PathBuf>(CONFIG_FILE).cloned(), given })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// A command's own defaults written as TOML (e.g. `verify --quick`'s model).
pub fn profile(toml_text: &str) -> toml::Table {
    toml_text.parse().expect("a profile is valid TOML")
}

