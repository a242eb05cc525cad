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

use portcullis_rules::{
    detect_injection_layers, detect_injection_with, normalize_text, Layers, Sensitivity,
};

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
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/eval")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.splitn(5, '\t').collect();
            assert_eq!(cols.len(), 5, "{name}: {line}");
            let text = unescape(cols[4]);
            let key = if cols[3].is_empty() {
                text.as_str()
            } else {
                cols[3]
            };
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
            report
                .fp_by_category
                .entry(row.category.clone())
                .or_default(),
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
        let _ = writeln!(
            s,
            "  category {k:<12} recall {:.3} ({}/{})",
            t.rate(),
            t.hit,
            t.total
        );
    }
    for (k, t) in &r.by_lang {
        let _ = writeln!(
            s,
            "  lang     {k:<12} recall {:.3} ({}/{})",
            t.rate(),
            t.hit,
            t.total
        );
    }
    for (k, t) in &r.fp_by_category {
        let _ = writeln!(
            s,
            "  benign   {k:<20} fp {:.3} ({}/{})",
            t.rate(),
            t.hit,
            t.total
        );
    }
    s
}

/// Writes the *training* split's misses and false positives to a file, for writing
/// patterns. The held-out split is never written out.
fn dump_training(attacks: &[Row], benign: &[Row], path: &str) {
    let mut out = String::new();
    for row in attacks.iter().filter(|r| !r.held_out) {
        if detect_injection_with(&row.text, Sensitivity::Balanced).is_empty() {
            let _ = writeln!(
                out,
                "MISS\t{}\t{}\t{}",
                row.category,
                row.lang,
                row.text.replace('\n', "\\n")
            );
        }
    }
    for row in benign.iter().filter(|r| !r.held_out) {
        let ids = detect_injection_with(&row.text, Sensitivity::Balanced);
        if !ids.is_empty() {
            let _ = writeln!(
                out,
                "FP\t{}\t{:?}\t{}",
                row.category,
                ids,
                row.text.replace('\n', "\\n")
            );
        }
    }
    std::fs::write(path, out).unwrap();
}

/// The training split alone: its table, and its misses and false positives written to
/// `PORTCULLIS_EVAL_DUMP_TRAINING` if set. For writing patterns without looking at the
/// held-out figures (the held-out split is neither measured nor written here).
#[test]
#[ignore = "prints the training split only; run by hand while writing patterns"]
fn training_split_only() {
    let attacks = load("attacks.tsv");
    let benign = load("benign.tsv");
    if let Ok(path) = std::env::var("PORTCULLIS_EVAL_DUMP_TRAINING") {
        dump_training(&attacks, &benign, &path);
    }
    let train = measure(&attacks, &benign, false, Sensitivity::Balanced);
    println!("{}", table("training split (balanced)", &train));
}

/// Escapes a normalized text for one TSV column (`\\`, `\t`, `\n`, `\r`, NUL).
fn escape_column(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            other => out.push(other),
        }
    }
    out
}

/// The training view for `rules/model/train.py`: every *training* row (never a held-out
/// one) normalized by the detector's own [`normalize_text`], with what the patterns alone
/// (no model) say about it. Run with `PORTCULLIS_NGRAM_TRAINING=<file>`; see
/// `rules/model/README.md`.
#[test]
#[ignore = "writes the model's training view; run by hand to retrain"]
fn write_the_training_view_for_the_ngram_model() {
    let Ok(path) = std::env::var("PORTCULLIS_NGRAM_TRAINING") else {
        return;
    };
    let patterns_only = Layers {
        model: false,
        ..Layers::ALL
    };
    let mut out = String::from(
        "# file\tordinal\tlabel\tcategory\tlang\tbalanced\thigh_weak\thigh\tnormalized\n",
    );
    for (file, label) in [("attacks.tsv", 1), ("benign.tsv", 0)] {
        for (ordinal, row) in load(file).iter().enumerate() {
            if row.held_out {
                continue;
            }
            let balanced = detect_injection_layers(&row.text, Sensitivity::Balanced, patterns_only);
            let high = detect_injection_layers(&row.text, Sensitivity::High, patterns_only);
            let _ = writeln!(
                out,
                "{file}\t{ordinal}\t{label}\t{}\t{}\t{}\t{}\t{}\t{}",
                row.category,
                row.lang,
                u8::from(!balanced.is_empty()),
                u8::from(high.contains(&"weak_signals")),
                u8::from(!high.is_empty()),
                escape_column(&normalize_text(&row.text))
            );
        }
    }
    std::fs::write(path, out).unwrap();
}

