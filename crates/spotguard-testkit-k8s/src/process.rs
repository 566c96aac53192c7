//! Child processes that end with the test binary.
//!
//! Rust never drops statics, so a control plane shared by all tests of a binary cannot stop
//! its processes in a destructor. Instead each component runs under a small `sh` wrapper whose
//! standard input is a pipe from the test binary, never written to: when the test binary exits
//! for any reason (success, panic, `SIGKILL`), the kernel closes the pipe's write end, the
//! wrapper reads end-of-file, kills its component (`SIGKILL`: its state is thrown away, so
//! there is nothing to shut down gracefully and the processes are gone at once) and exits. A janitor started the same way removes the temporary folder once the
//! components are gone.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// Runs `"$@"` with `/dev/null` as its input, records its pid, and kills it when the wrapper's
/// own input (the pipe from the test binary) reaches end-of-file. `read` is a shell builtin, so
/// no extra process lingers once the component exits on its own.
const WRAPPER: &str = r#"
pidfile="$1"; shift
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
echo "$pid" >"$pidfile"
(
  while read -r _ <&3; do :; done
  kill -KILL "$pid" 2>/dev/null
) </dev/null &
watcher=$!
exec 3<&-
wait "$pid"
rc=$?
rm -f "$pidfile"
kill "$watcher" 2>/dev/null
exit "$rc"
"#;

/// Waits for end-of-file on its input, then for the components' pid files to go (at most
/// 10 s; they go as soon as the components are killed), then removes the folder, unless its
/// second argument is `keep`. It ignores interrupts so that a Ctrl-C, which also reaches it,
/// still leaves it to clean up when the test binary is gone.
const JANITOR: &str = r#"
dir="$1"
trap '' INT HUP
while read -r _; do :; done
i=0
while [ -n "$(ls -A "$dir/pids" 2>/dev/null)" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ "$2" = keep ] || rm -rf "$dir"
"#;

/// A running component under its wrapper.
pub(crate) struct Supervised {
    /// The component's name, as in its log file's name.
    pub(crate) name: String,
    /// Its combined standard output and error.
    pub(crate) log: PathBuf,
    child: Mutex<Child>,
    // Held, never written: closing it (at exit) stops the component.
    _lifeline: ChildStdin,
}

impl Supervised {
    /// Starts `program args` under the wrapper, logging to `<dir>/logs/<name>.log`.
    pub(crate) fn spawn(
        dir: &Path,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<Self, String> {
        let log = dir.join("logs").join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("duplicating {}: {e}", log.display()))?;
        let pidfile = dir.join("pids").join(name);
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg(format!("spotguard-testkit-{name}"))
            .arg(&pidfile)
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let lifeline = child.stdin.take().expect("piped stdin");
        Ok(Self {
            name: name.to_string(),
            log,
            child: Mutex::new(child),
            _lifeline: lifeline,
        })
    }

    /// `Some(description)` when the component has exited.
    pub(crate) fn exited(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown state: {e}")),
        }
    }

    /// The last `lines` lines of the component's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// Holds the janitor's input pipe for the life of the process.
pub(crate) struct Janitor {
    _child: Mutex<Child>,
    _lifeline: ChildStdin,
}

impl Janitor {
    /// Starts the janitor of `dir` (which must already hold `pids/`); with `keep` it leaves
    /// the folder in place.
    pub(crate) fn spawn(dir: &Path, keep: bool) -> Result<Self, String> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("spotguard-testkit-janitor")
            .arg(dir)
            .arg(if keep { "keep" } else { "remove" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the janitor: {e}"))?;
        let lifeline = child.stdin.take().expect("piped stdin");
        Ok(Self {
            _child: Mutex::new(child),
            _lifeline: lifeline,
        })
    }
}

/// The last `lines` lines of a file (of its last 64 KiB at most).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return format!("(unreadable log at {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Creates the folders the wrappers and the janitor use.
pub(crate) fn prepare(dir: &Path) -> Result<(), String> {
    for sub in ["logs", "pids"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("creating {sub}/: {e}"))?;
    }
    Ok(())
}
