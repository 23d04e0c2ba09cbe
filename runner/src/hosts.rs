//! The contents of `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` for a step, as
//! BuildKit writes them: localhost plus the hostname and `--add-host` entries; the host's
//! resolver configuration, without loopback name servers when the step has a network
//! namespace of its own (they would be unreachable from there).

use std::net::IpAddr;

use crate::protocol::ProvidedFile;
use crate::spec::Network;

/// The three provided files for a step.
pub(crate) fn provided_files(
    hostname: &str,
    extra_hosts: &[(String, IpAddr)],
    network: Network,
    host_resolv_conf: &str,
) -> Vec<ProvidedFile> {
    vec![
        ProvidedFile {
            target: "/etc/hosts".into(),
            name: "hosts".into(),
            content: hosts(hostname, extra_hosts),
        },
        ProvidedFile {
            target: "/etc/resolv.conf".into(),
            name: "resolv.conf".into(),
            content: resolv_conf(host_resolv_conf, network),
        },
        ProvidedFile {
            target: "/etc/hostname".into(),
            name: "hostname".into(),
            content: format!("{hostname}\n"),
        },
    ]
}

fn hosts(hostname: &str, extra_hosts: &[(String, IpAddr)]) -> String {
    let mut text =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, address) in extra_hosts {
        text.push_str(&format!("{address}\t{name}\n"));
    }
    text
}

fn resolv_conf(host: &str, network: Network) -> String {
    host.lines()
        .filter(|line| network == Network::Host || !is_loopback_nameserver(line))
        .flat_map(|line| [line, "\n"])
        .collect()
}

fn is_loopback_nameserver(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next() == Some("nameserver")
        && words
            .next()
            .and_then(|address| address.parse::<IpAddr>().ok())
            .is_some_and(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_localhost_the_hostname_and_extra_hosts() {
        let extra = [("db".to_string(), "10.0.0.2".parse().unwrap())];
        let files = provided_files("box", &extra, Network::None, "");
        assert_eq!(
            files[0].content,
            "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.2\tdb\n"
        );
        assert_eq!(files[2].content, "box\n");
    }

    #[test]
    fn loopback_nameservers_are_dropped_only_outside_the_host_network() {
        let host = "search example.org\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n";
        assert_eq!(
            resolv_conf(host, Network::None),
            "search example.org\nnameserver 192.0.2.1\n"
        );
        assert_eq!(resolv_conf(host, Network::Host), host);
    }
}
