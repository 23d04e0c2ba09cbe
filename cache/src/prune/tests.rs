use super::*;
use crate::compress::Compression;
use crate::layer::{LayerChanges, LayerOptions, write_layer};
use crate::oci::{Descriptor, History, ImageConfig, RootFs, media_type};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

/// Test records: one reference per line, `blob DIGEST` or `layer DIFF_ID BLOB`.
fn test_references(bytes: &[u8]) -> Result<Vec<RecordRef>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let digest = |text: &str| Digest::parse(text).map_err(|e| e.to_string());
    text.lines()
        .map(
            |line| match line.split(' ').collect::<Vec<_>>().as_slice() {
                ["blob", blob] => Ok(RecordRef::Blob(digest(blob)?)),
                ["layer", diff_id, blob] => Ok(RecordRef::Layer {
                    diff_id: digest(diff_id)?,
                    blob: digest(blob)?,
                }),
                _ => Err(format!("bad line {line:?}")),
            },
        )
        .collect()
}

fn options() -> PruneOptions {
    PruneOptions {
        all: false,
        until: None,
        keep_storage: None,
        record_references: test_references,
        download_references: test_references,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    sources: PathBuf,
}

/// A layer: blob plus snapshot, made from files named after `seed`.
#[derive(Debug, Clone)]
struct TestLayer {
    blob: Digest,
    diff_id: Digest,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let sources = dir.path().join("sources");
        Fixture {
            _dir: dir,
            store,
            sources,
        }
    }

    fn layer(&self, seed: &str, bytes: usize) -> TestLayer {
        let source = self.sources.join(seed);
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join(seed), seed.repeat(bytes / seed.len().max(1))).unwrap();
        let options = LayerOptions {
            compression: Compression::None,
            source_date_epoch: Some(1_700_000_000),
            threads: 1,
        };
        let layer = write_layer(&self.store, &source, &LayerChanges::default(), &options).unwrap();
        let descriptor =
            Descriptor::new(layer.media_type, layer.blob.digest.clone(), layer.blob.size);
        self.store
            .ensure_snapshot(&descriptor, &layer.diff_id)
            .unwrap();
        TestLayer {
            blob: layer.blob.digest,
            diff_id: layer.diff_id,
        }
    }

    fn image(&self, name: &str, layers: &[&TestLayer]) -> Digest {
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
                ..RootFs::default()
            },
            history: vec![History::default()],
            ..ImageConfig::default()
        };
        let descriptors = layers
            .iter()
            .map(|l| {
                let size = fs::metadata(self.store.blob_path(&l.blob)).unwrap().len();
                Descriptor::new(media_type::OCI_LAYER, l.blob.clone(), size)
            })
            .collect();
        let image = self.store.write_image(&config, descriptors).unwrap();
        self.store
            .tag_image(name, &image.descriptor.digest)
            .unwrap();
        image.descriptor.digest
    }

    fn record(&self, name: &str, layers: &[&TestLayer]) -> PathBuf {
        let text: String = layers
            .iter()
            .map(|l| format!("layer {} {}\n", l.diff_id, l.blob))
            .collect();
        let path = self.store.records_dir().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// A download record (`downloads/<name>.json`) naming `layer`.
    fn download(&self, name: &str, layer: &TestLayer) -> PathBuf {
        fs::create_dir_all(self.store.downloads_dir()).unwrap();
        let path = self.store.downloads_dir().join(format!("{name}.json"));
        fs::write(&path, format!("layer {} {}\n", layer.diff_id, layer.blob)).unwrap();
        path
    }

    fn has_layer(&self, layer: &TestLayer) -> (bool, bool) {
        (
            self.store.blob_path(&layer.blob).is_file(),
            self.store.snapshot_path(&layer.diff_id).is_dir(),
        )
    }

    fn prune(&self, options: &PruneOptions) -> PruneReport {
        let estimate = self.store.estimate_prune(options).unwrap();
        let report = self.store.prune(options).unwrap();
        assert_eq!(estimate, report, "the estimate is what prune does");
        report
    }
}

