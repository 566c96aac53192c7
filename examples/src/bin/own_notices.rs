//! Notices from a source of your own — here an HTTP webhook that your fleet tooling POSTs to —
//! on a clock of your own, with no tokio: the engine is runtime-agnostic and this program
//! drives it with `futures`' executor and threads.
//!
//! It listens on 127.0.0.1 (an ephemeral port), POSTs itself one notice as your tooling would
//! (`{"instance": "i-web-spot-0", "kind": "rebalance"}`), answers `202 Accepted`, and feeds the
//! notice to the engine over in-memory ports: the spot group is raised by one, the at-risk
//! node drained and the pre-scale paid back.
//!
//! ```text
//! cargo run -p spotguard-examples --bin own_notices
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::executor::block_on;
use spotguard_core::memory::{MemoryCloud, MemoryCluster, MemoryLedgerStore};
use spotguard_core::{
    Clock, Config, Engine, GroupPair, LocalScaleLock, Notice, NoticeKind, RebalanceOutcome,
};

/// A clock of your own: the OS clock, and sleeps served by a thread that wakes the future.
struct ThreadClock;

#[async_trait]
impl Clock for ThreadClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    async fn sleep(&self, duration: Duration) {
        let (done, wait) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            let _ = done.send(());
        });
        let _ = wait.await;
    }
}

/// Reads one webhook request and turns its JSON body into a notice, answering 202, or 400 with
/// what was wrong.
fn accept(mut stream: TcpStream) -> Option<Notice> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let parsed: Result<Notice, String> = serde_json::from_slice::<serde_json::Value>(&body)
        .map_err(|e| format!("body is not JSON: {e}"))
        .and_then(|v| {
            let instance = v["instance"].as_str().ok_or("no \"instance\"")?.to_string();
            match v["kind"].as_str() {
                Some("rebalance") => Ok(Notice {
                    instance_id: instance,
                    kind: NoticeKind::Rebalance,
                    notice_time: SystemTime::now(),
                }),
                other => Err(format!("unknown \"kind\" {other:?}")),
            }
        });
    let (status, notice) = match parsed {
        Ok(n) => ("202 Accepted", Some(n)),
        Err(e) => {
            eprintln!("webhook: refused: {e}");
            ("400 Bad Request", None)
        }
    };
    let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
    notice
}

fn main() {
    // The source: a webhook on loopback, handing notices over a channel.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    let (notices, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Some(n) = accept(stream) {
                let _ = notices.send(n);
            }
        }
    });
    println!("webhook listening on http://{addr}/notice");

    // Your tooling, POSTing one notice.
    let body = r#"{"instance": "i-web-spot-0", "kind": "rebalance"}"#;
    let mut client = TcpStream::connect(addr).unwrap();
    write!(
        client,
        "POST /notice HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    BufReader::new(client).read_line(&mut answer).unwrap();
    println!("tooling: POST /notice -> {}", answer.trim());

    // The engine, over in-memory ports and the clock above.
    let cloud = MemoryCloud::new(&[("web-spot", 2, 10), ("web-od", 0, 10)]);
    let cluster = MemoryCluster::default();
    cluster.sync_nodes(&cloud);
    let config = Config {
        groups: vec![GroupPair {
            spot: "web-spot".into(),
            on_demand: "web-od".into(),
        }],
        ..Config::default()
    };
    let engine = Engine::new(
        config,
        &cloud,
        &cluster,
        ThreadClock,
        MemoryLedgerStore::default(),
        LocalScaleLock::default(),
    );
    let notice = received
        .recv_timeout(Duration::from_secs(10))
        .expect("a notice from the webhook");
    println!(
        "engine: rebalance recommendation for {}",
        notice.instance_id
    );
    let outcome = block_on(engine.handle_notice(&notice)).expect("phase 1");
    let RebalanceOutcome::Handled {
        replacement,
        paid_back,
        ..
    } = &outcome
    else {
        panic!("expected the notice handled, got {outcome:?}");
    };
    println!("engine: replaced by {replacement}; pre-scale paid back: {paid_back}");
    let spot = cloud.group("web-spot");
    assert!(*paid_back && !spot.holds("i-web-spot-0") && spot.desired == 2);
    println!(
        "end: web-spot at {} instances, the at-risk one gone",
        spot.desired
    );
}
