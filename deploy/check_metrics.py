#!/usr/bin/env python3
"""Checks that the metrics deploy/ refers to are the metrics featureproxy serves.

    python3 deploy/check_metrics.py                       # names, against src/ops/metrics.rs
    python3 deploy/check_metrics.py --scrape URL_OR_FILE  # also labels and label values,
                                                          # against a real /metrics answer

1. Every `featureproxy_*` metric name in deploy/ (rules, dashboard, README) and docs/*.md (the
   runbooks) must be a family declared in src/ops/metrics.rs, or `_bucket`/`_sum`/`_count` of a
   histogram family there.
   Recording-rule names (`level:featureproxy_x:op`) are not metric names and are skipped.
2. With --scrape (a URL such as http://127.0.0.1:7071/metrics, or a saved file), every label
   matcher in a PromQL expression of the rules and dashboard must name a label that metric
   carries, and a literal value (`="x"`, `=~"a|b"`) must be one it takes. `job` and `instance`
   are added by Prometheus and are not checked; neither are `$variables`.

Exits 1 on any mismatch. Needs only the Python 3 standard library (plus PyYAML for rule files;
without it the rule files are scanned as text and label checks skip them).
"""

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
# The metric tables: the data path's and the value-watching one (metrics::all() serves both).
SOURCES = [ROOT / "src" / "ops" / "metrics.rs", ROOT / "src" / "ops" / "value_metrics.rs"]
SELF = Path(__file__).resolve()

NAME = re.compile(r"(?<![:\w])featureproxy_[a-z0-9_]+(?![:\w])")
SELECTOR = re.compile(r"(?<![:\w])(featureproxy_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
ADDED_BY_PROMETHEUS = {"job", "instance"}


def served_families():
    text = "\n".join(p.read_text() for p in SOURCES)
    families = set(re.findall(r'"(featureproxy_[a-z0-9_]+)"', text))
    # The metric table declares histograms as `histogram(\n "featureproxy_...",`.
    histograms = set(re.findall(r'histogram\(\s*"(featureproxy_[a-z0-9_]+)"', text))
    names = set(families)
    for h in histograms:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names, histograms


def deploy_files():
    for p in sorted(DEPLOY.rglob("*")):
        if p.is_file() and p.resolve() != SELF and p.suffix in {".yml", ".yaml", ".json", ".md"}:
            yield p
    # The runbooks name metrics too (docs/runbooks.md).
    yield from sorted((ROOT / "docs").glob("*.md"))


def expressions(path):
    """PromQL expressions in a rule file or dashboard (None: could not parse the file)."""
    if path.suffix == ".json":
        out = []

        def walk(v):
            if isinstance(v, dict):
                for k, x in v.items():
                    if k in ("expr", "query", "definition") and isinstance(x, str):
                        out.append(x)
                    else:
                        walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(json.loads(path.read_text()))
        return out
    if path.suffix in {".yml", ".yaml"}:
        try:
            import yaml
        except ImportError:
            return None
        doc = yaml.safe_load(path.read_text()) or {}
        out = [r["expr"] for g in doc.get("groups", []) for r in g.get("rules", []) if "expr" in r]
        for t in doc.get("tests", []) or []:
            out += [e["expr"] for e in t.get("promql_expr_test", []) or []]
        return out
    return []


def parse_exposition(text):
    """{metric name: {label: set(values)}} from Prometheus text format."""
    seen = {}
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = sample.match(line)
        if not m:
            continue
        labels = seen.setdefault(m.group(1), {})
        for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
            labels.setdefault(k, set()).add(v)
    return seen


def read_scrape(where):
    if re.match(r"https?://", where):
        with urllib.request.urlopen(where, timeout=5) as r:
            return r.read().decode()
    return Path(where).read_text()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrape", help="a /metrics URL or a saved /metrics answer, to check labels too")
    args = ap.parse_args()

    served, histograms = served_families()
    problems = []
    used = {}
    for p in deploy_files():
        for n in NAME.findall(p.read_text()):
            used.setdefault(n, set()).add(str(p.relative_to(ROOT)))
    for n in sorted(used):
        if n not in served:
            problems.append(f"{n}: not served by src/ops/metrics.rs or value_metrics.rs (used in {', '.join(sorted(used[n]))})")
    print(f"{len(used)} metric names referenced in deploy/, "
          f"{len(served)} served (families and histogram series) by src/ops/metrics.rs and value_metrics.rs")
    families = {f for f in served if not any(f == h + s for h in histograms for s in ("_bucket", "_sum", "_count"))}
    unused = sorted(f for f in families if not any(u == f or u.startswith(f + "_") for u in used))
    if unused:
        print("families served but not used in deploy/ (for information):", ", ".join(unused))

    if args.scrape:
        exposition = parse_exposition(read_scrape(args.scrape))
        checked = 0
        for p in deploy_files():
            exprs = expressions(p)
            if exprs is None:
                print(f"{p.relative_to(ROOT)}: PyYAML missing, labels not checked")
                continue
            for e in exprs:
                for metric, body in SELECTOR.findall(e):
                    if metric not in exposition:
                        problems.append(f"{p.relative_to(ROOT)}: {metric} is not in the scrape")
                        continue
                    have = exposition[metric]
                    for label, op, value in MATCHER.findall(body):
                        checked += 1
                        if label in ADDED_BY_PROMETHEUS or label == "__name__":
                            continue
                        if label not in have:
                            problems.append(f"{p.relative_to(ROOT)}: {metric} has no label {label!r} "
                                            f"(it has {sorted(have) or 'none'})")
                            continue
                        if "$" in value or op not in ("=", "=~"):
                            continue
                        alternatives = value.split("|") if op == "=~" else [value]
                        if op == "=~" and any(re.search(r"[.*+?()\[\]{}^\\]", a) for a in alternatives):
                            continue
                        for a in alternatives:
                            if a not in have[label]:
                                problems.append(f"{p.relative_to(ROOT)}: {metric}{{{label}=\"{a}\"}} never "
                                                f"appears (values: {sorted(have[label])})")
        print(f"{checked} label matchers checked against the scrape ({len(exposition)} series names)")

    for pr in problems:
        print("MISMATCH:", pr)
    if problems:
        sys.exit(1)
    print("OK: every metric named in deploy/ is served by src/ops/metrics.rs or value_metrics.rs")


if __name__ == "__main__":
    main()