fn set_mtime(path: &Path, seconds_ago: u64) {
    let then = SystemTime::now() - Duration::from_secs(seconds_ago);
    let since_epoch = then.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let time = Timespec {
        tv_sec: since_epoch.as_secs() as i64,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn removed_ids(report: &PruneReport, kind: &str) -> Vec<String> {
    let mut ids: Vec<String> = report
        .removed
        .iter()
        .filter(|item| item.kind == kind)
        .map(|item| item.id.clone())
        .collect();
    ids.sort();
    ids
}

#[test]
fn default_prune_removes_cache_outside_named_images_and_keeps_images_whole() {
    let fixture = Fixture::new();
    let base = fixture.layer("base", 4096);
    let built = fixture.layer("built", 4096);
    let dangling = fixture.layer("dangling", 4096);
    let manifest = fixture.image("docker.io/library/app:latest", &[&base]);
    fixture.record("in-image", &[&base]);
    fixture.record("outside", &[&base, &built]);
    fs::write(fixture.store.root().join("mounts/m"), b"cache").unwrap();

    let report = fixture.prune(&options());

    assert_eq!(removed_ids(&report, "cache records"), ["outside"]);
    assert_eq!(fixture.has_layer(&base), (true, true));
    assert_eq!(fixture.has_layer(&built), (false, false));
    assert_eq!(fixture.has_layer(&dangling), (false, false));
    assert!(fixture.store.records_dir().join("in-image").is_file());
    assert!(
        fixture.store.root().join("mounts/m").exists(),
        "mounts go only with --all"
    );
    fixture.store.read_image(&manifest).unwrap();
    assert!(report.reclaimed() > 4 * 4096);
    let tmp: Vec<_> = fs::read_dir(fixture.store.tmp_dir()).unwrap().collect();
    assert!(tmp.is_empty(), "the trash is deleted: {tmp:?}");
    assert_eq!(fixture.prune(&options()), PruneReport::default());
}

#[test]
fn all_removes_every_record_mount_and_context_but_not_images() {
    let fixture = Fixture::new();
    let base = fixture.layer("base", 1000);
    fixture.image("app:1", &[&base]);
    fixture.record("in-image", &[&base]);
    fs::create_dir_all(fixture.store.root().join("mounts/m/sub")).unwrap();
    fs::write(fixture.store.root().join("contexts/c"), b"stat cache").unwrap();
    let listings = fixture.store.records_dir().join("contexts");
    fs::create_dir_all(&listings).unwrap();
    fs::write(listings.join("selection"), b"listing").unwrap();
    let report = fixture.prune(&PruneOptions {
        all: true,
        ..options()
    });
    assert_eq!(removed_ids(&report, "cache records"), ["in-image"]);
    assert_eq!(removed_ids(&report, "cache mounts"), ["m"]);
    assert_eq!(removed_ids(&report, "context stat caches"), ["c"]);
    assert!(!listings.join("selection").exists());
    assert_eq!(fixture.has_layer(&base), (true, true));
}

#[test]
fn records_naming_a_missing_layer_are_removed_even_when_recent() {
    let fixture = Fixture::new();
    let layer = fixture.layer("gone", 1000);
    let path = fixture.record("broken", &[&layer]);
    fs::remove_file(fixture.store.blob_path(&layer.blob)).unwrap();
    crate::store::remove_tree(&fixture.store.snapshot_path(&layer.diff_id)).unwrap();
    fs::write(fixture.store.records_dir().join("garbled"), b"not a record").unwrap();
    let report = fixture.prune(&PruneOptions {
        until: Some(Duration::from_secs(3600)),
        ..options()
    });
    assert_eq!(removed_ids(&report, "cache records"), ["broken", "garbled"]);
    assert!(!path.exists());
}

#[test]
fn a_snapshot_alone_keeps_its_record_valid() {
    let fixture = Fixture::new();
    let layer = fixture.layer("adopted", 1000);
    fs::remove_file(fixture.store.blob_path(&layer.blob)).unwrap();
    fixture.record("snapshot-only", &[&layer]);
    let report = fixture.prune(&PruneOptions {
        until: Some(Duration::from_secs(3600)),
        ..options()
    });
    assert_eq!(report, PruneReport::default());
    assert_eq!(fixture.has_layer(&layer), (false, true));
}

#[test]
fn leased_resources_survive_prune() {
    let fixture = Fixture::new();
    let used = fixture.layer("used", 1000);
    let written = fixture.layer("written", 1000);
    fixture.record("hit", &[&used]);
    let build = fixture.store.leased("build").unwrap();
    build.protect(&Resource::Record("hit".into())).unwrap();
    assert!(build.has_blob(&written.blob));
    build.snapshot(&written.diff_id).unwrap();
    fs::create_dir_all(fixture.store.root().join("mounts/busy")).unwrap();
    build.protect(&Resource::CacheMount("busy".into())).unwrap();

    let all = PruneOptions {
        all: true,
        ..options()
    };
    assert_eq!(fixture.prune(&all), PruneReport::default());
    assert_eq!(fixture.has_layer(&used), (true, true));
    assert_eq!(fixture.has_layer(&written), (true, true));

    drop(build);
    let report = fixture.prune(&all);
    assert_eq!(removed_ids(&report, "cache records"), ["hit"]);
    assert_eq!(removed_ids(&report, "cache mounts"), ["busy"]);
    assert_eq!(fixture.has_layer(&written), (false, false));
}

#[test]
fn keep_storage_removes_the_least_recently_used_first() {
    let fixture = Fixture::new();
    let old = fixture.layer("old", 64 * 1024);
    let new = fixture.layer("new", 64 * 1024);
    set_mtime(&fixture.record("old", &[&old]), 7200);
    set_mtime(&fixture.record("new", &[&new]), 60);
    for layer in [&old, &new] {
        set_mtime(&fixture.store.blob_path(&layer.blob), 7200);
        set_mtime(&fixture.store.snapshot_path(&layer.diff_id), 7200);
    }
    let total: u64 = fixture
        .store
        .usage()
        .unwrap()
        .iter()
        .map(|(_, k)| k.bytes)
        .sum();
    // Room for everything but one record's layer (blob + snapshot, ~128 KiB).
    let report = fixture.prune(&PruneOptions {
        keep_storage: Some(total - 100 * 1024),
        ..options()
    });
    assert_eq!(removed_ids(&report, "cache records"), ["old"]);
    assert_eq!(fixture.has_layer(&old), (false, false));
    assert_eq!(fixture.has_layer(&new), (true, true));
    let after: u64 = fixture
        .store
        .usage()
        .unwrap()
        .iter()
        .map(|(_, k)| k.bytes)
        .sum();
    assert!(after <= total - 100 * 1024, "{after} > {total} - 100 KiB");
}

#[test]
fn until_keeps_what_was_used_recently() {
    let fixture = Fixture::new();
    let old = fixture.layer("old", 1000);
    let recent = fixture.layer("recent", 1000);
    set_mtime(&fixture.record("old", &[&old]), 7200);
    fixture.record("recent", &[&recent]);
    let report = fixture.prune(&PruneOptions {
        until: Some(Duration::from_secs(3600)),
        ..options()
    });
    assert_eq!(removed_ids(&report, "cache records"), ["old"]);
    assert_eq!(fixture.has_layer(&recent), (true, true));
}

#[test]
fn shared_layers_go_with_the_last_record_naming_them() {
    let fixture = Fixture::new();
    let shared = fixture.layer("shared", 64 * 1024);
    let first = fixture.record("a", &[&shared]);
    set_mtime(&first, 7200);
    set_mtime(&fixture.record("b", &[&shared]), 3600);
    let total: u64 = fixture
        .store
        .usage()
        .unwrap()
        .iter()
        .map(|(_, k)| k.bytes)
        .sum();
    let first_bytes = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&first).unwrap()) * 512;
    let report = fixture.prune(&PruneOptions {
        keep_storage: Some(total - first_bytes - 1),
        ..options()
    });
    // Removing `a` frees only the record; `b` still needs the layer, so `b` goes too.
    assert_eq!(removed_ids(&report, "cache records"), ["a", "b"]);
    assert_eq!(fixture.has_layer(&shared), (false, false));
}

