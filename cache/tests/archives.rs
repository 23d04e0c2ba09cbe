//! Import of hand-made archives in the shapes other tools write, and export/import round trips.

use std::fs;
use std::io::Write;
use std::path::Path;

use imgb_cache::compress::Compression;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer};
use imgb_cache::oci::{
    Descriptor, History, ImageConfig, ImageIndex, ImageManifest, Platform, RootFs, canonical_json,
    media_type,
};
use imgb_cache::{
    Digest, ImportError, OutputSpec, Reference, Store, StoredImage, export, load_archive,
};
use serde_json::json;

fn store(dir: &Path, name: &str) -> Store {
    Store::open(dir.join(name)).unwrap()
}

/// An uncompressed layer tar holding one file.
fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, name, content).unwrap();
    builder.into_inner().unwrap()
}

fn config(diff_ids: Vec<Digest>) -> Vec<u8> {
    let host = Platform::host();
    let config = ImageConfig {
        architecture: host.architecture,
        os: host.os,
        rootfs: RootFs {
            diff_ids,
            ..RootFs::default()
        },
        history: vec![History {
            created_by: Some("test".into()),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    canonical_json(&config).unwrap()
}

/// A tar of `(path, member)` pairs.
fn archive<P: AsRef<str>>(members: &[(P, Member)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, member) in members {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(0);
        match member {
            Member::File(content) => {
                header.set_size(content.len() as u64);
                header.set_cksum();
                builder
                    .append_data(&mut header, path.as_ref(), &content[..])
                    .unwrap();
            }
            Member::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, path.as_ref(), target)
                    .unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

enum Member {
    File(Vec<u8>),
    Symlink(&'static str),
}

/// A legacy `docker save` archive: one directory per layer, a duplicate layer as a symlink,
/// `manifest.json` last, uncompressed layers.
fn docker_save_archive(repo_tags: serde_json::Value) -> (Vec<u8>, Digest, Digest) {
    let layer = layer_tar("hello.txt", b"hello\n");
    let diff_id = Digest::of(&layer);
    let config = config(vec![diff_id.clone(), diff_id.clone()]);
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    let bytes = archive(&[
        ("aaa/VERSION", Member::File(b"1.0".to_vec())),
        ("aaa/json", Member::File(b"{}".to_vec())),
        ("aaa/layer.tar", Member::File(layer)),
        ("bbb/layer.tar", Member::Symlink("../aaa/layer.tar")),
        (config_name.as_str(), Member::File(config.clone())),
        (
            "manifest.json",
            Member::File(manifest.to_string().into_bytes()),
        ),
        ("repositories", Member::File(b"{}".to_vec())),
    ]);
    (bytes, diff_id, Digest::of(&config))
}

#[test]
fn docker_save_archive_with_symlinked_layer_loads_uncompressed_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "root");
    let (bytes, diff_id, config_digest) = docker_save_archive(json!(["busybox:latest", "x/y:1"]));
    let loaded = load_archive(&store, &bytes[..]).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].names,
        ["docker.io/library/busybox:latest", "docker.io/x/y:1"]
    );
    let image = &loaded[0].image;
    assert_eq!(image.manifest.config.digest, config_digest);
    assert_eq!(image.manifest.layers.len(), 2);
    for layer in &image.manifest.layers {
        assert_eq!(layer.media_type, media_type::OCI_LAYER);
        assert_eq!(
            layer.digest, diff_id,
            "stored as given: blob digest = diffID"
        );
    }
    // Nothing but the referenced blobs is kept (no VERSION, json, repositories).
    assert_eq!(store.list_blobs().unwrap().len(), 3);
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    // Loading again changes nothing.
    let again = load_archive(&store, &bytes[..]).unwrap();
    assert_eq!(again[0].image, *image);
}

#[test]
fn compressed_archive_and_null_repo_tags_load_untagged() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "root");
    let (bytes, _, _) = docker_save_archive(serde_json::Value::Null);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&bytes).unwrap();
    let compressed = gzip.finish().unwrap();
    let loaded = load_archive(&store, &compressed[..]).unwrap();
    assert!(loaded[0].names.is_empty());
    assert!(store.images().unwrap().is_empty());
    assert!(store.has_blob(&loaded[0].image.descriptor.digest));
}

