//! Binary upgrade with no refused connection and no cut stream, the way nginx does it: `SIGUSR2` makes the running
//! relay start its successor (the binary now at its own path, with its own arguments) and hand it the public
//! listening socket itself. Both accept from that one socket, so no connection waits in a queue that closes. Once the
//! successor prints `listening on`, the old relay stops accepting and drains its streams to their natural end
//! (bounded by `shutdown_grace_ms`, as for `SIGTERM`), then exits. When the successor fails to start (exits, or says
//! nothing for a minute), the old relay keeps serving and logs why.
//!
//! The socket travels as the successor's standard input (`SSEGATE_LISTENER=stdin`): std passes it to the child
//! without any fd juggling, and the child takes it back with a safe `dup`. The admin listener is not handed over:
//! each process binds its own, with `SO_REUSEPORT` (see [`super::Listeners::bind`]), so both answer on the admin
//! address while the old one drains. Under systemd the successor tells the service manager it is the main process
//! now (`MAINPID=`, [`notify_ready`]).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The environment variable that tells a relay its public listener is its standard input.
pub const LISTENER_VAR: &str = "SSEGATE_LISTENER";

/// How long a successor has to say it listens.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The public listening socket handed over by the relay this one succeeds (`SSEGATE_LISTENER=stdin`), if any.
pub fn inherited_listener() -> std::io::Result<Option<TcpListener>> {
    if std::env::var_os(LISTENER_VAR).is_none_or(|v| v != "stdin") {
        return Ok(None);
    }
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let socket = socket2::Socket::from(fd);
    if !socket.is_listener()? {
        return Err(std::io::Error::other(format!(
            "{LISTENER_VAR}=stdin but standard input is not a listening socket"
        )));
    }
    let listener = std::net::TcpListener::from(socket);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener).map(Some)
}

/// Where the binary to start is: this process's own path (a binary replaced by renaming a new one over it reads as
/// `PATH (deleted)` in `/proc/self/exe`; the new one is at `PATH`).
fn own_path() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Starts the successor with `listener` as its standard input and waits until it listens. `Ok`: it serves (its
/// pid); the caller stops accepting and drains.
async fn start_successor(listener: &OwnedFd) -> std::io::Result<u32> {
    let path = own_path()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut child = tokio::process::Command::new(&path)
        .args(&args)
        .env(LISTENER_VAR, "stdin")
        .stdin(Stdio::from(listener.try_clone()?))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(false)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, binary = %path.display(), "upgrade: successor started, waiting for it to listen");
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("listening on") {
                return Ok(line);
            }
        }
        Err(std::io::Error::other("it ended without listening"))
    };
    match tokio::time::timeout(READY_WITHIN, listening).await {
        Ok(Ok(line)) => {
            tracing::info!(pid, announced = %line, "upgrade: successor serves; this relay stops accepting and drains");
            // It wrote its whole announcement at once and writes nothing more to stdout: closing the pipe here
            // cannot block it. It outlives this process: nothing waits for it.
            drop((lines, child));
            Ok(pid)
        }
        Ok(Err(e)) => {
            let status = child.wait().await.ok();
            Err(std::io::Error::other(format!("{e} (exit: {status:?})")))
        }
        Err(_) => {
            let _ = child.start_kill();
            Err(std::io::Error::other(format!(
                "it did not listen within {READY_WITHIN:?}; stopped it"
            )))
        }
    }
}

/// On each `SIGUSR2` until `done`: starts a successor on `listener` (a handle on the public listening socket) and,
/// once it serves, cancels `stop` (this relay stops accepting and drains). A failed start leaves this relay serving.
pub async fn upgrade_on_signal(
    listener: OwnedFd,
    stop: CancellationToken,
    done: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGUSR2: binary upgrades are off");
            return;
        }
    };
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = stop.cancelled() => return,
            got = usr2.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!(signal = "SIGUSR2", "upgrade: starting the binary at this relay's path");
                match start_successor(&listener).await {
                    Ok(_) => {
                        stop.cancel();
                        return;
                    }
                    Err(e) => tracing::error!(error = %e, "upgrade failed; this relay keeps serving"),
                }
            }
        }
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process serves and is the service's main process,
/// when it runs under one (`NOTIFY_SOCKET`): after an upgrade the main process is the successor, so the old one's
/// exit does not read as the service stopping.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)?;
            }
            None => {
                socket.send_to(message.as_bytes(), PathBuf::from(&path))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
