//! After fork the child leaves what it inherited alone and connects anew; the parent's
//! connection keeps working. A test binary of its own: it forks, so no other test's threads
//! may be running (a child of a multi-threaded parent may only do async-signal-safe things
//! until it execs, and this child makes a runtime and connects).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use featureproxy_native::core::{fork_generation, Core, Options, Outcome};
use featureproxy_protocol::{decode_frame, HelloReply, Limits, Request, Response};

fn ping(core: &Core) -> bool {
    let live = match core.current() {
        Ok(Some(live)) => live,
        Ok(None) => match core.open(|| Ok::<(), ()>(())) {
            Outcome::Done(Ok(live)) => core.install(live).unwrap(),
            _ => return false,
        },
        Err(_) => return false,
    };
    matches!(
        core.call(
            &live,
            Duration::from_secs(5),
            |c| c.ping(),
            || Ok::<(), ()>(())
        ),
        Outcome::Done(Ok(_))
    )
}

#[test]
fn a_forked_child_connects_anew_and_the_parent_keeps_its_connection() {
    // The server runs in a child process of its own, so that this process has no other thread
    // when it forks.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // SAFETY: single-threaded here; the child only serves and exits.
    let server = unsafe { libc::fork() };
    if server == 0 {
        let accepted = Arc::new(AtomicUsize::new(0));
        for conn in listener.incoming().take(3) {
            let mut conn = conn.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Ok(Some(f)) = decode_frame(&mut buf, u32::MAX) {
                        let resp = match Request::decode(&f, &Limits::default()) {
                            Ok(Request::Hello(_)) => Response::Hello(HelloReply {
                                version: 1,
                                shard: 0,
                                max_frame: 1 << 20,
                                max_batch: 64,
                                server: "forked/1".into(),
                            }),
                            _ => Response::Pong,
                        };
                        let mut out = BytesMut::new();
                        resp.encode(&mut out, f.request_id);
                        let _ = conn.write_all(&out);
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
        thread::sleep(Duration::from_secs(3));
        // SAFETY: ends the server child without running the test harness's exit path.
        unsafe { libc::_exit(0) };
    }
    drop(listener);

    let core = Core::new(Options {
        connect_to: format!("127.0.0.1:{port}"),
        token: None,
        client_name: "fork-test".into(),
        timeout: Duration::from_secs(5),
        pool_size: 1,
        retry_overloaded: true,
        overload_backoff: Duration::from_millis(20),
        tls: None,
    });
    assert!(ping(&core), "the parent connects");
    let before = fork_generation();
    let first = core.current().unwrap().unwrap();

    // SAFETY: this process has one thread (the runtime has none of its own).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // The inherited client is not ours: it is leaked, and a call connects anew.
        let ok = fork_generation() == before + 1
            && !first.is_ours()
            && matches!(core.current(), Ok(None))
            && ping(&core)
            && core.current().unwrap().unwrap().is_ours();
        std::mem::forget(first);
        // SAFETY: leave without unwinding into the harness.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed: {status}"
    );
    // The parent's own connection was not touched: the same client still answers.
    assert!(first.is_ours());
    assert!(ping(&core), "the parent's connection still works");
    assert!(Arc::ptr_eq(&first, &core.current().unwrap().unwrap()));
    drop(first);
    core.close();
    // SAFETY: reaps the server child.
    unsafe {
        libc::kill(server, libc::SIGKILL);
        libc::waitpid(server, &mut status, 0);
    }
}
