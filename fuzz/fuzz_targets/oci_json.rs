//! The OCI and Docker JSON documents imgb reads from archives, layouts and registries: any bytes
//! as a manifest, index, config, inline cache config or docker-archive `manifest.json` parse or
//! fail without panicking, and whatever parses writes back (canonical JSON) to the same value.
//!
//! The same bytes are then loaded as the `index.json` (first byte even) or `manifest.json` (odd)
//! of an image archive whose other members are a small valid image (see [`fixture`]), so
//! `imgb load`'s planning (descriptor lookups, nested indexes, platforms, names, diffIDs) runs on
//! them too, against a store in a private temporary directory.
#![no_main]

use std::cell::OnceCell;
use std::path::PathBuf;
use std::sync::OnceLock;

use imgb_cache::build_cache::CacheConfig;
use imgb_cache::oci::{
    DockerArchiveEntry, ImageConfig, ImageIndex, ImageManifest, Platform, canonical_json,
};
use imgb_cache::{Reference, Store, load_archive};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Parses `bytes` as `T`; if that works, canonical JSON of the value must parse back to it.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Option<T> {
    let value: T = serde_json::from_slice(bytes).ok()?;
    let written = canonical_json(&value).expect("a parsed document serializes");
    let back: T = serde_json::from_slice(&written).expect("imgb reads what it writes");
    assert_eq!(back, value, "canonical JSON changed the document");
    Some(value)
}

/// The archive members of a one-layer image: the members the fuzzed `index.json` or
/// `manifest.json` can point at (the seeds in `corpus/oci_json` do, with these digests).
fn fixture() -> &'static [(String, Vec<u8>)] {
    static FIXTURE: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Vec<(String, Vec<u8>)> {
    let layer = vec![0u8; 1024];
    let layer_digest = imgb_cache::Digest::of(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let config_digest = imgb_cache::Digest::of(&config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":1024}}]}}"#,
        config.len()
    )
    .into_bytes();
    let blob = |bytes: Vec<u8>| {
        let digest = imgb_cache::Digest::of(&bytes);
        (
            format!("blobs/{}/{}", digest.algorithm(), digest.hex()),
            bytes,
        )
    };
    vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        blob(layer),
        blob(config),
        blob(manifest),
    ]
}

fn archive_with(name: &str, document: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in fixture()
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .chain([(name, document)])
    {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, bytes)
            .expect("build the archive in memory");
    }
    builder.into_inner().expect("build the archive in memory")
}

thread_local! {
    static STORE: OnceCell<Store> = const { OnceCell::new() };
}

fn store_dir() -> PathBuf {
    std::env::temp_dir().join(format!("imgb-fuzz-oci-json-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, document)) = data.split_first() else {
        return;
    };
    round_trip::<ImageManifest>(document);
    round_trip::<ImageIndex>(document);
    round_trip::<CacheConfig>(document);
    if let Some(config) = round_trip::<ImageConfig>(document) {
        let _ = Platform::parse(&config.platform().to_string());
    }
    if let Some(entries) = round_trip::<Vec<DockerArchiveEntry>>(document) {
        for tag in entries.iter().flat_map(|entry| &entry.repo_tags) {
            let _ = Reference::parse(tag).map(|reference| reference.to_string());
        }
    }

    let name = if selector & 1 == 0 {
        "index.json"
    } else {
        "manifest.json"
    };
    let archive = archive_with(name, document);
    STORE.with(|store| {
        let store = store.get_or_init(|| Store::open(store_dir()).expect("open the store"));
        let _ = load_archive(store, archive.as_slice());
    });
});