#[test]
fn tmp_leftovers_go_unless_a_live_lease_is_older() {
    let fixture = Fixture::new();
    let tmp = fixture.store.tmp_dir();
    fs::create_dir_all(tmp.join("snapshot-1-0/deep")).unwrap();
    fs::write(tmp.join("blob-1-1"), b"partial").unwrap();
    let report = fixture.prune(&options());
    assert_eq!(
        removed_ids(&report, "temporary"),
        ["blob-1-1", "snapshot-1-0"]
    );

    let build = fixture.store.leased("build").unwrap();
    fs::write(tmp.join("blob-2-0"), b"being written").unwrap();
    assert_eq!(fixture.prune(&options()), PruneReport::default());
    assert!(tmp.join("blob-2-0").exists());
    drop(build);
    assert_eq!(
        removed_ids(&fixture.prune(&options()), "temporary"),
        ["blob-2-0"]
    );
}

#[test]
fn lock_settings_seal_and_index_files_go_with_their_snapshot_and_record() {
    let fixture = Fixture::new();
    let layer = fixture.layer("x", 1000);
    fixture.record("r", &[&layer]);
    let by_name = fixture.store.records_dir().join("by-name");
    fs::create_dir_all(&by_name).unwrap();
    let hex = "r";
    fs::write(by_name.join("position"), format!("sha256:{hex}")).unwrap();
    let lock = fixture
        .store
        .snapshots_dir()
        .join(format!("{}.lock", layer.diff_id.hex()));
    assert!(lock.exists(), "ensure_snapshot leaves its lock file");
    let settings = lock.with_extension("json");
    fs::write(&settings, b"{}").unwrap();
    let seal = lock.with_extension("seal");
    assert!(seal.exists(), "ensure_snapshot seals the snapshot");
    fixture.prune(&options());
    assert!(!by_name.join("position").exists());
    assert!(!lock.exists());
    assert!(!settings.exists());
    assert!(!seal.exists());
}

