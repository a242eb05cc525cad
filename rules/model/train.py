#!/usr/bin/env python3
"""Train the injection detector's hashed character n-gram model (Python 3.11, stdlib only).

Input: the training view written by the Rust side (normalized exactly as the detector
normalizes), see README.md:

    PORTCULLIS_NGRAM_TRAINING=/tmp/ngram_train.tsv cargo test -p portcullis-rules \
        --release --test detector_eval -- --ignored write_the_training_view_for_the_ngram_model
    python3 rules/model/train.py /tmp/ngram_train.tsv

The split is recomputed here from the evaluation TSVs (fnv1a64 of the split key, held out
when % 10 < 3) and checked against the view: a held-out row in the view is an error.
Held-out rows are never read for training, cross-validation or thresholds.

Output: rules/src/detect/ngram_weights.bin (header, then one i8 weight per bucket).
"""

import math
import random
import struct
import sys
from pathlib import Path

SEED = 20260101
BITS = 17
BUCKETS = 1 << BITS
MASK = BUCKETS - 1
N_MIN, N_MAX = 3, 5
BLOCK = 512  # a window is two adjacent blocks (1 KiB, 512 bytes overlap)
FOLDS = 5
EPOCHS = 12
L2 = 1e-5
LR0 = 0.5
BENIGN_WEIGHT = 1.5
# Weight (tenths) the model adds to the weak-signal score above the lower threshold;
# the Rust side uses the same constant. Balanced fires at 10, high at 6.
MODEL_WEAK = 4
# Cross-validated false-positive budgets (fraction of training benign rows): the model
# alone, and what the model may add to the patterns' own false positives.
BUDGET = {
    "balanced": {"alone": 0.004, "added": 0.006},
    "high": {"alone": 0.012, "added": 0.015},
}

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "tests" / "corpus" / "eval"
OUT = ROOT / "src" / "detect" / "ngram_weights.bin"