#[test]
fn wrong_diff_id_in_docker_archive_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "root");
    let layer = layer_tar("a", b"a");
    let config = config(vec![Digest::of(b"something else")]);
    let manifest = json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l.tar"]}]);
    let bytes = archive(&[
        ("l.tar", Member::File(layer)),
        ("c.json", Member::File(config)),
        (
            "manifest.json",
            Member::File(manifest.to_string().into_bytes()),
        ),
    ]);
    let error = load_archive(&store, &bytes[..]).unwrap_err();
    assert!(
        matches!(error, ImportError::DiffIdMismatch { index: 0, .. }),
        "{error}"
    );
    assert!(store.list_blobs().unwrap().is_empty());
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn missing_member_and_non_archives_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "root");
    let manifest = json!([{"Config": "c.json", "RepoTags": [], "Layers": []}]);
    let bytes = archive(&[(
        "manifest.json",
        Member::File(manifest.to_string().into_bytes()),
    )]);
    let error = load_archive(&store, &bytes[..]).unwrap_err();
    assert!(
        matches!(error, ImportError::MissingMember { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("c.json"));

    let other = archive(&[("README", Member::File(b"hi".to_vec()))]);
    let error = load_archive(&store, &other[..]).unwrap_err();
    assert!(matches!(error, ImportError::NotAnImageArchive), "{error}");

    // The tar crate refuses to write `..`, so the name goes into the header by hand.
    let mut header = tar::Header::new_ustar();
    header.as_mut_bytes()[..7].copy_from_slice(b"../evil");
    header.set_size(1);
    header.set_mode(0o644);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &b"x"[..]).unwrap();
    let escaping = builder.into_inner().unwrap();
    let error = load_archive(&store, &escaping[..]).unwrap_err();
    assert!(matches!(error, ImportError::BadMember { .. }), "{error}");
}

/// An OCI layout with a nested index (two platforms) and a bare-tag entry.
#[test]
fn oci_layout_nested_index_picks_this_platform_and_bare_tags_name_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "root");
    let layer = layer_tar("f", b"f");
    let config_bytes = config(vec![Digest::of(&layer)]);
    let config = Descriptor::new(
        media_type::OCI_CONFIG,
        Digest::of(&config_bytes),
        config_bytes.len() as u64,
    );
    let layer_desc = Descriptor::new(
        media_type::OCI_LAYER,
        Digest::of(&layer),
        layer.len() as u64,
    );
    let manifest_bytes = canonical_json(&ImageManifest::new(config, vec![layer_desc])).unwrap();
    let manifest = Descriptor::new(
        media_type::OCI_MANIFEST,
        Digest::of(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    let mut here = manifest.clone();
    here.platform = Some(Platform::host());
    let mut elsewhere = Descriptor::new(media_type::OCI_MANIFEST, Digest::of(b"absent"), 6);
    elsewhere.platform = Some(Platform {
        architecture: "s390x".into(),
        ..Platform::host()
    });
    let nested_bytes = canonical_json(&ImageIndex::new(vec![elsewhere, here])).unwrap();
    let mut nested = Descriptor::new(
        media_type::OCI_INDEX,
        Digest::of(&nested_bytes),
        nested_bytes.len() as u64,
    );
    nested.annotations.insert(
        "org.opencontainers.image.ref.name".into(),
        "ghcr.io/a/b:2".into(),
    );
    let mut bare = manifest.clone();
    bare.annotations
        .insert("org.opencontainers.image.ref.name".into(), "latest".into());
    let index = canonical_json(&ImageIndex::new(vec![nested, bare])).unwrap();
    let blob = |bytes: &[u8]| {
        (
            format!("blobs/sha256/{}", Digest::of(bytes).hex()),
            Member::File(bytes.to_vec()),
        )
    };
    let members = [
        (
            "oci-layout".to_owned(),
            Member::File(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ),
        ("index.json".to_owned(), Member::File(index)),
        blob(&layer),
        blob(&config_bytes),
        blob(&manifest_bytes),
        blob(&nested_bytes),
    ];
    let loaded = load_archive(&store, &archive(&members)[..]).unwrap();
    assert_eq!(loaded.len(), 1, "both entries are the same manifest");
    assert_eq!(loaded[0].names, ["ghcr.io/a/b:2"]);
    assert_eq!(loaded[0].image.descriptor.digest, manifest.digest);
    // The nested index itself is not kept: names point at manifests.
    assert!(!store.has_blob(&Digest::of(&nested_bytes)));
}

fn built_image(dir: &Path, store: &Store) -> StoredImage {
    let source = dir.join("src");
    fs::create_dir_all(source.join("etc")).unwrap();
    fs::write(source.join("etc/os-release"), b"ID=test\n").unwrap();
    let options = LayerOptions {
        compression: Compression::GZIP_DEFAULT,
        source_date_epoch: Some(0),
        threads: 1,
    };
    let layer = write_layer(store, &source, &LayerChanges::default(), &options).unwrap();
    let config: ImageConfig = serde_json::from_slice(&config(vec![layer.diff_id])).unwrap();
    let descriptor = Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size);
    store.write_image(&config, vec![descriptor]).unwrap()
}

#[test]
fn every_export_type_round_trips_through_load() {
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let image = built_image(dir.path(), &source);
    let name = Reference::parse("example.com/team/app:1.0").unwrap();
    let cases = [
        ("type=oci,dest={}", true),
        ("type=docker,dest={}", false),
        ("type=docker,oci-mediatypes=true,dest={}", true),
        (
            "type=oci,compression=zstd,force-compression=true,dest={}",
            false,
        ),
        (
            "type=oci,compression=uncompressed,force-compression=true,dest={}",
            false,
        ),
    ];
    for (index, (template, same_manifest)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("out{index}.tar"));
        let spec = OutputSpec::parse(&template.replace("{}", path.to_str().unwrap())).unwrap();
        let report = export(&source, &image, std::slice::from_ref(&name), &spec).unwrap();
        let target = store(dir.path(), &format!("target{index}"));
        let loaded = load_archive(&target, fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(loaded[0].names, [name.to_string()], "{template}");
        let exported = report.manifest.unwrap();
        assert_eq!(
            loaded[0].image.descriptor.digest, exported.digest,
            "{template}"
        );
        assert_eq!(
            exported.digest == image.descriptor.digest,
            same_manifest,
            "{template}"
        );
        assert_eq!(loaded[0].image.config, image.config, "{template}");
        let snapshots = target.ensure_image_snapshots(&loaded[0].image).unwrap();
        assert_eq!(
            fs::read(snapshots[0].join("etc/os-release")).unwrap(),
            b"ID=test\n"
        );
    }
}

#[test]
fn oci_directory_output_keeps_other_images_in_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let image = built_image(dir.path(), &source);
    let layout = dir.path().join("layout");
    for name in ["a:1", "b:1", "a:1"] {
        let spec = OutputSpec::parse(&format!(
            "type=oci,tar=false,name={name},dest={}",
            layout.display()
        ))
        .unwrap();
        export(&source, &image, &[], &spec).unwrap();
    }
    let index: ImageIndex =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index
        .manifests
        .iter()
        .map(|d| d.annotations["io.containerd.image.name"].as_str())
        .collect();
    assert_eq!(names, ["docker.io/library/b:1", "docker.io/library/a:1"]);
}

