//! Running the real `kubectl` against the fake.

use std::path::{Path, PathBuf};
use std::process::Output;

/// `kubectl` with a generated kubeconfig and its own discovery cache. The binary is
/// `$SPOTGUARD_KUBECTL`, or `kubectl` on the `PATH`.
pub struct Kubectl {
    dir: PathBuf,
}

impl Kubectl {
    pub(crate) fn new(url: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("spotguard-kubectl-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create kubeconfig directory");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        Self { dir }
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The binary used.
    pub fn binary() -> String {
        std::env::var("SPOTGUARD_KUBECTL").unwrap_or_else(|_| "kubectl".into())
    }

    /// Runs `kubectl <args>` and returns its output (panics if it cannot be started).
    pub async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(Self::binary())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .env("HOME", &self.dir)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Self::binary()))
    }

    /// The directory holding the kubeconfig and cache.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
