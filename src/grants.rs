//! Media grants: `maxlofs grants` lists those a device key can see, and `resolve_grant` turns the
//! `--grant` of a mount (an id or a grant name) into the grant's id and prefix_path.

use anyhow::{bail, Context};
use serde::Serialize;

use crate::args::GrantsArgs;
use crate::keys::KeySource;
use maxlofs_api::http::{HttpApi, Timeouts};
use maxlofs_api::{ApiError, GrantId, MediaApi, MediaGrant, MediaGrantList};

/// What `maxlofs grants --json` prints.
#[derive(Serialize)]
struct Listing<'a> {
    device_disabled: bool,
    grants: Vec<GrantRow<'a>>,
}

/// What `maxlofs grants` shows of a grant (never its volume_encryption_key).
#[derive(Serialize)]
struct GrantRow<'a> {
    id: &'a str,
    name: &'a str,
    prefix_path: &'a str,
    disabled: bool,
}

pub fn run(args: &GrantsArgs) -> anyhow::Result<()> {
    let keys = KeySource::new(args.device_key_file.clone(), None).load()?;
    let api = HttpApi::new(&args.api, keys, Timeouts::interactive())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let list = runtime.block_on(list_grants(&api))?;
    let rows: Vec<GrantRow> = list
        .media_grant_list
        .iter()
        .map(|grant| GrantRow {
            id: &grant.media_grant_id,
            name: &grant.grant_name,
            prefix_path: &grant.prefix_path,
            disabled: grant.is_disabled,
        })
        .collect();
    if args.json {
        let listing = Listing {
            device_disabled: list.is_device_disabled,
            grants: rows,
        };
        println!("{}", serde_json::to_string(&listing)?);
        return Ok(());
    }
    if list.is_device_disabled {
        println!("this device is disabled: no grant can be mounted");
    }
    // The service's text, shown escaped (no control sequence reaches the terminal); each column
    // as wide as its header or its widest value.
    use crate::output::escaped;
    let shown: Vec<[String; 3]> = rows
        .iter()
        .map(|r| [escaped(r.id), escaped(r.name), escaped(r.prefix_path)])
        .collect();
    let width = |header: &str, column: usize| {
        shown
            .iter()
            .map(|r| r[column].chars().count())
            .fold(header.len(), usize::max)
    };
    let (id_width, name_width, prefix_width) =
        (width("ID", 0), width("NAME", 1), width("PREFIX", 2));
    println!(
        "{:id_width$}  {:name_width$}  {:prefix_width$}  DISABLED",
        "ID", "NAME", "PREFIX"
    );
    for (row, [id, name, prefix]) in rows.iter().zip(&shown) {
        let disabled = if row.disabled { "yes" } else { "no" };
        println!("{id:id_width$}  {name:name_width$}  {prefix:prefix_width$}  {disabled}");
    }
    Ok(())
}

/// The grant `wanted` names, as `(id, prefix_path)`: a number is a grant id, anything else a
/// grant_name. Errors from the service keep their `ApiError` (`err.downcast_ref::<ApiError>()`).
pub async fn resolve_grant(api: &dyn MediaApi, wanted: &str) -> anyhow::Result<(GrantId, String)> {
    let (id, grant) = grant_in(&list_grants(api).await?, wanted)?;
    Ok((id, grant.prefix_path))
}

/// The grant `wanted` names in `list` (see `resolve_grant`), with its whole record (its
/// encryption key, for one). A disabled device or grant, or a name that matches nothing or
/// several grants, is an error that says what the device sees.
pub fn grant_in(list: &MediaGrantList, wanted: &str) -> anyhow::Result<(GrantId, MediaGrant)> {
    if list.is_device_disabled {
        bail!("this device is disabled");
    }
    let by_id = wanted.parse::<GrantId>().ok();
    let matching: Vec<&MediaGrant> = list
        .media_grant_list
        .iter()
        .filter(|grant| match by_id {
            Some(id) => grant.media_grant_id.parse() == Ok(id),
            None => grant.grant_name == wanted,
        })
        .collect();
    let seen = || -> String {
        if list.media_grant_list.is_empty() {
            return "it sees no grant".into();
        }
        let grants: Vec<String> = list
            .media_grant_list
            .iter()
            .map(|grant| format!("{} ({})", grant.media_grant_id, grant.grant_name))
            .collect();
        format!("it sees: {}", grants.join(", "))
    };
    let grant = match matching[..] {
        [grant] => grant,
        [] => bail!("grant {wanted} is not one this device can see; {}", seen()),
        _ => bail!("several grants are named {wanted}: give the id; {}", seen()),
    };
    if grant.is_disabled {
        bail!(
            "grant {} ({:?}) is disabled",
            grant.media_grant_id,
            grant.grant_name
        );
    }
    let id = grant.media_grant_id.parse().with_context(|| {
        format!(
            "the service gave grant {:?} an id that is not a number",
            grant.grant_name
        )
    })?;
    Ok((id, grant.clone()))
}

