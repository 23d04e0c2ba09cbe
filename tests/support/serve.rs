//! A real `imgb serve` for tests: started on 127.0.0.1 port 0 (the port is read from its
//! startup line), killed with SIGKILL when dropped unless stopped first; and the clients the
//! build service's tests drive it with (`imgb build --remote`, curl).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// The tokens of [`tokens`]' table.
pub const WRITE_TOKEN: &str = "w-5f2b1c0d9e8a7b6c5d4e3f2a1b0c9d8e";
pub const READ_TOKEN: &str = "r-5f2b1c0d9e8a7b6c5d4e3f2a1b0c9d8e";

/// A private token file with a write and a read token; the files holding each token alone.
pub fn tokens(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    (
        write(
            "tokens",
            format!("{WRITE_TOKEN} write\n{READ_TOKEN} read\n"),
        ),
        write("write-token", format!("{WRITE_TOKEN}\n")),
        write("read-token", format!("{READ_TOKEN}\n")),
    )
}

/// The `SOURCE_DATE_EPOCH` remote and local builds share, so their images compare equal.
pub const EPOCH: &str = "1700000000";

#[derive(Debug)]
pub struct TestServer {
    /// The first listener: `127.0.0.1:PORT`, or `unix:///PATH`.
    pub addr: String,
    child: Child,
    /// What the server printed to stderr so far (its startup lines).
    pub startup: String,
    stderr: Option<BufReader<std::process::ChildStderr>>,
}

impl TestServer {
    /// Starts `imgb --root ROOT serve ARGS`, with `--listen 127.0.0.1:0` unless `args` has a
    /// `--listen`, and waits until it listens.
    pub fn start(root: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgb"));
        command.arg("--root").arg(root).arg("serve").args(args);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("imgb serve starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut startup = String::new();
        let addr = loop {
            let mut line = String::new();
            if stderr
                .read_line(&mut line)
                .expect("reading imgb serve's stderr")
                == 0
            {
                let status = child.wait().expect("imgb serve exits");
                panic!("imgb serve exited ({status}) before listening:\n{startup}");
            }
            startup.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix("imgb serve: listening on ") {
                break addr.strip_prefix("tcp://").unwrap_or(addr).to_string();
            }
        };
        Self {
            addr,
            child,
            startup,
            stderr: Some(stderr),
        }
    }

    /// A server under `dir` with TLS (certificates made in `dir/certs`) and the token table of
    /// [`tokens`]; with its CA and the write token's file. `None` without openssl.
    pub fn start_tls(dir: &Path) -> Option<(Self, PathBuf, PathBuf)> {
        super::tool("openssl")?;
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let (cert, key, ca) = super::registry::make_certificates(&certs);
        let (token_table, write_token, _) = tokens(dir);
        let server = TestServer::start(
            &dir.join("server"),
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--token-file",
                token_table.to_str().unwrap(),
            ],
        );
        Some((server, ca, write_token))
    }

    /// `http://ADDR` (or `https://` when `tls`).
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{}", if tls { "https" } else { "http" }, self.addr)
    }

    /// Sends SIGTERM and waits; returns the exit status and the rest of stderr.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = self.child.wait().expect("imgb serve exits");
        let mut rest = String::new();
        if let Some(stderr) = &mut self.stderr {
            let _ = stderr.read_to_string(&mut rest);
        }
        (status, rest)
    }

    /// Sends `kill -SIGNAL` without waiting.
    pub fn signal(&self, signal: &str) {
        super::run(
            Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]),
        );
    }

    /// Reads stderr until a line contains `needle`; returns what was read (panics at EOF).
    pub fn wait_for_stderr(&mut self, needle: &str) -> String {
        let stderr = self.stderr.as_mut().expect("stderr is piped");
        let mut read = String::new();
        loop {
            let mut line = String::new();
            if stderr
                .read_line(&mut line)
                .expect("reading imgb serve's stderr")
                == 0
            {
                panic!("imgb serve's stderr ended before {needle:?}:\n{read}");
            }
            read.push_str(&line);
            if line.contains(needle) {
                return read;
            }
        }
    }

    /// Waits for the server to exit by itself.
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("imgb serve exits")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a new connection and returns what the server answered before closing
/// (or until the read timeout): requests should say `Connection: close`.
pub fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    // The server may answer and close before reading everything (a 431 on huge headers). The
    // write side stays open: hyper drops a response in progress when the client half-closes.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of an HTTP/1.1 response's first line, 0 when there is none.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// `curl` with `args`: returns (status code, body). Status 0 means the connection failed.
pub fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `imgb --root ROOT build ARGS CONTEXT` with `SOURCE_DATE_EPOCH` set and no `IMGB_TOKEN`.
pub fn build_command(root: &Path, args: &[&str], context: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgb"));
    command
        .arg("--root")
        .arg(root)
        .arg("build")
        .args(args)
        .arg(context)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("IMGB_TOKEN");
    command
}

/// [`build_command`], run to completion.
pub fn build(root: &Path, args: &[&str], context: &Path) -> Output {
    build_command(root, args, context).output().unwrap()
}

/// `GET PATH` on the server as JSON (200 expected).
pub fn get_json(url: &str, path: &str, token: Option<&str>) -> serde_json::Value {
    let auth = token.map(|token| format!("Authorization: Bearer {token}"));
    let mut args = vec![format!("{url}{path}")];
    if let Some(auth) = auth {
        args.extend(["-H".to_string(), auth]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, body) = curl(&args);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the server lists a build in `state`; its id.
pub fn wait_for_state(url: &str, state: &str) -> String {
    for _ in 0..600 {
        let listing = get_json(url, "/v1/builds", None);
        let found = listing["builds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|build| build["state"] == state)
            .map(|build| build["id"].as_str().unwrap().to_string());
        if let Some(id) = found {
            return id;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no build reached {state}");
}

/// Waits until build `id` has started a step whose name contains `step`.
pub fn wait_for_step(url: &str, id: &str, step: &str) {
    for _ in 0..600 {
        // The stream lasts as long as the build: read what is there so far.
        let (_, events) = curl(&["--max-time", "2", &format!("{url}/v1/builds/{id}/events")]);
        if super::ran_steps(&events)
            .iter()
            .any(|name| name.contains(step))
        {
            return;
        }
    }
    panic!("build {id} never started a step like {step:?}");
}

/// Starts `imgb build --remote URL ARGS` of a build whose RUN step is `busybox sleep SECONDS`
/// (a number other tests do not use, to find its process).
pub fn start_slow_build(
    dir: &Path,
    busybox: &Path,
    url: &str,
    seconds: u32,
    args: &[&str],
) -> Child {
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"{seconds}\"]\n"
    );
    let context = super::busybox_context(&dir.join("slow"), busybox, &dockerfile);
    build_command(
        &dir.join("client"),
        &[&["--remote", url, "--progress", "plain"][..], args].concat(),
        &context,
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// The root filesystem tar `archive` unpacked beside it.
pub fn unpacked(archive: &Path) -> PathBuf {
    let dir = archive.with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    super::run(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&dir),
    );
    dir
}
