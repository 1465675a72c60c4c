//! The guest's memory and CPU use, from `/proc`.

use std::fs;

use safe_coder_vm_protocol::UsageReport;

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Reads `/proc/meminfo`, `/proc/stat` and `/proc/uptime`. Fields it cannot read are 0.
pub fn report(running_execs: u32) -> UsageReport {
    let mut r = UsageReport {
        running_execs,
        ..Default::default()
    };
    if let Ok(text) = fs::read_to_string("/proc/meminfo") {
        r.memory_total_bytes = meminfo_kib(&text, "MemTotal").unwrap_or(0) * 1024;
        r.memory_available_bytes = meminfo_kib(&text, "MemAvailable").unwrap_or(0) * 1024;
    }
    if let Ok(text) = fs::read_to_string("/proc/stat") {
        // USER_HZ is 100 on every Linux architecture that matters here: one tick, 10 ms.
        let tick_ms = 10u64;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("cpu") => {
                    let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                    // user nice system idle iowait irq softirq steal
                    let get = |i: usize| v.get(i).copied().unwrap_or(0);
                    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
                    r.cpu_busy_ms = busy * tick_ms;
                    r.cpu_total_ms = (busy + get(3) + get(4)) * tick_ms;
                }
                Some(name) if name.starts_with("cpu") => r.cpus += 1,
                _ => {}
            }
        }
    }
    if let Ok(text) = fs::read_to_string("/proc/uptime") {
        if let Some(secs) = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
        {
            r.uptime_ms = (secs * 1000.0) as u64;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn meminfo_fields_are_found_by_exact_key() {
        let text = "MemTotal:        2048 kB\nMemFree:  10 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(super::meminfo_kib(text, "MemTotal"), Some(2048));
        assert_eq!(super::meminfo_kib(text, "MemAvailable"), Some(1024));
        assert_eq!(super::meminfo_kib(text, "Mem"), None);
    }

    #[test]
    fn the_report_reads_this_machine() {
        let r = super::report(3);
        assert!(r.memory_total_bytes > 0 && r.memory_available_bytes <= r.memory_total_bytes);
        assert!(r.cpus >= 1 && r.cpu_total_ms >= r.cpu_busy_ms && r.cpu_total_ms > 0);
        assert!(r.uptime_ms > 0);
        assert_eq!(r.running_execs, 3);
    }
}
