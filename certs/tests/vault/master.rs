//! Master keys, rotation, and no secret in listings, `Debug` or error messages.

use super::*;

#[test]
fn wrong_master_key_gives_a_clear_error() -> TestResult {
    let (fx, _) = fixture()?;
    let err = open_err(&fx.path, &MasterKey::generate());
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("wrong master key"), "{msg}");
    assert!(msg.contains("PORTCULLIS_MASTER_KEY"), "{msg}");
    Ok(())
}

#[test]
fn missing_master_key_names_the_env_var() {
    let err = MasterKey::from_env_or_file(None, None).expect_err("no key given");
    assert!(matches!(err, VaultError::NoMasterKey));
    let msg = err.to_string();
    assert!(msg.contains("PORTCULLIS_MASTER_KEY"), "{msg}");
    assert!(msg.contains("--master-key-file"), "{msg}");
    assert_eq!(portcullis_certs::MASTER_KEY_ENV, "PORTCULLIS_MASTER_KEY");
}

#[test]
fn master_key_of_wrong_length_is_refused() {
    for len in [0usize, 16, 31, 33, 64] {
        let text = STANDARD.encode(vec![7u8; len]);
        let err = MasterKey::from_base64(&text).expect_err("wrong length");
        assert!(
            matches!(err, VaultError::BadMasterKey { .. }),
            "{len}: {err:?}"
        );
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }
    for text in ["not base64 at all!", "AAAA AAAA", "-_-_"] {
        assert!(matches!(
            MasterKey::from_base64(text),
            Err(VaultError::BadMasterKey { .. })
        ));
    }
    assert!(MasterKey::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
}

#[test]
fn master_key_file_round_trips_and_must_be_private() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("master.key");
    let key = MasterKey::generate();
    std::fs::write(&file, format!("{}\n", key.to_base64().as_str()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;

    let vault_path = dir.path().join("vault.json");
    Vault::create(&vault_path, &key)?;
    let from_file = MasterKey::from_env_or_file(None, Some(&file))?;
    Vault::open(&vault_path, &from_file)?;

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640))?;
    let err = MasterKey::from_file(&file).expect_err("group-readable key file");
    assert!(
        matches!(err, VaultError::InsecureKeyFile { mode: 0o640, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"));
    Ok(())
}

#[test]
fn rotate_master_round_trips_every_key() -> TestResult {
    let (fx, mut vault) = fixture()?;
    vault.rm("globex", "anthropic", "main")?;
    let before = std::fs::read_to_string(&fx.path)?;
    let new_key = MasterKey::generate();
    vault.rotate_master(&new_key)?;

    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::WrongMasterKey { .. }
    ));
    let reopened = Vault::open(&fx.path, &new_key)?;
    assert_eq!(reopened.list(), vault.list());
    let old: Vec<_> = vault.values().collect();
    let new: Vec<_> = reopened.values().collect();
    assert_eq!(old, new);
    assert_eq!(new.len(), 4);
    let (secret, _) = reopened.get("acme", "openai").expect("openai key");
    assert!(*secret == Secret::api_key(OPENAI_KEY));
    let (secret, _) = reopened.get("acme", "bedrock").expect("aws key");
    assert!(*secret == Secret::aws(AWS_ID, AWS_SECRET, Some(AWS_TOKEN.into())));

    // Every nonce is fresh.
    let nonces = |text: &str| -> Vec<String> {
        let doc: Value = serde_json::from_str(text).expect("json");
        doc["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["nonce"].as_str().expect("nonce").to_owned())
            .collect()
    };
    let after = std::fs::read_to_string(&fx.path)?;
    for (a, b) in nonces(&before).iter().zip(nonces(&after).iter()) {
        assert_ne!(a, b);
    }
    Ok(())
}

#[test]
fn list_shows_only_last4() -> TestResult {
    let (_fx, vault) = fixture()?;
    let list = vault.list();
    assert_eq!(list.len(), 3);
    let openai = list
        .iter()
        .find(|e| e.provider == "openai")
        .expect("openai");
    assert_eq!(openai.last4, "…WXYZ");
    assert_eq!(openai.kind, SecretKind::ApiKey);
    assert_eq!(openai.kind.as_str(), "api_key");
    let aws = list.iter().find(|e| e.provider == "bedrock").expect("aws");
    assert_eq!(aws.last4, "…PLE1");
    assert_eq!(aws.kind.as_str(), "aws");
    let shown = format!("{list:?}");
    for secret in [
        OPENAI_KEY,
        ANTHROPIC_KEY,
        AWS_SECRET,
        AWS_TOKEN,
        &OPENAI_KEY[..10],
    ] {
        assert!(!shown.contains(secret), "list shows {secret}");
    }
    Ok(())
}

#[test]
fn get_returns_the_newest_active_version_of_the_slot() -> TestResult {
    let (fx, mut vault) = fixture()?;
    let (_, id) = vault.get("acme", "openai").expect("key");
    assert_eq!(id.to_string(), "openai/prod@v1");

    let v2 = vault.put(
        "acme",
        "openai",
        "next",
        Secret::api_key("sk-proj-TESTONLY-second-key"),
    )?;
    assert_eq!(v2, 2);
    let (secret, id) = vault.get("acme", "openai").expect("key");
    assert_eq!(id.to_string(), "openai/next@v2");
    assert!(*secret == Secret::api_key("sk-proj-TESTONLY-second-key"));

    // Removing the newest label falls back to the older one, which is still active.
    assert_eq!(vault.rm("acme", "openai", "next")?, 1);
    let (_, id) = vault.get("acme", "openai").expect("key");
    assert_eq!(id.to_string(), "openai/prod@v1");

    // Version numbers are never reused, even after a removal.
    assert_eq!(
        vault.put(
            "acme",
            "openai",
            "next",
            Secret::api_key("sk-proj-TESTONLY-third")
        )?,
        3
    );

    assert!(
        vault.get("globex", "openai").is_none(),
        "no cross-tenant lookup"
    );
    assert!(vault.get("acme", "anthropic").is_none());
    vault.rm("acme", "openai", "prod")?;
    vault.rm("acme", "openai", "next")?;
    assert!(vault.get("acme", "openai").is_none());

    let reopened = Vault::open(&fx.path, &fx.key)?;
    assert!(reopened.get("acme", "openai").is_none());
    assert_eq!(
        reopened
            .list()
            .iter()
            .filter(|e| e.provider == "openai")
            .count(),
        3
    );
    Ok(())
}

#[test]
fn rm_of_an_unknown_key_is_an_error() -> TestResult {
    let (_fx, mut vault) = fixture()?;
    let err = vault.rm("acme", "openai", "nope").expect_err("unknown key");
    assert!(matches!(err, VaultError::NoSuchKey { .. }));
    assert!(err.to_string().contains("vault list"));
    assert_eq!(vault.rm("acme", "openai", "prod")?, 1);
    assert_eq!(vault.rm("acme", "openai", "prod")?, 0);
    Ok(())
}

#[test]
fn generation_increments_on_every_save() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vault.json");
    let key = MasterKey::generate();
    let mut vault = Vault::create(&path, &key)?;
    assert_eq!(vault.generation(), 1);
    vault.put("acme", "openai", "prod", Secret::api_key(OPENAI_KEY))?;
    assert_eq!(vault.generation(), 2);
    vault.rm("acme", "openai", "prod")?;
    assert_eq!(vault.generation(), 3);
    vault.rotate_master(&MasterKey::generate())?;
    assert_eq!(vault.generation(), 4);
    let doc: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    assert_eq!(doc["generation"], 4);
    assert_eq!(doc["version"], 1);
    Ok(())
}

#[test]
fn create_refuses_to_overwrite() -> TestResult {
    let (fx, _) = fixture()?;
    let err = Vault::create(&fx.path, &fx.key).expect_err("exists");
    assert!(matches!(err, VaultError::AlreadyExists { .. }));
    // A sidecar alone also blocks it: starting again at generation 1 would look like a rollback.
    std::fs::remove_file(&fx.path)?;
    let err = Vault::create(&fx.path, &fx.key).expect_err("sidecar exists");
    assert!(
        matches!(err, VaultError::AlreadyExists { path } if path == Vault::sidecar_path(&fx.path))
    );
    Ok(())
}

#[test]
fn values_yield_api_keys_and_aws_secrets() -> TestResult {
    let (_fx, mut vault) = fixture()?;
    vault.rm("globex", "anthropic", "main")?;
    let values: Vec<(&str, &str, &str, &[u8])> = vault.values().collect();
    assert!(values.contains(&("acme", "openai", "prod", OPENAI_KEY.as_bytes())));
    // Removed keys are still scanned for.
    assert!(values.contains(&("globex", "anthropic", "main", ANTHROPIC_KEY.as_bytes())));
    assert!(values.contains(&("acme", "bedrock", "prod", AWS_SECRET.as_bytes())));
    assert!(values.contains(&("acme", "bedrock", "prod", AWS_TOKEN.as_bytes())));
    assert_eq!(values.len(), 4);
    Ok(())
}

#[test]
fn vault_file_and_sidecar_are_mode_0600() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let (fx, mut vault) = fixture()?;
    let mode =
        |p: &Path| -> u32 { std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777 };
    let sidecar = Vault::sidecar_path(&fx.path);
    assert_eq!(mode(&fx.path), 0o600);
    assert_eq!(mode(&sidecar), 0o600);
    vault.rotate_master(&MasterKey::generate())?;
    assert_eq!(mode(&fx.path), 0o600);
    assert_eq!(mode(&sidecar), 0o600);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(fx.path.parent().expect("dir"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names.len(), 2, "{names:?}");
    Ok(())
}

#[test]
fn vault_file_never_holds_a_plaintext_secret() -> TestResult {
    let (fx, _) = fixture()?;
    let text = std::fs::read_to_string(&fx.path)?;
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, AWS_SECRET, AWS_TOKEN] {
        assert!(!text.contains(secret));
        assert!(!text.contains(&STANDARD.encode(secret)));
    }
    Ok(())
}

