//! Tampering: moved, swapped or edited ciphertexts, deleted or reactivated entries,
//! unknown fields, a rolled-back file and its sidecar.

use super::*;

#[test]
fn ciphertext_moved_to_another_tenant_fails_to_decrypt() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| {
        doc["entries"][0]["tenant"] = "intruder".into()
    })?;
    testing::reseal(&fx.path, &fx.key)?;
    let err = open_err(&fx.path, &fx.key);
    assert_bad_entry(&err, "intruder", "prod", "decryption failed");
    Ok(())
}

#[test]
fn ciphertext_moved_to_another_key_id_or_version_fails_to_decrypt() -> TestResult {
    for (field, value) in [
        ("key_id", Value::from("backup")),
        ("provider", Value::from("groq")),
        ("version", Value::from(9)),
    ] {
        let (fx, _) = fixture()?;
        edit_json(&fx.path, |doc| doc["entries"][0][field] = value.clone())?;
        testing::reseal(&fx.path, &fx.key)?;
        let err = open_err(&fx.path, &fx.key);
        let key_id = if field == "key_id" { "backup" } else { "prod" };
        assert_bad_entry(&err, "acme", key_id, "decryption failed");
    }
    Ok(())
}

#[test]
fn ciphertexts_swapped_between_tenants_fail_to_decrypt() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| {
        let a = doc["entries"][0]["ciphertext"].take();
        let b = doc["entries"][1]["ciphertext"].take();
        doc["entries"][0]["ciphertext"] = b;
        doc["entries"][1]["ciphertext"] = a;
        let a = doc["entries"][0]["nonce"].take();
        let b = doc["entries"][1]["nonce"].take();
        doc["entries"][0]["nonce"] = b;
        doc["entries"][1]["nonce"] = a;
    })?;
    testing::reseal(&fx.path, &fx.key)?;
    assert_bad_entry(
        &open_err(&fx.path, &fx.key),
        "acme",
        "prod",
        "decryption failed",
    );
    Ok(())
}

#[test]
fn tampered_nonce_fails_to_decrypt() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| flip_bit(&mut doc["entries"][1]["nonce"]))?;
    testing::reseal(&fx.path, &fx.key)?;
    assert_bad_entry(
        &open_err(&fx.path, &fx.key),
        "globex",
        "main",
        "decryption failed",
    );
    Ok(())
}

#[test]
fn tampered_ciphertext_fails_to_decrypt() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| {
        flip_bit(&mut doc["entries"][2]["ciphertext"])
    })?;
    testing::reseal(&fx.path, &fx.key)?;
    assert_bad_entry(
        &open_err(&fx.path, &fx.key),
        "acme",
        "prod",
        "decryption failed",
    );
    Ok(())
}

#[test]
fn nonce_of_wrong_length_is_refused() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| {
        doc["entries"][0]["nonce"] = STANDARD.encode([0u8; 16]).into();
    })?;
    testing::reseal(&fx.path, &fx.key)?;
    assert_bad_entry(&open_err(&fx.path, &fx.key), "acme", "prod", "not 12 bytes");
    Ok(())
}

#[test]
fn edited_entry_without_a_new_hmac_fails_the_integrity_check() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| {
        flip_bit(&mut doc["entries"][0]["ciphertext"])
    })?;
    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::WrongMasterKey { .. }
    ));
    Ok(())
}

#[test]
fn deleted_entry_is_detected() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| {
        doc["entries"]
            .as_array_mut()
            .expect("entries array")
            .remove(1);
    })?;
    let err = open_err(&fx.path, &fx.key);
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err:?}");
    assert!(err.to_string().contains("tampered file"));
    Ok(())
}

#[test]
fn reactivated_entry_is_detected() -> TestResult {
    let (fx, mut vault) = fixture()?;
    vault.rm("acme", "openai", "prod")?;
    edit_json(&fx.path, |doc| doc["entries"][0]["active"] = true.into())?;
    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::WrongMasterKey { .. }
    ));
    Ok(())
}

#[test]
fn unknown_field_is_refused() -> TestResult {
    let (fx, _) = fixture()?;
    edit_json(&fx.path, |doc| doc["entries"][0]["note"] = "hi".into())?;
    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::Malformed { .. }
    ));
    Ok(())
}

#[test]
fn rolled_back_file_is_refused() -> TestResult {
    let (fx, mut vault) = fixture()?;
    let copy = std::fs::read(&fx.path)?;
    let before = vault.generation();
    assert_eq!(vault.rm("acme", "openai", "prod")?, 1);
    std::fs::write(&fx.path, &copy)?;
    match open_err(&fx.path, &fx.key) {
        VaultError::RolledBack {
            found,
            expected_at_least,
            ..
        } => {
            assert_eq!(found, before);
            assert_eq!(expected_at_least, before + 1);
        }
        other => panic!("expected RolledBack, got {other:?}"),
    }
    Ok(())
}

#[test]
fn missing_sidecar_is_accepted_and_then_written() -> TestResult {
    let (fx, vault) = fixture()?;
    let sidecar = Vault::sidecar_path(&fx.path);
    let copy = std::fs::read(&fx.path)?;
    drop(vault);
    std::fs::remove_file(&sidecar)?;
    let mut vault = Vault::open(&fx.path, &fx.key)?;
    assert!(sidecar.exists(), "open must write the sidecar");
    // From now on the old copy is refused again.
    vault.rm("acme", "openai", "prod")?;
    std::fs::write(&fx.path, &copy)?;
    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::RolledBack { .. }
    ));
    Ok(())
}

#[test]
fn open_raises_a_lagging_sidecar() -> TestResult {
    let (fx, mut vault) = fixture()?;
    let sidecar = Vault::sidecar_path(&fx.path);
    let old_sidecar = std::fs::read(&sidecar)?;
    let old_file = std::fs::read(&fx.path)?;
    vault.rm("acme", "openai", "prod")?;
    // As if the process died between writing the vault and writing the sidecar.
    std::fs::write(&sidecar, &old_sidecar)?;
    Vault::open(&fx.path, &fx.key)?;
    std::fs::write(&fx.path, &old_file)?;
    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::RolledBack { .. }
    ));
    Ok(())
}

#[test]
fn edited_sidecar_is_refused() -> TestResult {
    let (fx, vault) = fixture()?;
    let sidecar = Vault::sidecar_path(&fx.path);
    let generation = vault.generation();
    let text = std::fs::read_to_string(&sidecar)?;
    let edited = text.replace(&format!("\"generation\":{generation}"), "\"generation\":1");
    assert_ne!(text, edited);
    std::fs::write(&sidecar, edited)?;
    assert!(matches!(
        open_err(&fx.path, &fx.key),
        VaultError::SidecarUnverified { .. }
    ));
    Ok(())
}
