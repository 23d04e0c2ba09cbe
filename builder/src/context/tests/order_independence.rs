//! The digest of a tree depends on its contents only: not on the order its entries were created
//! in (which decides the order directory listings return them) nor on the number of threads.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Item {
    File { contents: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Link { target: &'static str },
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d.txt"]), 1..=3)
        .prop_map(|components| components.join("/"))
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        3 => (prop::collection::vec(any::<u8>(), 0..64), prop::sample::select(vec![0o644, 0o600, 0o755]))
            .prop_map(|(contents, mode)| Item::File { contents, mode }),
        1 => prop::sample::select(vec![0o755, 0o700, 0o750]).prop_map(|mode| Item::Dir { mode }),
        1 => prop::sample::select(vec!["a", "../b", "/abs/path", "c/d.txt"])
            .prop_map(|target| Item::Link { target }),
    ]
}

/// A consistent tree: no path twice, nothing below a file or link.
fn tree_items() -> impl Strategy<Value = Vec<(String, Item)>> {
    prop::collection::vec((path(), item()), 1..24).prop_map(|candidates| {
        let mut kept: BTreeMap<String, Item> = BTreeMap::new();
        for (path, item) in candidates {
            let is_dir = matches!(item, Item::Dir { .. });
            let below_a_leaf = kept.iter().any(|(other, other_item)| {
                !matches!(other_item, Item::Dir { .. }) && path.starts_with(&format!("{other}/"))
            });
            let above_something = kept
                .keys()
                .any(|other| other.starts_with(&format!("{path}/")));
            if !kept.contains_key(&path) && !below_a_leaf && (is_dir || !above_something) {
                kept.insert(path, item);
            }
        }
        kept.into_iter().collect()
    })
}

fn build(items: &[(String, Item)]) -> Tree {
    let tree = Tree::new();
    for (path, item) in items {
        let abs = tree.abs(path);
        if let Some(parent) = abs.parent() {
            fs::create_dir_all(parent).expect("parents");
        }
        match item {
            Item::File { contents, mode } => {
                fs::write(&abs, contents).expect("write");
                tree.chmod(path, *mode);
            }
            Item::Dir { .. } => fs::create_dir_all(&abs).expect("mkdir"),
            Item::Link { target } => symlink(target, &abs).expect("symlink"),
        }
    }
    // Directory modes last: implicit parents get 0755 whatever the umask made of them.
    for entry in hash(&tree)
        .entries()
        .iter()
        .filter(|entry| entry.is_dir() && !entry.path.is_empty())
    {
        tree.chmod(&entry.path, 0o755);
    }
    for (path, item) in items {
        if let Item::Dir { mode } = item {
            tree.chmod(path, *mode);
        }
    }
    tree
}

fn hash_with_threads(tree: &Tree, threads: usize) -> HashedContext {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(|| hash(tree))
}

/// What must agree: everything but directory sizes, which depend on the filesystem's history.
fn summary(
    context: &HashedContext,
) -> Vec<(String, crate::context::EntryKind, u32, Option<u64>, String)> {
    context
        .entries()
        .iter()
        .map(|entry| {
            let size = (!entry.is_dir()).then_some(entry.size);
            (
                entry.path.clone(),
                entry.kind.clone(),
                entry.mode,
                size,
                entry.digest.to_string(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn digest_is_independent_of_creation_order_and_thread_count(
        (items, shuffled) in tree_items().prop_flat_map(|items| (Just(items.clone()), Just(items).prop_shuffle()))
    ) {
        let first = build(&items);
        let second = build(&shuffled);
        let single = hash_with_threads(&first, 1);
        let parallel = hash_with_threads(&second, 4);
        prop_assert_eq!(single.digest(), parallel.digest());
        prop_assert_eq!(summary(&single), summary(&parallel));
        prop_assert_eq!(hash_with_threads(&first, 3).digest(), single.digest());
    }
}