#[test]
fn no_error_message_contains_the_secret() -> TestResult {
    let mut errors: Vec<VaultError> = Vec::new();
    let (fx, mut vault) = fixture()?;
    let master_b64 = fx.key.to_base64();

    // Master key text that is almost right, or that is a provider key.
    errors.push(MasterKey::from_base64(&master_b64[..40]).expect_err("short"));
    errors.push(MasterKey::from_base64(OPENAI_KEY).expect_err("not a master key"));
    // A secret (plus a character no name may have) passed where a name belongs.
    let not_a_name = format!("{OPENAI_KEY}/oops");
    errors.push(
        vault
            .put("acme", &not_a_name, "prod", Secret::api_key("x"))
            .expect_err("bad name"),
    );
    errors.push(
        vault
            .put("acme", "openai", &not_a_name, Secret::api_key("x"))
            .expect_err("bad name"),
    );
    errors.push(
        vault
            .rm(&not_a_name, "openai", "prod")
            .expect_err("bad key id"),
    );
    errors.push(
        vault
            .put(
                "acme",
                "bedrock",
                "x",
                Secret::aws(AWS_ID, AWS_SECRET, Some(String::new())),
            )
            .expect_err("empty token"),
    );
    errors.push(Vault::create(&fx.path, &fx.key).expect_err("exists"));
    // Key files holding a provider key, privately and not.
    {
        use std::os::unix::fs::PermissionsExt;
        let file = fx.path.with_file_name("master.key");
        std::fs::write(&file, OPENAI_KEY)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        errors.push(MasterKey::from_file(&file).expect_err("not a master key"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        errors.push(MasterKey::from_file(&file).expect_err("readable by others"));
        std::fs::remove_file(&file)?;
    }
    errors.push(open_err(&fx.path, &MasterKey::generate()));
    drop(vault);

    // Tampered entries, one per secret.
    for i in 0..3 {
        let copy = std::fs::read(&fx.path)?;
        edit_json(&fx.path, |doc| {
            flip_bit(&mut doc["entries"][i]["ciphertext"])
        })?;
        testing::reseal(&fx.path, &fx.key)?;
        errors.push(open_err(&fx.path, &fx.key));
        std::fs::write(&fx.path, copy)?;
    }
    // A mangled file that quotes a secret in the wrong place.
    let copy = std::fs::read(&fx.path)?;
    edit_json(&fx.path, |doc| doc["generation"] = OPENAI_KEY.into())?;
    errors.push(open_err(&fx.path, &fx.key));
    std::fs::write(&fx.path, copy)?;
    // Rolled back.
    let copy = std::fs::read(&fx.path)?;
    Vault::open(&fx.path, &fx.key)?.rm("acme", "openai", "prod")?;
    std::fs::write(&fx.path, copy)?;
    errors.push(open_err(&fx.path, &fx.key));

    assert_eq!(errors.len(), 15, "every error path above failed");
    for err in &errors {
        let shown = format!("{err} / {err:?}");
        for secret in [
            OPENAI_KEY,
            ANTHROPIC_KEY,
            AWS_SECRET,
            AWS_TOKEN,
            master_b64.as_str(),
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(!shown.contains(&master_b64[..40]), "{shown}");
    }
    Ok(())
}

#[test]
fn debug_never_shows_a_secret() -> TestResult {
    let (fx, vault) = fixture()?;
    let master_b64 = fx.key.to_base64();
    let (openai, id) = vault.get("acme", "openai").expect("key");
    let (aws, _) = vault.get("acme", "bedrock").expect("key");
    let shown = format!("{vault:?} {openai:?} {aws:?} {:?} {id:?} {id}", fx.key);
    for secret in [
        OPENAI_KEY,
        ANTHROPIC_KEY,
        AWS_ID,
        AWS_SECRET,
        AWS_TOKEN,
        master_b64.as_str(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("redacted"), "{shown}");
    Ok(())
}

#[test]
fn webhook_subkeys_are_stable_and_distinct_per_name() -> TestResult {
    let key = MasterKey::generate();
    let same = MasterKey::from_base64(&key.to_base64())?;
    assert_eq!(
        key.webhook_subkey("ops")[..],
        same.webhook_subkey("ops")[..]
    );
    assert_ne!(
        key.webhook_subkey("ops")[..],
        key.webhook_subkey("audit")[..]
    );
    Ok(())
}