#[test]
fn a_named_image_that_cannot_be_read_stops_prune_with_a_hint() {
    let fixture = Fixture::new();
    fixture
        .store
        .tag_image("docker.io/library/broken:latest", &Digest::of(b"missing"))
        .unwrap();
    let error = fixture.store.prune(&options()).unwrap_err();
    assert!(error.to_string().contains("imgb rm"), "{error}");
}

#[test]
fn download_records_are_cache_pruned_least_recently_used_first() {
    let fixture = Fixture::new();
    let in_image = fixture.layer("in-image", 4096);
    let old = fixture.layer("old", 64 * 1024);
    let new = fixture.layer("new", 64 * 1024);
    fixture.image("docker.io/library/app:latest", &[&in_image]);
    fixture.download("in-image", &in_image);
    set_mtime(&fixture.download("old", &old), 7200);
    set_mtime(&fixture.download("new", &new), 60);
    for layer in [&old, &new] {
        set_mtime(&fixture.store.blob_path(&layer.blob), 7200);
        set_mtime(&fixture.store.snapshot_path(&layer.diff_id), 7200);
    }
    let usage = |kind: &str| {
        fixture
            .store
            .usage()
            .unwrap()
            .into_iter()
            .find(|(name, _)| *name == kind)
            .unwrap()
            .1
    };
    assert_eq!(usage("downloads").items, 3);
    let total: u64 = fixture
        .store
        .usage()
        .unwrap()
        .iter()
        .map(|(_, k)| k.bytes)
        .sum();

    let report = fixture.prune(&PruneOptions {
        keep_storage: Some(total - 100 * 1024),
        ..options()
    });
    assert_eq!(removed_ids(&report, "downloads"), ["old.json"]);
    assert_eq!(fixture.has_layer(&old), (false, false));
    assert_eq!(fixture.has_layer(&new), (true, true));

    let report = fixture.prune(&options());
    assert_eq!(removed_ids(&report, "downloads"), ["new.json"]);
    assert_eq!(fixture.has_layer(&new), (false, false));
    assert_eq!(
        usage("downloads").items,
        1,
        "a download whose layer is in a named image stays"
    );
    let all = fixture.prune(&PruneOptions {
        all: true,
        ..options()
    });
    assert_eq!(removed_ids(&all, "downloads"), ["in-image.json"]);
    assert_eq!(fixture.has_layer(&in_image), (true, true));
}

