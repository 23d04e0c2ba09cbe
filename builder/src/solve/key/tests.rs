use std::sync::Arc;

use imgb_cache::oci::media_type;

use super::*;
use crate::graph::{BuildGraph, Owner, VertexId};
use crate::solve::result::{Filesystem, ImageOrigin, LayerRef};
use crate::solve::test_support::{copy, exec, layer};

fn input(layers: Vec<LayerRef>) -> SolvedInput {
    SolvedInput {
        vertex: VertexId::new(0),
        result: Arc::new(Solved::Filesystem(Filesystem {
            layers,
            image: None,
        })),
    }
}

fn context_input() -> SolvedInput {
    SolvedInput {
        vertex: VertexId::new(1),
        result: Arc::new(Solved::Context),
    }
}

fn explain(op: &Op, inputs: &[SolvedInput], context_files: Option<&Digest>) -> KeyExplanation {
    explain_with(op, inputs, context_files, &BTreeMap::new())
}

fn explain_with(
    op: &Op,
    inputs: &[SolvedInput],
    context_files: Option<&Digest>,
    settings: &BTreeMap<String, String>,
) -> KeyExplanation {
    let mut graph = BuildGraph::new();
    let id = graph.add(op.clone(), Vec::new(), "step");
    let input_names: Vec<String> = inputs
        .iter()
        .map(|input| format!("[s {}/2] RUN step", input.vertex.index()))
        .collect();
    KeyExplanation::derive(KeySources {
        definition: &graph.definition_digest(id),
        op,
        inputs,
        context_files,
        settings,
        input_names: &input_names,
    })
}

fn key(op: &Op, inputs: &[SolvedInput]) -> CacheKey {
    explain(op, inputs, None).key()
}

#[test]
fn key_is_stable_across_runs_and_machines() {
    // A different value here means every existing record is silently retired: change the op's
    // serialization or the key layout only together with KEY_VERSION, then update this value.
    let key = key(&exec("make", &["PATH=/bin"]), &[input(vec![layer("base")])]);
    assert_eq!(
        key.to_string(),
        "sha256:605d57f3cf7dfac8fef628a58870b3266f35c9e1d0eb7415f1f08b87fa054392"
    );
}

#[test]
fn key_changes_when_the_op_changes() {
    let inputs = [input(vec![layer("base")])];
    let base = key(&exec("make", &["PATH=/bin"]), &inputs);
    assert_ne!(base, key(&exec("make all", &["PATH=/bin"]), &inputs));
    assert_ne!(base, key(&exec("make", &["PATH=/usr/bin"]), &inputs));
}

#[test]
fn key_changes_when_an_input_layer_changes() {
    let op = exec("make", &[]);
    let base = key(&op, &[input(vec![layer("base")])]);
    assert_ne!(base, key(&op, &[input(vec![layer("other")])]));
    assert_ne!(base, key(&op, &[input(vec![layer("base"), layer("more")])]));
}

#[test]
fn key_changes_when_the_context_selection_changes() {
    let op = copy(&["src"], "/app/");
    let inputs = [input(vec![]), context_input()];
    let before = explain(&op, &inputs, Some(&Digest::of(b"files v1"))).key();
    let after = explain(&op, &inputs, Some(&Digest::of(b"files v2"))).key();
    assert_ne!(before, after);
}

#[test]
fn key_is_unchanged_when_only_the_vertex_name_changes() {
    let key_named = |name: &str| {
        let mut graph = BuildGraph::new();
        let base = graph.add(Op::Scratch, Vec::new(), format!("{name} base"));
        let id = graph.add(exec("make", &[]), vec![base], name);
        let op = &graph.vertex(id).op;
        KeyExplanation::derive(KeySources {
            definition: &graph.definition_digest(id),
            op,
            inputs: &[input(vec![])],
            context_files: None,
            settings: &BTreeMap::new(),
            input_names: &[],
        })
        .key()
    };
    assert_eq!(
        key_named("[a 1/2] RUN make"),
        key_named("[other 7/9] RUN make")
    );
}

