//! End-to-end tests of cinfer: the acceptance test (`tests/e2e.rs`) drives [`deploy::local::Pipeline`], the code
//! `cinfer-deploy local` runs, so the README's main command and the test cannot drift apart; `tests/local_cli.rs`
//! runs `cinfer-deploy local` itself as a process. This library holds what both need besides the pipeline.

use std::time::Duration;

/// An integer from the environment, or `default`.
pub fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Prints each stage and its duration (visible with `--nocapture`/nextest's output on failure).
pub fn show_stages(stages: &[(String, Duration)]) {
    for (name, d) in stages {
        eprintln!("   {:>7.2}s  {name}", d.as_secs_f64());
    }
}

/// Pids of the live descendants of `pid` (children, grandchildren, ...), from `/proc/*/stat`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}
