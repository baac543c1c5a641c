//! Memory of process trees from `/proc`: proportional set size (shared pages split between their
//! users), so N instances sharing one binary are not each charged for all of it.

use std::collections::HashMap;

/// Summed PSS in bytes of `roots` and every process descended from them.
pub fn tree_pss_bytes(roots: &[u32]) -> u64 {
    descendants(roots).into_iter().map(pss_bytes).sum()
}

/// `roots` plus all their descendants (by parent PID).
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(ppid) = parent(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        stack.extend(children.get(&pid).into_iter().flatten().copied());
    }
    out
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent PID from `/proc/PID/stat` (the field after the parenthesised command name).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

fn parse_ppid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `Pss:` of `/proc/PID/smaps_rollup` in bytes (0 when the process is gone).
pub fn pss_bytes(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:") * 1024
}

/// `VmRSS:` of `/proc/PID/status` in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:") * 1024
}

fn kib_field(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_follows_a_command_name_with_spaces_and_parens() {
        assert_eq!(parse_ppid("42 (a b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn this_process_has_memory_and_is_its_own_tree() {
        let me = std::process::id();
        assert!(pss_bytes(me) > 0 && rss_bytes(me) > 0);
        assert!(descendants(&[me]).contains(&me));
        assert_eq!(tree_pss_bytes(&[]), 0);
    }
}