/// The media_path prefix of a mount: the grant's prefix_path, then the mount's own `--prefix`.
pub fn join_prefix(grant_prefix: &str, prefix: &str) -> String {
    let parts: Vec<&str> = [grant_prefix, prefix]
        .iter()
        .map(|part| part.trim_matches('/'))
        .filter(|part| !part.is_empty())
        .collect();
    parts.join("/")
}

async fn list_grants(api: &dyn MediaApi) -> anyhow::Result<MediaGrantList> {
    api.media_grants().await.map_err(listing_failed)
}

/// The error for a failed `media_grants` call, saying what failed; the `ApiError` is kept.
pub fn listing_failed(err: ApiError) -> anyhow::Error {
    let what = match err {
        ApiError::Unauthorized => "the service refused the device key",
        _ => "listing media grants",
    };
    anyhow::Error::new(err).context(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxlofs_api::{CreateOutcome, DeviceInfo, MediaId, MediaState, NewMedia};
    use maxlofs_api::{Keys, SecretKey};
    use maxlofs_emulator::memory::MemoryApi;
    use maxlofs_emulator::store::StoreConfig;

    /// Answers `media_grants` with a fixed list; no other call is made by `resolve_grant`.
    struct Grants(MediaGrantList);

    #[async_trait::async_trait]
    impl MediaApi for Grants {
        async fn media_grants(&self) -> Result<MediaGrantList, ApiError> {
            Ok(self.0.clone())
        }
        async fn create(&self, _: GrantId, _: &NewMedia) -> Result<CreateOutcome, ApiError> {
            unreachable!()
        }
        async fn update(&self, _: GrantId, _: MediaId, _: &MediaState) -> Result<(), ApiError> {
            unreachable!()
        }
        async fn delete(&self, _: GrantId, _: MediaId) -> Result<(), ApiError> {
            unreachable!()
        }
        async fn current_device(&self) -> Result<DeviceInfo, ApiError> {
            unreachable!()
        }
        fn set_keys(&self, _: Keys) {
            unreachable!()
        }
    }

    fn grant(id: &str, name: &str, prefix_path: &str, is_disabled: bool) -> MediaGrant {
        MediaGrant {
            media_grant_id: id.into(),
            grant_name: name.into(),
            volume_id: 1,
            prefix_path: prefix_path.into(),
            is_disabled,
            volume_encryption_key: None,
        }
    }

    fn service(is_device_disabled: bool) -> Grants {
        Grants(MediaGrantList {
            is_device_disabled,
            media_grant_list: vec![
                grant("1", "family", "", false),
                grant("7", "photos", "/volumes/photos/", false),
                grant("9", "old", "", true),
                grant("10", "twin", "", false),
                grant("11", "twin", "", false),
            ],
        })
    }

    async fn error(api: &dyn MediaApi, wanted: &str) -> String {
        format!("{:#}", resolve_grant(api, wanted).await.unwrap_err())
    }

    #[tokio::test]
    async fn resolves_ids_and_names_against_the_memory_api() {
        let config = StoreConfig {
            grants: vec![1, 7],
            ..StoreConfig::default()
        };
        let keys = Keys {
            device: SecretKey::new(&config.device_keys[0]),
            user: None,
        };
        let api = MemoryApi::new(config, keys);
        assert_eq!(resolve_grant(&api, "7").await.unwrap(), (7, String::new()));
        assert_eq!(
            resolve_grant(&api, "grant-7").await.unwrap(),
            (7, String::new())
        );
        let err = error(&api, "nope").await;
        assert!(err.contains("it sees: 1 (grant-1), 7 (grant-7)"), "{err}");

        api.revoke_keys();
        let err = resolve_grant(&api, "1").await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<ApiError>(),
            Some(&ApiError::Unauthorized)
        );
        assert!(
            format!("{err:#}").contains("refused the device key"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn gives_the_prefix_path_and_refuses_what_cannot_be_mounted() {
        let api = service(false);
        assert_eq!(
            resolve_grant(&api, "photos").await.unwrap(),
            (7, "/volumes/photos/".to_string())
        );
        assert_eq!(resolve_grant(&api, "1").await.unwrap(), (1, String::new()));
        assert!(error(&api, "old")
            .await
            .contains("grant 9 (\"old\") is disabled"));
        assert!(error(&api, "twin").await.contains("several grants"));
        assert_eq!(resolve_grant(&api, "10").await.unwrap().0, 10);
        assert!(error(&api, "2")
            .await
            .contains("is not one this device can see"));
        assert_eq!(error(&service(true), "1").await, "this device is disabled");
        assert!(error(
            &Grants(MediaGrantList {
                is_device_disabled: false,
                media_grant_list: vec![]
            }),
            "1"
        )
        .await
        .contains("it sees no grant"));
    }

    #[test]
    fn the_grant_prefix_comes_before_the_mount_prefix() {
        assert_eq!(join_prefix("", ""), "");
        assert_eq!(join_prefix("/volumes/photos/", ""), "volumes/photos");
        assert_eq!(join_prefix("", "/2026/"), "2026");
        assert_eq!(join_prefix("volumes/photos", "2026"), "volumes/photos/2026");
    }
}
