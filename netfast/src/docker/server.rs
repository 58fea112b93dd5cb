//! The plugin's HTTP server: axum on a tokio unix socket, one route per method of the
//! protocol, each call handed to one worker thread that owns the loader (calls run one at a
//! time, in the order they came, as netfast commands do under the host's lock).

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tokio::sync::oneshot;

use super::{
    api::ErrorResponse,
    driver::{Answer, Call, Driver},
};
use crate::error::{Error, Result};

/// Where Docker finds the plugin: `<name>.sock` in this directory makes driver `<name>`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/netfast.sock";

/// The media type of the plugin protocol's answers.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

type Job = (Call, oneshot::Sender<Answer>);

/// Serves the remote driver protocol on `socket` until SIGTERM or SIGINT, then removes the
/// socket. What it made stays: networks, containers and the dataplane outlive the plugin.
/// `dockerd`: the API socket of the Docker daemon it serves, asked once (when it answers)
/// which of the networks netfast served when the plugin started it still has: the others
/// are deleted (see [`forget_what_docker_forgot`]).
pub fn serve(socket: &Path, dockerd: Option<&Path>) -> Result<()> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let (ready_tx, ready) = mpsc::sync_channel::<Result<(String, Vec<String>)>>(1);
    // The worker is made on this thread's network namespace (the host's), as every thread.
    let worker = std::thread::Builder::new()
        .name("docker-driver".into())
        .spawn(move || {
            let driver = match Driver::new() {
                Ok(d) => {
                    // A state it cannot read now is no reason not to serve: each call then
                    // says what is wrong with it.
                    let served = d.served_networks().unwrap_or_else(|e| {
                        log::warn!(
                            "not asking dockerd which networks it still has: {}",
                            crate::error::report(&e)
                        );
                        Vec::new()
                    });
                    let _ = ready_tx.send(Ok((d.loader().host.describe(), served)));
                    d
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for (call, reply) in queue {
                let what = call.describe();
                // A bug in one call must not take the driver down with every later call.
                let answer =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.handle(call)))
                        .unwrap_or_else(|_| {
                            Answer::error("netfast failed (a bug in netfast: see its log)")
                        });
                for line in &answer.done {
                    println!("{what}: {line}");
                }
                let _ = reply.send(answer);
            }
        })
        .map_err(|source| Error::Io {
            context: "starting the driver's thread".into(),
            source,
        })?;
    let (host, served) = ready.recv().map_err(|_| Error::Io {
        context: "starting the driver".into(),
        source: io::Error::other("the driver's thread ended"),
    })??;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the plugin's runtime".into(),
            source,
        })?;
    // The thread that asks dockerd sends through this, while it is there: taken away at
    // the end, so that the worker's queue ends though dockerd never answered.
    let asker = Arc::new(Mutex::new(Some(jobs.clone())));
    let served = rt.block_on(async {
        let listener = bind(socket)?;
        println!(
            "netfast docker-plugin: listening on {} for {host}",
            socket.display()
        );
        match dockerd {
            Some(api) => forget_what_docker_forgot(&asker, api.to_owned(), served),
            None => log::info!(
                "not asking dockerd which networks it still has (--keep-unlisted-networks, or \
                 a --socket of one's own without --docker-socket): a network whose \
                 DeleteNetwork died early stays"
            ),
        }
        axum::serve(listener, router(jobs))
            .with_graceful_shutdown(crate::agent::stop_signal())
            .await
            .map_err(|source| Error::Io {
                context: format!("serving {}", socket.display()),
                source,
            })
    });
    // The socket goes with the plugin: Docker then waits for the next one, not for a corpse.
    let _ = std::fs::remove_file(socket);
    asker.lock().unwrap_or_else(PoisonError::into_inner).take();
    let _ = worker.join();
    served?;
    println!("netfast docker-plugin: stopped; networks and containers keep running");
    Ok(())
}