FNV32_BASIS = 0x811C9DC5
FNV32_PRIME = 0x01000193


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def unescape(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        if i >= len(text):
            out.append("\\")
            continue
        nxt = text[i]
        i += 1
        out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
    return "".join(out)


def rust_lines(text: str):
    """str::lines: split on \\n, drop one trailing \\r, no final empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [l[:-1] if l.endswith("\r") else l for l in lines]


def load_split(name: str):
    """(ordinal, split key, held_out) per row, as detector_eval.rs `load` counts them."""
    rows = []
    text = (EVAL / name).read_text(encoding="utf-8")
    for line in rust_lines(text):
        if line.startswith("#") or not line.strip():
            continue
        cols = line.split("\t", 4)
        assert len(cols) == 5, line
        body = unescape(cols[4])
        key = cols[3] if cols[3] else body
        rows.append((key, fnv1a64(key) % 10 < 3))
    return rows


def unescape_column(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        i += 1
        if c == "\\" and i < len(text):
            nxt = text[i]
            i += 1
            out.append({"t": "\t", "n": "\n", "r": "\r", "0": "\0"}.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


def read_view(path: str):
    splits = {name: load_split(name) for name in ("attacks.tsv", "benign.tsv")}
    expected = {
        (name, i) for name, rows in splits.items() for i, (_, held) in enumerate(rows) if not held
    }
    seen = set()
    rows = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if not line or line.startswith("#"):
            continue
        f, ordinal, label, cat, lang, bal, high_weak, high, norm = line.split("\t", 8)
        ordinal = int(ordinal)
        key, held = splits[f][ordinal]
        if held:
            sys.exit(f"held-out row {f}:{ordinal} in the training view")
        seen.add((f, ordinal))
        rows.append(
            {
                "label": int(label),
                "category": cat,
                "lang": lang,
                "balanced": bal == "1",
                "high_weak": high_weak == "1",
                "high": high == "1",
                "fold": (fnv1a64(key) >> 32) % FOLDS,
                "bytes": unescape_column(norm).encode("utf-8"),
            }
        )
    if seen != expected:
        sys.exit(f"view has {len(seen)} rows, the split {len(expected)} training rows")
    return rows


def bucket(h: int) -> int:
    return ((h >> BITS) ^ h) & MASK


def windows(data: bytes):
    """Per window: (bucket -> count, n-gram count), as ngram.rs scores them."""
    nblocks = max(1, (len(data) + BLOCK - 1) // BLOCK)
    blocks = [dict() for _ in range(nblocks)]
    counts = [0] * nblocks
    n = len(data)
    for i in range(n):
        h = FNV32_BASIS
        blk = i // BLOCK
        d = blocks[blk]
        for j in range(N_MAX):
            if i + j >= n:
                break
            h = ((h ^ data[i + j]) * FNV32_PRIME) & 0xFFFFFFFF
            if j + 1 >= N_MIN:
                b = bucket(h)
                d[b] = d.get(b, 0) + 1
                counts[blk] += 1
    if nblocks == 1:
        return [(blocks[0], counts[0])]
    out = []
    for k in range(nblocks - 1):
        merged = dict(blocks[k])
        for b, c in blocks[k + 1].items():
            merged[b] = merged.get(b, 0) + c
        out.append((merged, counts[k] + counts[k + 1]))
    return out


def featurize(rows):
    for r in rows:
        feats = []
        for counts, total in windows(r["bytes"]):
            if total == 0:
                feats.append(([], []))
                continue
            norm = 1.0 / math.sqrt(total)
            idx = list(counts)
            feats.append((idx, [counts[b] * norm for b in idx], counts, total))
        r["windows"] = feats


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def train(rows, rng):
    """Logistic regression with L2 by SGD; each text weighs 1 spread over its windows."""
    samples = []
    for r in rows:
        ws = [w for w in r["windows"] if w[0]]
        cw = (BENIGN_WEIGHT if r["label"] == 0 else 1.0) / max(1, len(ws))
        for w in ws:
            samples.append((w[0], w[1], r["label"], cw))
    v = [0.0] * BUCKETS
    scale = 1.0
    bias = 0.0
    step = 0
    for _ in range(EPOCHS):
        rng.shuffle(samples)
        for idx, val, y, cw in samples:
            step += 1
            lr = LR0 / (1.0 + step * 2e-4)
            dot = 0.0
            for j, x in zip(idx, val):
                dot += v[j] * x
            z = bias + scale * dot
            g = (sigmoid(z) - y) * cw
            scale *= 1.0 - lr * L2
            if g != 0.0:
                delta = lr * g / scale
                for j, x in zip(idx, val):
                    v[j] -= delta * x
                bias -= lr * g * 0.1
            if scale < 1e-6:
                v = [x * scale for x in v]
                scale = 1.0
    return [x * scale for x in v], bias


def quantize(w):
    top = max(abs(x) for x in w) or 1.0
    q_scale = top / 127.0
    return [max(-127, min(127, round(x / q_scale))) for x in w], q_scale


def score(row, q, q_scale, bias):
    """Max over windows of bias + scale * sum(q) / sqrt(n): what ngram.rs computes."""
    best = -math.inf
    for w in row["windows"]:
        if not w[0]:
            best = max(best, bias)
            continue
        counts, total = w[2], w[3]
        s = sum(q[b] * c for b, c in counts.items())
        best = max(best, bias + q_scale * s / math.sqrt(total))
    return best


def fired(row, s, t_hi, t_lo, mode):
    if mode == "balanced":
        # model weight 4 + a weak score of >= 6 (what `high` calls weak) reaches 10
        return row["balanced"] or s >= t_hi or (s >= t_lo and row["high_weak"])
    return row["high"] or s >= t_hi or (s >= t_lo and row["high_weak"])


def choose(rows, scores, mode):
    benign = [(r, s) for r, s in zip(rows, scores) if r["label"] == 0]
    attacks = [(r, s) for r, s in zip(rows, scores) if r["label"] == 1]
    budget = BUDGET[mode]
    cand = sorted({s for s in scores})
    # alone: the lowest threshold whose model-only benign FP stays in budget
    t_hi = max(cand) + 1.0
    for t in cand:
        fp = sum(1 for _, s in benign if s >= t) / len(benign)
        if fp <= budget["alone"]:
            t_hi = t
            break
    # lower: the lowest threshold whose combined FP stays in budget
    base_fp = sum(1 for r, _ in benign if r[mode]) / len(benign)
    # among those, the best recall; of equal recall, the highest (most cautious) threshold
    t_lo, best = t_hi, -1
    for t in cand:
        if t >= t_hi:
            break
        fp = sum(1 for r, s in benign if fired(r, s, t_hi, t, mode)) / len(benign)
        if fp > base_fp + budget["added"]:
            continue
        hits = sum(1 for r, s in attacks if fired(r, s, t_hi, t, mode))
        if hits >= best:
            t_lo, best = t, hits
    rec = sum(1 for r, s in attacks if fired(r, s, t_hi, t_lo, mode)) / len(attacks)
    base = sum(1 for r, _ in attacks if r[mode]) / len(attacks)
    fp = sum(1 for r, s in benign if fired(r, s, t_hi, t_lo, mode)) / len(benign)
    alone = sum(1 for _, s in attacks if s >= t_hi) / len(attacks)
    print(f"  {mode:<8} model alone: CV recall {alone:.3f}")
    print(
        f"  {mode:<8} t_hi {t_hi:+.3f} t_lo {t_lo:+.3f}  CV recall {base:.3f} -> {rec:.3f}"
        f"  CV fp {base_fp:.3f} -> {fp:.3f}"
    )
    cats = sorted({r["category"] for r, _ in attacks})
    for c in cats:
        sub = [(r, s) for r, s in attacks if r["category"] == c]
        hit = sum(1 for r, s in sub if fired(r, s, t_hi, t_lo, mode))
        print(f"    {c:<12} {hit / len(sub):.3f} ({hit}/{len(sub)})")
    return t_hi, t_lo


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rng = random.Random(SEED)
    rows = read_view(sys.argv[1])
    print(f"{len(rows)} training rows ({sum(r['label'] for r in rows)} attacks)")
    featurize(rows)
    oof = [0.0] * len(rows)
    for k in range(FOLDS):
        fit = [r for r in rows if r["fold"] != k]
        w, b = train(fit, rng)
        q, qs = quantize(w)
        for i, r in enumerate(rows):
            if r["fold"] == k:
                oof[i] = score(r, q, qs, b)
        print(f"fold {k}: trained on {len(fit)}")
    thresholds = {m: choose(rows, oof, m) for m in ("balanced", "high")}
    # `high` fires on everything `balanced` fires on, the model's contribution included:
    # neither of its thresholds is above balanced's. (Its lower one has no effect on the
    # cross-validated figures above, which count a weak-signal hit at `high` as a hit
    # already, so the search leaves it just under its upper one.)
    (b_hi, b_lo), (h_hi, h_lo) = thresholds["balanced"], thresholds["high"]
    thresholds["high"] = (min(h_hi, b_hi), min(h_lo, b_lo))
    print(f"  high     thresholds used: t_hi {thresholds['high'][0]:+.3f} t_lo {thresholds['high'][1]:+.3f}")
    w, b = train(rows, rng)
    q, qs = quantize(w)
    header = b"PCNG" + struct.pack(
        "<BBBBHH6f",
        1,
        BITS,
        N_MIN,
        N_MAX,
        BLOCK,
        MODEL_WEAK,
        qs,
        b,
        thresholds["balanced"][0],
        thresholds["balanced"][1],
        thresholds["high"][0],
        thresholds["high"][1],
    )
    OUT.write_bytes(header + struct.pack(f"<{BUCKETS}b", *q))
    nz = sum(1 for x in q if x)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {nz} non-zero buckets, bias {b:+.3f})")


if __name__ == "__main__":
    main()