#[test]
fn key_depends_on_input_content_not_on_its_blob_encoding() {
    // Early cut-off: an upstream step that reran and produced the same diffIDs, even stored
    // with another compression, leaves the key unchanged.
    let op = exec("make", &[]);
    let plain = layer("base");
    let mut recompressed = plain.clone();
    recompressed.blob.media_type = media_type::OCI_LAYER_ZSTD.to_string();
    recompressed.blob.digest = Digest::of(b"zstd bytes");
    assert_eq!(
        key(&op, &[input(vec![plain])]),
        key(&op, &[input(vec![recompressed])])
    );
}

#[test]
fn image_inputs_are_identified_by_their_manifest_digest() {
    let image = |manifest: &[u8]| SolvedInput {
        vertex: VertexId::new(0),
        result: Arc::new(Solved::Filesystem(Filesystem {
            layers: vec![layer("base")],
            image: Some(ImageOrigin {
                manifest: Digest::of(manifest),
                config: Digest::of(b"config"),
            }),
        })),
    };
    let op = exec("make", &[]);
    let first = explain(&op, &[image(b"manifest v1")], None);
    let second = explain(&op, &[image(b"manifest v2")], None);
    assert_ne!(first.key(), second.key());
    assert_eq!(first.components[1].label, "input 0 image");
    assert_eq!(
        first.components[1].value,
        Digest::of(b"manifest v1").as_str()
    );
}

#[test]
fn settings_enter_every_key() {
    let op = exec("make", &[]);
    let epoch = |value: &str| BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), value.into())]);
    let unset = explain_with(&op, &[], None, &BTreeMap::new()).key();
    let set = explain_with(&op, &[], None, &epoch("0")).key();
    let other = explain_with(&op, &[], None, &epoch("1")).key();
    assert_ne!(unset, set);
    assert_ne!(set, other);
}

fn described(changes: &[Change]) -> Vec<String> {
    changes.iter().map(Change::to_string).collect()
}

#[test]
fn changes_name_the_instruction_parts_that_differ_with_values_that_may_be_shown() {
    let inputs = [input(vec![layer("base")])];
    let before = explain(&exec("make", &["PATH=/bin", "VERSION=1"]), &inputs, None);
    let env_changed = explain(&exec("make", &["PATH=/bin", "VERSION=2"]), &inputs, None);
    assert_eq!(
        env_changed.changes_from(&before),
        vec![Change {
            component: "instruction".into(),
            parts: vec![Change {
                component: "env VERSION".into(),
                parts: Vec::new(),
                detail: Some(ChangeDetail::Values {
                    from: Some("1".into()),
                    to: Some("2".into()),
                }),
            }],
            detail: None,
        }]
    );
    let command_changed = explain(
        &exec("make all", &["PATH=/bin", "VERSION=1"]),
        &inputs,
        None,
    );
    assert_eq!(
        described(&command_changed.changes_from(&before)),
        ["instruction changed (command)"]
    );
    let arg_added = explain(
        &exec("make", &["PATH=/bin", "VERSION=1", "DEBUG=1"]),
        &inputs,
        None,
    );
    assert_eq!(
        described(&arg_added.changes_from(&before)),
        ["instruction changed (env DEBUG: unset → 1)"]
    );
    let long = format!("VERSION={}", "é".repeat(100));
    let long_value = explain(&exec("make", &["PATH=/bin", &long]), &inputs, None);
    assert_eq!(
        described(&long_value.changes_from(&before)),
        [format!(
            "instruction changed (env VERSION: 1 → {}…)",
            "é".repeat(79)
        )]
    );
}

#[test]
fn values_of_credential_like_names_are_never_shown() {
    let before = explain(&exec("make", &["API_TOKEN=old-secret"]), &[], None);
    let after = explain(&exec("make", &["API_TOKEN=new-secret"]), &[], None);
    let changes = after.changes_from(&before);
    assert_eq!(described(&changes), ["instruction changed (env API_TOKEN)"]);
    let json = serde_json::to_string(&(&before, &after, &changes)).unwrap();
    assert!(!json.contains("secret"), "{json}");
    assert!(looks_like_a_credential("DB_PASSWORD"));
    assert!(!looks_like_a_credential("PUBLIC_KEY"));
    assert!(!looks_like_a_credential("VERSION"));
}

