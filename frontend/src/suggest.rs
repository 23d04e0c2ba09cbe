//! "Did you mean ...?" for near-miss names, with BuildKit's rule (`util/suggest`): the option
//! closest to the value by Levenshtein distance over characters, if that distance is at most 2;
//! nothing when the value is itself one of the options.

const MAX_DISTANCE: usize = 2;

/// The option closest to `value`, if one is close enough. Case-insensitive matching answers in the
/// case the user wrote (`form` → `from`, `FORM` → `FROM`).
pub(crate) fn closest<'a>(
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<String> {
    let fold = |text: &str| {
        if case_sensitive {
            text.to_string()
        } else {
            text.to_lowercase()
        }
    };
    let wanted = fold(value);
    let mut best: Option<(usize, String)> = None;
    for option in options {
        let option = fold(option);
        if option == wanted {
            return None;
        }
        let distance = levenshtein(&wanted, &option);
        if distance <= MAX_DISTANCE && best.as_ref().is_none_or(|(closest, _)| distance < *closest)
        {
            best = Some((distance, option));
        }
    }
    best.map(|(_, option)| {
        if case_sensitive {
            option
        } else {
            in_case_of(&option, value)
        }
    })
}

fn in_case_of(option: &str, written: &str) -> String {
    if written == written.to_lowercase() {
        option.to_lowercase()
    } else if written == written.to_uppercase() {
        option.to_uppercase()
    } else {
        option.to_string()
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_within_two_edits_in_the_written_case() {
        assert_eq!(
            closest("FORM", ["FROM", "RUN"], false).as_deref(),
            Some("FROM")
        );
        assert_eq!(
            closest("form", ["FROM", "RUN"], false).as_deref(),
            Some("from")
        );
        assert_eq!(
            closest("chonw", ["chown", "chmod"], true).as_deref(),
            Some("chown")
        );
    }

    #[test]
    fn no_suggestion_for_distant_or_exact_values() {
        assert_eq!(closest("banana", ["FROM", "RUN"], false), None);
        assert_eq!(closest("run", ["FROM", "RUN"], false), None);
        assert_eq!(closest("Chown", ["chown"], true).as_deref(), Some("chown"));
    }

    #[test]
    fn levenshtein_counts_insertions_deletions_and_substitutions() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("é", "e"), 1);
    }
}