/// Once dockerd at `api` answers (asked again and again until it does, on a thread of its
/// own: Docker may be waiting for the plugin to start), the Docker networks among `served`
/// (those netfast served when the plugin started, by ID) that dockerd no longer lists are
/// deleted, through the worker as a call. Docker deletes a network from its store even when
/// the driver's DeleteNetwork failed and never asks again; a delete killed before it
/// recorded its intent has changed nothing, and the network would stay for good. Only
/// networks served at the start, and not named by a call since: one created since, or whose
/// create Docker retried across the restart, may not be in dockerd's list yet (the driver
/// keeps those, [`Call::Forgotten`]). The thread sends through `jobs` while it holds a
/// sender; once the plugin stops, it stops asking.
fn forget_what_docker_forgot(
    jobs: &Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    api: PathBuf,
    served: Vec<String>,
) {
    if served.is_empty() {
        return;
    }
    let jobs = Arc::clone(jobs);
    let sender = move || jobs.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let spawned = std::thread::Builder::new()
        .name("dockerd-networks".into())
        .spawn(move || {
            let mut wait = Duration::from_millis(500);
            let mut told = false;
            let listed = loop {
                match super::dockerd::network_ids(&api) {
                    Ok(listed) => break listed,
                    Err(e) => {
                        if told {
                            log::debug!("{e}");
                        } else {
                            log::warn!(
                                "{e}; asking again until it answers, to delete the networks \
                                 Docker no longer has"
                            );
                            told = true;
                        }
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(30));
                        if sender().is_none() {
                            return;
                        }
                    }
                }
            };
            let gone: Vec<String> = served
                .into_iter()
                .filter(|id| !listed.contains(id))
                .collect();
            if gone.is_empty() {
                println!(
                    "netfast docker-plugin: dockerd still has every Docker network netfast served"
                );
                return;
            }
            let (reply, answer) = oneshot::channel();
            if let Some(jobs) = sender()
                && jobs.send((Call::Forgotten(gone), reply)).is_ok()
            {
                drop(jobs);
                let _ = answer.blocking_recv();
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot ask dockerd for its networks: starting a thread: {e}");
    }
}

fn router(jobs: mpsc::Sender<Job>) -> Router {
    let mut router = Router::new();
    for path in Call::PATHS {
        router = router.route(
            path,
            post(move |State(jobs): State<mpsc::Sender<Job>>, body: Bytes| {
                dispatch(jobs, path, body)
            }),
        );
    }
    // libnetwork takes this exact answer for "not implemented" and goes on without it.
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .with_state(jobs)
}

async fn dispatch(jobs: mpsc::Sender<Job>, path: &'static str, body: Bytes) -> Response {
    let call = match Call::decode(path, &body) {
        Ok(c) => c,
        Err(err) => {
            log::warn!("{path}: {err}");
            return json(StatusCode::BAD_REQUEST, &ErrorResponse { err });
        }
    };
    let (reply, answer) = oneshot::channel();
    if jobs.send((call, reply)).is_err() {
        let err = "the driver has stopped".to_owned();
        return json(StatusCode::SERVICE_UNAVAILABLE, &ErrorResponse { err });
    }
    match answer.await {
        Ok(a) => json(StatusCode::OK, &a.body),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &ErrorResponse {
                err: "the driver stopped while answering".into(),
            },
        ),
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("answers serialize");
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response()
}

/// The listening socket at `path`, 0600 (whoever connects drives root's networking), in a
/// directory created if missing. A socket left by a plugin that died is replaced; one that
/// answers, or anything else at that path, is refused.
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    let err = |what: String| {
        move |source| Error::Io {
            context: what,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err(format!("creating {}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Settings(format!(
                    "something already answers on {}: another netfast docker-plugin? Stop it, \
                     or pass another --socket",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(err(format!("removing the stale socket {}", path.display())))?;
        }
        Ok(_) => {
            return Err(Error::Settings(format!(
                "{} exists and is not a socket; remove it, or pass another --socket",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("looking at {}", path.display()))(e)),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(err(format!("listening on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err(format!("restricting {}", path.display())))?;
    Ok(listener)
}

/// The default socket, as a path.
pub fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::unix::net::UnixStream,
    };

    use super::*;

    /// A plain HTTP/1.1 POST over the socket, as Docker's plugin client sends it: the status
    /// line and the body.
    fn post(socket: &Path, path: &str, body: &str) -> (String, String) {
        let mut s = UnixStream::connect(socket).expect("connect");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: plugin\r\nAccept: {CONTENT_TYPE}\r\n\
             Content-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        let status = answer.lines().next().unwrap_or_default().to_owned();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn the_socket_answers_docker_and_refuses_a_second_plugin() {
        let dir = std::env::temp_dir().join(format!("netfast-plugin-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("plugins/netfast.sock");
        let (jobs, queue) = mpsc::channel::<Job>();
        // Answers the calls that need no host: what Docker asks first.
        let worker = std::thread::spawn(move || {
            let driver = Driver::new().expect("a driver");
            for (call, reply) in queue {
                let _ = reply.send(driver.handle(call));
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = rt.block_on(async { bind(&socket) }).expect("bind");
        let server = std::thread::spawn(move || {
            rt.block_on(async {
                axum::serve(listener, router(jobs))
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let mode = std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (status, body) = post(&socket, "/Plugin.Activate", "");
        assert!(status.contains("200"), "{status}");
        let json = |b: &str| serde_json::from_str::<serde_json::Value>(b).expect("JSON");
        assert_eq!(
            json(&body),
            serde_json::json!({"Implements": ["NetworkDriver"]})
        );
        let (_, body) = post(&socket, "/NetworkDriver.GetCapabilities", "null");
        assert_eq!(
            json(&body),
            serde_json::json!({"Scope": "local", "ConnectivityScope": "local"})
        );
        let (status, body) = post(&socket, "/NetworkDriver.Join", "{nope");
        assert!(
            status.contains("400") && body.contains("not valid JSON"),
            "{status} {body}"
        );
        // libnetwork reads this exact body as "not implemented".
        let (status, body) = post(&socket, "/NetworkDriver.AllocateNetwork", "{}");
        assert!(
            status.contains("404") && body.contains("404 page not found"),
            "{status}"
        );
        // A second plugin on the same socket is refused while the first answers.
        let e = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { bind(&socket) })
            .map(|_| ())
            .unwrap_err();
        assert!(crate::error::report(&e).contains("already answers"), "{e}");
        let _ = stop.send(());
        server.join().expect("server").expect("served");
        worker.join().expect("worker");
        // What a dead plugin left is replaced; anything else at the path is refused.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        assert!(socket.exists(), "a plugin that died leaves its socket");
        rt.block_on(async { bind(&socket) })
            .expect("a stale socket is replaced");
        std::fs::remove_file(&socket).expect("rm");
        std::fs::write(&socket, "").expect("a regular file");
        let e = rt
            .block_on(async { bind(&socket) })
            .map(|_| ())
            .unwrap_err();
        assert!(crate::error::report(&e).contains("is not a socket"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