#[test]
fn blob_sources_stay_while_a_named_image_or_a_lease_names_the_blob() {
    let fixture = Fixture::new();
    let layer = fixture.layer("pulled", 4096);
    fixture.image("docker.io/library/app:latest", &[&layer]);
    let unnamed = Digest::of(b"a layer of a removed image");
    let leased = Digest::of(b"a layer a running pull names");
    for digest in [&layer.blob, &unnamed, &leased] {
        fixture
            .store
            .record_blob_source(digest, "r.example/base")
            .unwrap();
    }
    let pull = fixture.store.leased("pull").unwrap();
    pull.protect(&Resource::Blob(leased.clone())).unwrap();

    let report = fixture.prune(&options());
    assert_eq!(
        removed_ids(&report, "blob sources"),
        [unnamed.hex().to_owned()]
    );
    assert!(fixture.store.blob_source(&layer.blob).is_some());
    assert!(fixture.store.blob_source(&leased).is_some());
    assert!(fixture.store.blob_source(&unnamed).is_none());
}

/// Stores `document` as a registry manifest of `media_type` (as `imgb serve` does); returns
/// its digest.
fn registry_manifest(store: &Store, media_type: &str, document: serde_json::Value) -> Digest {
    let digest = store
        .write_blob(document.to_string().as_bytes())
        .unwrap()
        .digest;
    let index = crate::registry_index::RegistryIndex::of(store);
    let path = index.media_type_path(&digest);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, media_type).unwrap();
    digest
}

fn tag(store: &Store, name: &str, tag: &str, digest: &Digest) {
    let path = crate::registry_index::RegistryIndex::of(store).tag_path(name, tag);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, digest.as_str()).unwrap();
}

#[test]
fn registry_tags_keep_their_manifests_and_everything_they_reference() {
    let fixture = Fixture::new();
    let store = &fixture.store;
    let descriptor = |bytes: &[u8], media_type: &str| {
        let info = store.write_blob(bytes).unwrap();
        serde_json::json!({ "mediaType": media_type, "digest": info.digest, "size": info.size })
    };
    let image = |seed: &str| {
        serde_json::json!({
            "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
            "config": descriptor(format!("config {seed}").as_bytes(), media_type::OCI_CONFIG),
            "layers": [descriptor(format!("layer {seed}").as_bytes(), media_type::OCI_LAYER)]
        })
    };
    let cache = registry_manifest(store, media_type::OCI_MANIFEST, image("cache"));
    let child = registry_manifest(store, media_type::OCI_MANIFEST, image("child"));
    let child_size = store.read_blob(&child).unwrap().len();
    let index = registry_manifest(
        store,
        media_type::OCI_INDEX,
        serde_json::json!({ "schemaVersion": 2, "mediaType": media_type::OCI_INDEX,
            "manifests": [{ "mediaType": media_type::OCI_MANIFEST, "digest": child,
                            "size": child_size }] }),
    );
    let untagged = registry_manifest(store, media_type::OCI_MANIFEST, image("untagged"));
    tag(store, "team/cache", "main", &cache);
    tag(store, "team/multi", "v1", &index);
    let kept_before = store.list_blobs().unwrap();

    let report = fixture.prune(&PruneOptions {
        all: true,
        ..options()
    });

    // The untagged manifest, its config and its layer go; everything tagged stays.
    assert_eq!(removed_ids(&report, "blobs").len(), 3, "{report:?}");
    assert!(!store.has_blob(&untagged));
    for digest in [&cache, &index, &child] {
        assert!(store.has_blob(digest), "{digest}");
    }
    assert_eq!(store.list_blobs().unwrap().len(), kept_before.len() - 3);
    // A tag moved elsewhere releases what it named.
    tag(store, "team/cache", "main", &index);
    let report = fixture.prune(&options());
    assert_eq!(removed_ids(&report, "blobs").len(), 3, "{report:?}");
    assert!(!store.has_blob(&cache));
}
