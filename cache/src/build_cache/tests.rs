use super::*;
use crate::oci::media_type;
use crate::registry::RegistryConfig;

fn registry() -> Registry {
    Registry::new(RegistryConfig::from_env())
}

/// A store with two uncompressed layers, and a cache naming them in two records.
fn cache_with_two_layers(dir: &Path) -> (Store, CacheContent) {
    let store = Store::open(dir.join("root")).unwrap();
    let layers: Vec<CacheLayer> = [&b"first layer"[..], b"second layer"]
        .into_iter()
        .map(|content| {
            let blob = store.write_blob(content).unwrap();
            CacheLayer {
                diff_id: blob.digest.clone(),
                blob: Descriptor::new(media_type::OCI_LAYER, blob.digest, blob.size),
            }
        })
        .collect();
    let mut builder = CacheBuilder::default();
    builder.add_record(
        Digest::of(b"key one"),
        "[s 1/2] RUN one",
        layers[..1].to_vec(),
    );
    builder.add_record(Digest::of(b"key two"), "[s 2/2] RUN two", layers.clone());
    builder.add_record(Digest::of(b"key two"), "a duplicate is dropped", Vec::new());
    (store, builder.finish())
}

#[tokio::test]
async fn directory_cache_round_trips_and_shares_layers_between_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, content) = cache_with_two_layers(dir.path());
    assert_eq!(
        content.layers.len(),
        2,
        "a layer two records name is stored once"
    );
    assert_eq!(content.config.records.len(), 2);
    let location = CacheLocation::Directory(dir.path().join("cache"));
    let manifest = export_cache(&store, &registry(), &location, content.clone(), None)
        .await
        .unwrap();
    assert_eq!(manifest.artifact_type.as_deref(), Some(ARTIFACT_TYPE));

    let imported = import_cache(&location, &store, &registry()).await.unwrap();
    assert_eq!(imported.content, content);
    let (record, layers) = imported.content.records().nth(1).unwrap();
    assert_eq!(record.name, "[s 2/2] RUN two");
    assert_eq!(layers[1].diff_id, content.config.diff_ids[1]);

    let other = Store::open(dir.path().join("other")).unwrap();
    imported.fetch_blob(&other, &layers[1].blob).await.unwrap();
    assert_eq!(
        other.read_blob(&layers[1].blob.digest).unwrap(),
        b"second layer"
    );
}

#[tokio::test]
async fn recompressed_export_keeps_diff_ids_and_changes_only_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    // An empty tar: two zero blocks.
    let tar = vec![0u8; 1024];
    let blob = store.write_blob(&tar).unwrap();
    let layer = CacheLayer {
        diff_id: blob.digest.clone(),
        blob: Descriptor::new(media_type::OCI_LAYER, blob.digest, blob.size),
    };
    let mut builder = CacheBuilder::default();
    builder.add_record(Digest::of(b"key"), "step", vec![layer.clone()]);
    let location = CacheLocation::Directory(dir.path().join("cache"));
    export_cache(
        &store,
        &registry(),
        &location,
        builder.finish(),
        Some(Compression::GZIP_DEFAULT),
    )
    .await
    .unwrap();
    let imported = import_cache(&location, &store, &registry()).await.unwrap();
    assert_eq!(imported.content.config.diff_ids, vec![layer.diff_id]);
    assert_eq!(
        imported.content.layers[0].media_type,
        media_type::OCI_LAYER_GZIP
    );
    assert_ne!(imported.content.layers[0].digest, layer.blob.digest);
}

#[tokio::test]
async fn tampered_cache_blobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, content) = cache_with_two_layers(dir.path());
    let cache_dir = dir.path().join("cache");
    let location = CacheLocation::Directory(cache_dir.clone());
    export_cache(&store, &registry(), &location, content.clone(), None)
        .await
        .unwrap();

    let layer = &content.layers[0];
    std::fs::write(
        cache_dir.join(layout_blob_path(&layer.digest)),
        b"first LAYER",
    )
    .unwrap();
    let other = Store::open(dir.path().join("other")).unwrap();
    let imported = import_cache(&location, &store, &registry()).await.unwrap();
    let error = imported.fetch_blob(&other, layer).await.unwrap_err();
    assert!(
        matches!(error, BuildCacheError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(
        !other.has_blob(&layer.digest),
        "nothing unverified is stored"
    );

    let config = import_cache(&location, &store, &registry()).await.unwrap();
    let config_digest = Digest::of(&canonical_json(&config.content.config).unwrap());
    std::fs::write(cache_dir.join(layout_blob_path(&config_digest)), b"{}").unwrap();
    let error = import_cache(&location, &store, &registry())
        .await
        .unwrap_err();
    assert!(
        matches!(error, BuildCacheError::SizeMismatch { .. }),
        "{error}"
    );
}

#[test]
fn record_naming_a_layer_the_cache_lacks_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, mut content) = cache_with_two_layers(dir.path());
    content.config.records[0].layers.push(7);
    let error = content.validate("test cache").unwrap_err();
    assert!(error.to_string().contains("names layer 7"), "{error}");
}

#[tokio::test]
async fn missing_cache_directory_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let location = CacheLocation::Directory(dir.path().join("absent"));
    let error = import_cache(&location, &store, &registry())
        .await
        .unwrap_err();
    assert!(matches!(error, BuildCacheError::NotFound { .. }), "{error}");
}
