//! `USER name[:group]` → numeric ids, from the root filesystem's `/etc/passwd` and
//! `/etc/group`, with the rules of Docker and runc (moby/sys `GetExecUser`):
//! - An empty user means uid 0. A name must exist in passwd; a number need not (gid 0 and
//!   home `/` then, unless passwd has the uid).
//! - A user found in passwd brings its primary gid and home, and its supplementary groups are
//!   the groups that list it as a member.
//! - An explicit group replaces the primary gid and drops the supplementary groups; a group
//!   name must exist in /etc/group, a number need not.
//! - First match wins; malformed lines are skipped; ids above `i32::MAX` are refused.

/// The identity a user spec resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

impl ExecUser {
    /// The process's supplementary groups: the primary gid first, then the others, as Docker
    /// sets them (so `id` lists the primary group among the groups).
    pub fn process_groups(&self) -> Vec<u32> {
        let mut groups = vec![self.gid];
        groups.extend(self.groups.iter().filter(|&&gid| gid != self.gid));
        groups
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UserError {
    #[error(
        "unable to find user {name}: no matching entries in passwd file \
         (hint: create it in an earlier step, or use a numeric uid)"
    )]
    NoSuchUser { name: String },
    #[error("unable to find group {name}: no matching entries in group file")]
    NoSuchGroup { name: String },
    #[error("{kind} id {text:?} is out of range (0 to {max})", max = i32::MAX)]
    OutOfRange { kind: &'static str, text: String },
}

/// A user or group argument: a number, or a name to look up.
enum Arg<'a> {
    Id(u32),
    Name(&'a str),
}

fn parse_arg<'a>(text: &'a str, kind: &'static str) -> Result<Option<Arg<'a>>, UserError> {
    if text.is_empty() {
        return Ok(None);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Some(Arg::Name(text)));
    }
    match text.parse::<i32>() {
        Ok(id) => Ok(Some(Arg::Id(id.unsigned_abs()))),
        Err(_) => Err(UserError::OutOfRange {
            kind,
            text: text.to_string(),
        }),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.trim().split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let _gecos = fields.next();
        let home = fields.next().unwrap_or("");
        Some(PasswdEntry {
            name,
            uid,
            gid,
            home,
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?.parse().ok()?;
        let members = fields
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|member| !member.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

/// Resolves `spec` (`user`, `user:group`, ids or names) against the passwd and group files'
/// text (`None` when a file does not exist).
pub(crate) fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    let (user_text, group_text) = spec.split_once(':').unwrap_or((spec, ""));
    let user_arg = parse_arg(user_text, "user")?;
    let group_arg = parse_arg(group_text, "group")?;
    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".to_string(),
    };

    let found = passwd.and_then(|text| {
        passwd_entries(text).find(|entry| match &user_arg {
            None => entry.uid == 0,
            Some(Arg::Id(uid)) => entry.uid == *uid,
            Some(Arg::Name(name)) => entry.name == *name,
        })
    });
    let matched_name = match (found, &user_arg) {
        (Some(entry), _) => {
            user.uid = entry.uid;
            user.gid = entry.gid;
            if !entry.home.is_empty() {
                user.home = entry.home.to_string();
            }
            Some(entry.name.to_string())
        }
        (None, Some(Arg::Id(uid))) => {
            user.uid = *uid;
            None
        }
        (None, Some(Arg::Name(name))) => {
            return Err(UserError::NoSuchUser {
                name: name.to_string(),
            });
        }
        (None, None) => None,
    };

    match group_arg {
        Some(arg) => {
            let found = group.and_then(|text| {
                group_entries(text).find(|entry| match arg {
                    Arg::Id(gid) => entry.gid == gid,
                    Arg::Name(name) => entry.name == name,
                })
            });
            user.gid = match (found, arg) {
                (Some(entry), _) => entry.gid,
                (None, Arg::Id(gid)) => gid,
                (None, Arg::Name(name)) => {
                    return Err(UserError::NoSuchGroup {
                        name: name.to_string(),
                    });
                }
            };
        }
        None => {
            if let (Some(name), Some(text)) = (matched_name, group) {
                user.groups = group_entries(text)
                    .filter(|entry| entry.members.contains(&name.as_str()))
                    .map(|entry| entry.gid)
                    .collect();
            }
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/usr/sbin:/bin/false\n\
                          broken line\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n\
                          app:x:1001:1001:Shadowed:/nowhere:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
                         # comment:x:7:app\n\
                         wheel:x:10:root,app\n\
                         app:x:1000:\n\
                         audio:x:29: app , daemon\n\
                         staff:x:50:\n";

    fn resolve(spec: &str) -> Result<ExecUser, UserError> {
        resolve_user(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn empty_spec_is_root_with_roots_groups() {
        let user = resolve("").unwrap();
        assert_eq!((user.uid, user.gid, user.home.as_str()), (0, 0, "/root"));
        assert_eq!(user.groups, vec![10]);
    }

    #[test]
    fn name_brings_primary_gid_home_and_membership_groups_first_match_wins() {
        let user = resolve("app").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(user.groups, vec![10, 29]);
        assert_eq!(user.process_groups(), vec![1000, 10, 29]);
    }

    #[test]
    fn explicit_group_replaces_gid_and_drops_supplementary_groups() {
        let user = resolve("app:staff").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 50));
        assert!(user.groups.is_empty());
        let user = resolve("app:4242").unwrap();
        assert_eq!(user.gid, 4242);
    }

    #[test]
    fn unknown_numeric_ids_pass_through_with_defaults() {
        let user = resolve("4000:4001").unwrap();
        assert_eq!(
            user,
            ExecUser {
                uid: 4000,
                gid: 4001,
                groups: vec![],
                home: "/".into()
            }
        );
        // A known uid given as a number still gets its entry's gid, home and groups.
        let user = resolve("1000").unwrap();
        assert_eq!((user.gid, user.groups.clone()), (1000, vec![10, 29]));
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let error = resolve("nobody-here").unwrap_err();
        assert_eq!(
            error,
            UserError::NoSuchUser {
                name: "nobody-here".into()
            }
        );
        assert!(error.to_string().contains("numeric uid"));
        let error = resolve("app:nogroup").unwrap_err();
        assert_eq!(
            error,
            UserError::NoSuchGroup {
                name: "nogroup".into()
            }
        );
    }

    #[test]
    fn missing_files_allow_numeric_ids_only() {
        assert_eq!(resolve_user("", None, None).unwrap().uid, 0);
        assert_eq!(resolve_user("12:34", None, None).unwrap().gid, 34);
        assert!(resolve_user("app", None, None).is_err());
        assert!(resolve_user("0:wheel", Some(PASSWD), None).is_err());
    }

    #[test]
    fn ids_beyond_i32_are_refused() {
        let error = resolve("2147483648").unwrap_err();
        assert!(matches!(error, UserError::OutOfRange { kind: "user", .. }));
    }
}
