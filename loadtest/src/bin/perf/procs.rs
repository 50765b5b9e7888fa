//! The processes of a side-by-side run: mock, relay and nginx on loopback, each stopped by its PID; and what
//! `/proc` says about them (CPU time from per-thread `schedstat`, in nanoseconds; RSS).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// A child process, killed (by PID) on drop.
pub struct Proc {
    pub addr: SocketAddr,
    child: Child,
    /// nginx: the master's PID; workers are found as its children.
    pub tree: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// This process and, for nginx, its workers.
    fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut pids = vec![root];
        if self.tree {
            pids.extend(children(root));
        }
        pids
    }

    /// Nanoseconds on CPU, all threads of all its processes.
    pub fn cpu_ns(&self) -> u64 {
        self.pids().iter().map(|p| cpu_ns(*p)).sum()
    }

    /// Resident memory in KiB, all its processes.
    pub fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|p| rss_kib(*p)).sum()
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(str::to_owned))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| {
            let path = t.ok()?.path().join("schedstat");
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Spawns a binary that prints `listening on ADDR`.
pub fn spawn_listening(mut cmd: Command, log: &Path) -> Result<Proc> {
    cmd.stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .stdin(Stdio::null());
    let mut child = cmd.spawn().context("spawning")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected {line:?}"))?;
    Ok(Proc {
        addr: addr.parse()?,
        child,
        tree: false,
    })
}

/// nginx from `deploy/nginx/ssegate.conf` (ports changed) in front of `upstream`.
pub fn nginx(site: &Path, upstream: SocketAddr, dir: &Path) -> Result<Proc> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let binary = binary.context("nginx is not installed (apt-get install nginx-light)")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let text = std::fs::read_to_string(site)?;
    let text = text
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    std::fs::create_dir_all(dir)?;
    let d = dir.display();
    std::fs::write(dir.join("site.conf"), text)?;
    let main = format!(
        "worker_processes auto;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main)?;
    let child = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let proc = Proc {
        addr,
        child,
        tree: true,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(proc);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!(
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    )
}
