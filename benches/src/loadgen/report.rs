//! Printing: one line of figures per target, then each figure's ratio to direct
//! and to each peer.

use super::workload::Figures;

/// One target's run of one workload.
pub struct Row {
    /// `direct`, `tunnel`, `sync=always`, `squid`, ...
    pub label: String,
    /// The name in ratio rows: `direct`, `always`, `squid`, ...
    pub short: &'static str,
    pub portcullis: bool,
    pub f: Figures,
    /// (CPU seconds over the run, peak RSS in KiB) of a proxy; `None` for direct.
    pub usage: Option<(f64, u64)>,
    /// A line printed under this one (the mint run's RSS growth).
    pub note: Option<String>,
}

impl Row {
    fn cpu_ms_per_req(&self) -> Option<f64> {
        self.usage
            .map(|(secs, _)| secs * 1000.0 / (self.f.requests.max(1) as f64))
    }
}

pub fn line(r: &Row) {
    let f = &r.f;
    let usage = r.usage.map_or(String::new(), |(_, hwm)| {
        format!(
            "  proxy CPU {:.3} ms/req, peak RSS {} MiB",
            r.cpu_ms_per_req().unwrap_or(0.0),
            hwm / 1024
        )
    });
    println!(
        "  {:<14} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p999 {:>7.3} ms  {:>8.1} MiB/s  errors {}{usage}",
        r.label,
        f.rps(),
        f.ms(0.5),
        f.ms(0.99),
        f.ms(0.999),
        f.mib_per_sec(),
        f.errors,
    );
    if let Some(e) = &f.first_error {
        println!("  {:<14} first error: {e}", "");
    }
    if let Some(n) = &r.note {
        println!("  {:<14} {n}", "");
    }
}

/// Every row against `direct`, and each Portcullis row against each peer.
pub fn ratios(rows: &[Row]) {
    let direct = rows.iter().find(|r| r.short == "direct");
    let peers: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.portcullis && r.short != "direct")
        .collect();
    let mut pairs: Vec<(&Row, &Row)> = Vec::new();
    for r in rows.iter().filter(|r| r.short != "direct") {
        if let Some(d) = direct {
            pairs.push((r, d));
        }
        if r.portcullis {
            pairs.extend(peers.iter().map(|p| (r, *p)));
        }
    }
    if pairs.is_empty() {
        return;
    }
    println!(
        "  {:<18} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9}",
        "ratio A/B", "req/s", "p50", "p99", "p999", "MiB/s", "CPU/req", "peak RSS"
    );
    for (a, b) in pairs {
        let x = |va: f64, vb: f64| {
            if vb > 0.0 && va > 0.0 {
                format!("{:.2}x", va / vb)
            } else {
                "-".to_owned()
            }
        };
        let cpu = match (a.cpu_ms_per_req(), b.cpu_ms_per_req()) {
            (Some(ca), Some(cb)) => x(ca, cb),
            _ => "-".to_owned(),
        };
        let rss = match (a.usage, b.usage) {
            (Some((_, ha)), Some((_, hb))) => x(ha as f64, hb as f64),
            _ => "-".to_owned(),
        };
        let mib = if a.f.bytes > 0 && b.f.bytes > 0 {
            x(a.f.mib_per_sec(), b.f.mib_per_sec())
        } else {
            "-".to_owned()
        };
        println!(
            "  {:<18} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9}",
            format!("{}/{}", a.short, b.short),
            x(a.f.rps(), b.f.rps()),
            x(a.f.ms(0.5), b.f.ms(0.5)),
            x(a.f.ms(0.99), b.f.ms(0.99)),
            x(a.f.ms(0.999), b.f.ms(0.999)),
            mib,
            cpu,
            rss,
        );
    }
}