#[test]
fn zstd_layers_cannot_be_exported_with_docker_media_types() {
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let image = built_image(dir.path(), &source);
    let path = dir.path().join("out.tar");
    let spec = OutputSpec::parse(&format!(
        "type=docker,oci-mediatypes=false,compression=zstd,force-compression=true,dest={}",
        path.display()
    ))
    .unwrap();
    let error = export(&source, &image, &[], &spec).unwrap_err();
    assert!(error.to_string().contains("oci-mediatypes=true"), "{error}");
    assert!(!path.exists());
}

#[test]
fn concurrent_loads_of_the_same_archive_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "root");
    let (bytes, _, _) = docker_save_archive(json!(["same:1"]));
    let digests: Vec<Digest> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (store, bytes) = (&store, &bytes);
                scope.spawn(move || {
                    load_archive(store, &bytes[..]).unwrap()[0]
                        .image
                        .descriptor
                        .digest
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    for blob in store.list_blobs().unwrap() {
        store.verify_blob(&blob, None).unwrap();
    }
}

#[test]
fn uncompressed_base_layers_are_compressed_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let (bytes, _, _) = docker_save_archive(json!(["base:1"]));
    let image = load_archive(&source, &bytes[..]).unwrap().remove(0).image;
    for (spec, expected) in [
        ("type=oci,dest={}", media_type::OCI_LAYER),
        (
            "type=oci,force-compression=true,dest={}",
            media_type::OCI_LAYER_GZIP,
        ),
        (
            "type=docker,force-compression=true,dest={}",
            media_type::DOCKER_LAYER_GZIP,
        ),
    ] {
        let path = dir.path().join("out.tar");
        let spec = OutputSpec::parse(&spec.replace("{}", path.to_str().unwrap())).unwrap();
        export(&source, &image, &[], &spec).unwrap();
        let target = store(dir.path(), "target");
        let loaded = load_archive(&target, fs::File::open(&path).unwrap()).unwrap();
        let layers = &loaded[0].image.manifest.layers;
        // Import records OCI types for docker-archives, so compare the compression only.
        let compression = |t: &str| imgb_cache::oci::LayerCompression::from_media_type(t);
        assert!(
            layers
                .iter()
                .all(|l| compression(&l.media_type) == compression(expected)),
            "{spec:?}: {layers:?}"
        );
        assert_eq!(loaded[0].image.config, image.config);
    }
}