#[test]
fn changes_name_the_upstream_step_base_image_digest_and_settings() {
    let op = copy(&["src"], "/app/");
    let before = explain(
        &op,
        &[input(vec![layer("base")]), context_input()],
        Some(&Digest::of(b"v1")),
    );
    let after = explain(
        &op,
        &[input(vec![layer("new base")]), context_input()],
        Some(&Digest::of(b"v2")),
    );
    assert_eq!(
        described(&after.changes_from(&before)),
        [
            "input 0 layers changed: `[s 0/2] RUN step` produced different files",
            "context files changed"
        ]
    );
    assert!(after.changes_from(&after).is_empty());

    let image = |manifest: &str| SolvedInput {
        vertex: VertexId::new(0),
        result: Arc::new(Solved::Filesystem(Filesystem {
            layers: vec![layer("base")],
            image: Some(ImageOrigin {
                manifest: Digest::of(manifest.as_bytes()),
                config: Digest::of(b"config"),
            }),
        })),
    };
    let epoch = |value: &str| BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), value.into())]);
    let before = explain_with(&op, &[image("v1")], None, &epoch("0"));
    let after = explain_with(&op, &[image("v2")], None, &epoch("1"));
    assert_eq!(
        described(&after.changes_from(&before)),
        [
            format!(
                "input 0 image changed: {} → {}",
                Digest::of(b"v1"),
                Digest::of(b"v2")
            ),
            "setting SOURCE_DATE_EPOCH changed: 0 → 1".to_string()
        ]
    );
}

#[test]
fn explanations_hold_digests_of_env_values_never_the_values() {
    let explanation = explain(&exec("make", &["TOKEN=hunter2-secret"]), &[], None);
    let json = serde_json::to_string(&explanation).unwrap();
    assert!(!json.contains("hunter2-secret"), "{json}");
    assert!(json.contains("env TOKEN"), "{json}");
}

#[test]
fn linked_copy_key_ignores_its_base_but_not_what_it_copies() {
    let Op::File { mut actions } = copy(&["/out/a.txt"], "/app/") else {
        unreachable!("copy makes a file op")
    };
    if let Some(FileAction::Copy { link, .. }) = actions.first_mut() {
        *link = true;
    }
    let linked = Op::File { actions };
    assert!(linked.is_linked_copy());
    let stage = input(vec![layer("stage")]);
    let on_base = key(&linked, &[input(vec![layer("base")]), stage.clone()]);
    assert_eq!(
        on_base,
        key(&linked, &[input(vec![layer("changed base")]), stage])
    );
    assert_ne!(
        on_base,
        key(
            &linked,
            &[input(vec![layer("base")]), input(vec![layer("new stage")])]
        )
    );
    let plain = copy(&["/out/a.txt"], "/app/");
    assert!(!plain.is_linked_copy());
}

/// BuildKit merges a `--link` copy onto its base only without `--chmod`, and its LLB reads
/// `root` as id 0; a name needs the base's passwd.
#[test]
fn a_linked_copy_with_chmod_or_a_named_owner_depends_on_its_base() {
    let linked = |owner: Option<(&str, Option<&str>)>, mode: Option<&str>| {
        let Op::File { mut actions } = copy(&["/out/a.txt"], "/app/") else {
            unreachable!("copy makes a file op")
        };
        if let Some(FileAction::Copy {
            link,
            owner: copy_owner,
            mode: copy_mode,
            ..
        }) = actions.first_mut()
        {
            *link = true;
            *copy_owner = owner.map(|(user, group)| Owner {
                user: user.to_owned(),
                group: group.map(str::to_owned),
            });
            *copy_mode = mode.map(str::to_owned);
        }
        Op::File { actions }.is_linked_copy()
    };
    assert!(linked(Some(("1000", Some("1000"))), None));
    assert!(linked(Some(("root", Some("root"))), None));
    assert!(linked(Some(("root", None)), None));
    assert!(!linked(None, Some("0644")));
    assert!(!linked(Some(("app", None)), None));
    assert!(!linked(Some(("1000", Some("staff"))), None));
}
