#!/usr/bin/env python3
"""Checks that every alert links to its own section of docs/runbooks.md.

    python3 deploy/check_runbooks.py

1. Every alert rule in deploy/prometheus/alerts.yml has a `runbook_url` annotation of the form
   `docs/runbooks.md#ANCHOR` (or a URL ending in `/docs/runbooks.md#ANCHOR`, for those who point
   the annotation at their own copy of the repository).
2. ANCHOR is a heading of docs/runbooks.md (GitHub's anchors: lower case, punctuation dropped,
   spaces as hyphens), and that heading is the alert's name: each alert has a section of its own.
3. Every in-page link of docs/runbooks.md (`](#anchor)`) leads to a heading.

Exits 1 on any problem. Needs only the Python 3 standard library: the rule file is read line by
line (`- alert:` starts a rule, `runbook_url:` is its annotation); with PyYAML installed the list
of alerts is cross-checked against a real YAML parse.
"""

import re
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
URL = re.compile(r"^(?:.*/)?docs/runbooks\.md#([A-Za-z0-9_-]+)$")


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading (before de-duplication)."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(path):
    """{anchor: heading text}, with GitHub's -1, -2 suffixes for repeated headings."""
    out, seen, fenced = {}, {}, False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = github_anchor(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out[base if n == 0 else f"{base}-{n}"] = m.group(1).strip()
    return out


def alerts(path):
    """[(alert name, runbook_url or None)] in file order."""
    rules, current = [], None
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*-\s+(alert|record):\s*(\S+)\s*$", line)
        if m:
            current = None
            if m.group(1) == "alert":
                current = [m.group(2), None]
                rules.append(current)
            continue
        m = re.match(r"""^\s+runbook_url:\s*["']?(.*?)["']?\s*$""", line)
        if m and current is not None:
            if current[1] is not None:
                current[1] = "<more than one runbook_url>"
            else:
                current[1] = m.group(1)
    return [tuple(r) for r in rules]


def main():
    problems = []
    rules = alerts(ALERTS)
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(ALERTS.read_text())
        parsed = [(r["alert"], (r.get("annotations") or {}).get("runbook_url"))
                  for g in doc["groups"] for r in g["rules"] if "alert" in r]
        if parsed != rules:
            problems.append(f"{ALERTS.relative_to(ROOT)}: the line reader found {rules}, "
                            f"PyYAML {parsed}: keep one `- alert:` and one `runbook_url:` line per rule")
    anchors = headings(RUNBOOKS)
    for name, url in rules:
        if url is None:
            problems.append(f"{name}: no runbook_url annotation")
            continue
        m = URL.match(url)
        if not m:
            problems.append(f"{name}: runbook_url {url!r} is not docs/runbooks.md#ANCHOR")
            continue
        anchor = m.group(1)
        if anchor not in anchors:
            problems.append(f"{name}: runbook_url {url!r}: docs/runbooks.md has no heading with "
                            f"anchor #{anchor} (add a section headed `## {name}`)")
        elif anchors[anchor] != name:
            problems.append(f"{name}: runbook_url {url!r} leads to the section {anchors[anchor]!r}, "
                            f"not to one headed {name!r}")
    for target in re.findall(r"\]\(#([^)\s]+)\)", RUNBOOKS.read_text()):
        if target not in anchors:
            problems.append(f"docs/runbooks.md: a link to #{target}, which no heading has")
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        sys.exit(1)
    print(f"OK: {len(rules)} alerts in {ALERTS.relative_to(ROOT)}, each linking to its own section "
          f"of docs/runbooks.md ({len(anchors)} headings, every in-page link resolves)")


if __name__ == "__main__":
    main()
