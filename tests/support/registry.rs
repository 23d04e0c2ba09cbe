//! A real registry for tests: Debian's `docker-registry` on 127.0.0.1 (a free port, a temp
//! config and storage), optionally with htpasswd auth and a TLS certificate signed by a CA made
//! for the test. Killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret-pass";
const BINARY: &str = "/usr/bin/docker-registry";

/// What the registry demands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// htpasswd auth with [`USER`] / [`PASSWORD`].
    pub auth: bool,
    /// HTTPS with a certificate for 127.0.0.1 signed by [`TestRegistry::ca`].
    pub tls: bool,
}

#[derive(Debug)]
pub struct TestRegistry {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The CA that signed the registry's certificate (with `tls`).
    pub ca: Option<PathBuf>,
    pub options: Options,
    child: Child,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry, or `None` with a notice when `docker-registry` (or, for `auth`,
    /// `htpasswd`; for `tls`, `openssl`) is missing; under CI a missing tool is a failure.
    pub fn start(options: Options) -> Option<Self> {
        let tools = [
            (true, BINARY),
            (options.auth, "htpasswd"),
            (options.tls, "openssl"),
        ];
        for (needed, tool) in tools {
            if needed && !found(tool) {
                if std::env::var_os("CI").is_some() {
                    panic!("{tool} is missing and CI is set (scripts/install-deps installs it)");
                }
                eprintln!("notice: {tool} is not installed; skipping (run scripts/install-deps)");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut ca = None;
        if options.tls {
            let (cert, key, ca_cert) = make_certificates(dir.path());
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca = Some(ca_cert);
        }
        if options.auth {
            let htpasswd = dir.path().join("htpasswd");
            let output = super::run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
            std::fs::write(&htpasswd, output.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: imgb-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Self {
            host,
            ca,
            options,
            child,
            dir,
        };
        registry.wait_until_listening();
        Some(registry)
    }

    /// `USER:PASSWORD` as skopeo's `--creds` takes them, when the registry wants them.
    pub fn creds(&self) -> Option<String> {
        self.options.auth.then(|| format!("{USER}:{PASSWORD}"))
    }

    /// The registry's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                self.host,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn found(tool: &str) -> bool {
    Path::new(tool).is_file()
        || std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// A CA, and a certificate for 127.0.0.1 / localhost that it signed: (cert, key, ca).
/// A test CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 it signed, made in
/// `dir`: (cert, key, CA cert).
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        super::run(Command::new("openssl").args(args).current_dir(dir));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=imgb test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "cert.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (path("cert.pem"), path("key.pem"), path("ca.pem"))
}

/// A client certificate (`client.pem`, `client.key`) signed by the CA [`make_certificates`]
/// made in `dir`: (cert, key).
pub fn make_client_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        super::run(Command::new("openssl").args(args).current_dir(dir));
    };
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=imgb test client",
    ]);
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        "2",
        "-extfile",
        "client.cnf",
    ]);
    (dir.join("client.pem"), dir.join("client.key"))
}
