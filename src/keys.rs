//! Where the device and user keys come from: files (re-read when they change) or the
//! environment. Every command that calls the service loads its keys here.

use anyhow::{bail, Context};
use maxlofs_api::{Keys, SecretKey};
use std::path::{Path, PathBuf};

/// Where the keys come from: files (re-read when they change) or the environment.
#[derive(Clone)]
pub struct KeySource {
    device_file: Option<PathBuf>,
    user_file: Option<PathBuf>,
}

const DEVICE_KEY_ENV: &str = "MAXLO_DEVICE_SESSION_KEY";
const USER_KEY_ENV: &str = "MAXLO_USER_SESSION_KEY";

fn read_key(file: Option<&Path>, env: &str, what: &str) -> anyhow::Result<Option<SecretKey>> {
    let value = match file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the {what} key file {}", file.display()))?,
        None => match std::env::var(env) {
            Ok(value) => value,
            Err(_) => return Ok(None),
        },
    };
    let value = value.trim();
    if value.is_empty() {
        bail!("the {what} key is empty");
    }
    Ok(Some(SecretKey::new(value)))
}

impl KeySource {
    pub fn new(device_file: Option<PathBuf>, user_file: Option<PathBuf>) -> Self {
        KeySource {
            device_file,
            user_file,
        }
    }

    pub fn load(&self) -> anyhow::Result<Keys> {
        let device = read_key(self.device_file.as_deref(), DEVICE_KEY_ENV, "device")?
            .with_context(|| {
                format!("no device key: pass --device-key-file FILE or set {DEVICE_KEY_ENV}")
            })?;
        let user = read_key(self.user_file.as_deref(), USER_KEY_ENV, "user")?;
        Ok(Keys { device, user })
    }
}
