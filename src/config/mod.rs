//! The config file, read once at start: the `[server]` [`settings`] and the views of the
//! [`registry`], from one parse of one TOML file.

pub mod access;
pub mod baseline;
pub mod changes;
pub mod current;
mod layouts;
pub mod registry;
pub mod settings;
pub mod tls;
pub mod watch;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use registry::{RawView, Registry, RegistryError};
use settings::{Settings, SettingsError};

/// A parsed and validated config file.
#[derive(Debug)]
pub struct ConfigFile {
    pub settings: Settings,
    pub registry: Registry,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{path}: invalid setting {source}")]
    Settings { path: String, source: SettingsError },
}

/// The file as TOML has it, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: Settings,
    #[serde(default)]
    view: Vec<RawView>,
}

impl ConfigFile {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &str) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.to_string(),
            source,
        })?;
        ConfigFile::from_toml(&text, path)
    }

    /// Parses and validates config TOML; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
        let raw: RawFile = parse_toml(text).map_err(|e| match e.setting() {
            Some(_) => ConfigError::Settings {
                path: origin.to_string(),
                source: e.into_settings_error(),
            },
            None => ConfigError::Registry(RegistryError::Parse {
                path: origin.to_string(),
                message: e.located,
            }),
        })?;
        Ok(ConfigFile {
            settings: raw.server,
            registry: Registry::from_views(raw.view, origin)?,
        })
    }
}

/// A TOML file that does not fit the config's shape, with where in it.
#[derive(Debug)]
pub(crate) struct ParseError {
    /// Dotted path of the offending key, e.g. `server.default_deadline` (empty at the top).
    path: String,
    /// What is wrong, in a line.
    message: String,
    /// The same with the line and column and a picture of the place.
    located: String,
}

impl ParseError {
    /// The name of the `[server]` setting at fault, if the error is in that table.
    fn setting(&self) -> Option<&str> {
        self.path.strip_prefix("server.")
    }

    fn into_settings_error(self) -> SettingsError {
        let field = self.setting().unwrap_or("server").to_string();
        SettingsError {
            field,
            message: self.message,
        }
    }
}

/// Parses TOML into `T`, keeping the path to the key that failed.
pub(crate) fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| ParseError {
        path: e.path().to_string(),
        message: e.inner().message().to_string(),
        located: e.inner().to_string(),
    })
}

/// Parses a duration setting of a view, or says what is wrong with it.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write e.g. \"500ms\", \"2m\", \"7d\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parse_gives_settings_and_views() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/features.toml"
        ))
        .unwrap();
        let with_server = format!("[server]\nmax_batch = 7\n{text}");
        let file = ConfigFile::from_toml(&with_server, "t.toml").unwrap();
        assert_eq!(file.settings.max_batch, 7);
        assert!(file.registry.by_name("user_features").is_some());
    }

    #[test]
    fn errors_say_whether_a_setting_or_a_view_is_wrong() {
        let e = ConfigFile::from_toml("[server]\nwrite_timeout = \"never\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml") && e.contains("[server] write_timeout"),
            "{e}"
        );
        let e = ConfigFile::from_toml("[[view]]\nname = 3\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML for a registry"), "{e}");
    }
}