/// Held-out recall and false positives with the layers switched on one after another.
fn layer_table(attacks: &[Row], benign: &[Row]) -> String {
    let none = Layers {
        extended: false,
        weak_signals: false,
        squeeze: false,
        decode: false,
        multilingual: false,
        model: false,
    };
    let steps: [(&str, Layers); 7] = [
        ("original 47 patterns (normalization only)", none),
        (
            "+ extended English families",
            Layers {
                extended: true,
                ..none
            },
        ),
        (
            "+ de/fr/es/it/tr families",
            Layers {
                extended: true,
                multilingual: true,
                ..none
            },
        ),
        (
            "+ weak-signal scoring",
            Layers {
                extended: true,
                multilingual: true,
                weak_signals: true,
                ..none
            },
        ),
        (
            "+ squeezed view and smuggling shapes",
            Layers {
                decode: false,
                model: false,
                ..Layers::ALL
            },
        ),
        (
            "+ decoding layers",
            Layers {
                model: false,
                ..Layers::ALL
            },
        ),
        ("+ n-gram model (everything)", Layers::ALL),
    ];
    let mut s = String::from("== what each layer adds (held-out split, balanced)\n");
    for (name, layers) in steps {
        let rows: Vec<&Row> = attacks.iter().filter(|r| r.held_out).collect();
        let hit = rows
            .iter()
            .filter(|r| !detect_injection_layers(&r.text, Sensitivity::Balanced, layers).is_empty())
            .count();
        let neg: Vec<&Row> = benign.iter().filter(|r| r.held_out).collect();
        let fp = neg
            .iter()
            .filter(|r| !detect_injection_layers(&r.text, Sensitivity::Balanced, layers).is_empty())
            .count();
        let _ = writeln!(
            s,
            "  {name:<44} recall {:.3}  false positives {:.3}",
            hit as f64 / rows.len() as f64,
            fp as f64 / neg.len() as f64
        );
    }
    s
}

/// The targets of the detector work, asserted on the held-out split. Where the detector
/// does not reach one yet, the test asserts the level it does reach (the `FLOOR_…`
/// constant, named below-target) so that a regression fails, and prints both.
const TARGET_RECALL: f64 = 0.85;
const TARGET_CATEGORY_RECALL: f64 = 0.75;
const TARGET_FALSE_POSITIVES: f64 = 0.02;
/// BELOW TARGET: system-prompt extraction reached 0.605 (46 of 76) on held-out data
/// (target 0.75); every other category, the overall recall and the languages meet theirs.
/// It was 0.727 (16 of 22) before the second batch of extraction attacks (163 rows from 13
/// more packages, PROVENANCE.md) was added, 0.447 (34 of 76) with it, and 0.605 after the
/// extraction families were written again from the training split's misses (secrets and
/// guard rules asked for, probing questions, more languages; patterns.rs, fourth pass).
const FLOOR_CATEGORY_BELOW_TARGET: &[(&str, f64)] = &[("extraction", 0.60)];
/// Languages with enough held-out rows to assert on; the rest are printed only.
const ASSERTED_LANGS: &[&str] = &["en", "de", "fr", "es", "it"];

#[test]
fn the_evaluation_set_is_large_multilingual_and_labelled() {
    let attacks = load("attacks.tsv");
    let benign = load("benign.tsv");
    assert!(attacks.len() >= 1000, "{} attacks", attacks.len());
    assert!(benign.len() >= 1000, "{} benign", benign.len());
    let foreign = attacks.iter().filter(|r| r.lang != "en").count();
    assert!(
        foreign * 5 >= attacks.len(),
        "{foreign} of {} attacks not in English (need 20%)",
        attacks.len()
    );
    for cat in [
        "jailbreak",
        "indirect",
        "override",
        "obfuscation",
        "extraction",
    ] {
        assert!(
            attacks.iter().any(|r| r.category == cat),
            "no {cat} attacks"
        );
    }
    let held = attacks.iter().filter(|r| r.held_out).count();
    assert!(
        held * 5 >= attacks.len() && held * 2 <= attacks.len(),
        "{held} held out"
    );
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
    println!("{}", layer_table(&attacks, &benign));
    println!(
        "targets: recall >= {TARGET_RECALL}, every category and language >= \
         {TARGET_CATEGORY_RECALL}, false positives <= {TARGET_FALSE_POSITIVES}"
    );

    let mut failures = Vec::new();
    if held.recall.rate() < TARGET_RECALL {
        failures.push(format!(
            "recall {:.3} < {TARGET_RECALL}",
            held.recall.rate()
        ));
    }
    if held.fp.rate() > TARGET_FALSE_POSITIVES {
        failures.push(format!(
            "false positives {:.3} > {TARGET_FALSE_POSITIVES}",
            held.fp.rate()
        ));
    }
    for (cat, t) in &held.by_category {
        let floor = FLOOR_CATEGORY_BELOW_TARGET
            .iter()
            .find(|(c, _)| c == cat)
            .map_or(TARGET_CATEGORY_RECALL, |(_, f)| *f);
        if t.rate() < TARGET_CATEGORY_RECALL {
            println!("BELOW TARGET: category {cat} recall {:.3}", t.rate());
        }
        if t.rate() < floor {
            failures.push(format!("category {cat} recall {:.3} < {floor}", t.rate()));
        }
    }
    for lang in ASSERTED_LANGS {
        let t = held.by_lang.get(*lang).copied().unwrap_or_default();
        if t.rate() < TARGET_CATEGORY_RECALL {
            failures.push(format!(
                "language {lang} recall {:.3} < {TARGET_CATEGORY_RECALL}",
                t.rate()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
