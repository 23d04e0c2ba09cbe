//! A static HTTP server for tests of `ADD <url>`: `busybox httpd` serving a directory.

use std::path::Path;
use std::process::{Child, Command};

/// `busybox httpd` serving `dir` on 127.0.0.1; killed on drop.
pub struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    pub fn start(busybox: &Path, dir: &Path) -> HttpServer {
        // Ask the kernel for a free port, then hand it to httpd.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(busybox)
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir)
            .spawn()
            .unwrap();
        // Owned by the server from here: its Drop kills and reaps httpd, even on a panic.
        let server = HttpServer { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("busybox httpd did not start on port {port}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
