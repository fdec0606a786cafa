"""Facts about the repository in the workspace: files and lines by kind, and its tests, to
facts.md (a table for people and models) and facts.json (for code)."""

import json
import os
import re
from collections import Counter
from pathlib import Path

SKIPPED = {".git", ".venv", "node_modules", "__pycache__"}
TEST = re.compile(r"^\s*(?:async\s+)?def\s+test_\w*\s*\(", re.M)

files, lines, tests = Counter(), Counter(), {}
for directory, subdirectories, names in os.walk("."):
    subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED)
    for name in names:
        path = Path(directory, name)
        if path.is_symlink() or name in ("facts.md", "facts.json", "review.md"):
            continue
        kind = path.suffix.lower() or "(none)"
        files[kind] += 1
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary: counted, not read
        lines[kind] += text.count("\n")
        if kind == ".py" and (name.startswith("test_") or name.endswith("_test.py")):
            tests[path.as_posix().removeprefix("./")] = len(TEST.findall(text))

facts = {
    "files": sum(files.values()),
    "lines": sum(lines.values()),
    "by_kind": {k: {"files": files[k], "lines": lines[k]} for k, _ in files.most_common()},
    "test_files": len(tests),
    "tests": sum(tests.values()),
    "largest_test_files": sorted(tests.items(), key=lambda item: -item[1])[:5],
}
Path("facts.json").write_text(json.dumps(facts, indent=2) + "\n")

table = ["| kind | files | lines |", "| --- | ---: | ---: |"]
table += [f"| {k} | {v['files']} | {v['lines']} |" for k, v in list(facts["by_kind"].items())[:15]]
Path("facts.md").write_text(
    "# Repository facts\n\n"
    f"{facts['files']} files, {facts['lines']} lines; {facts['tests']} tests in "
    f"{facts['test_files']} test files.\n\n" + "\n".join(table) + "\n"
)
print(f"{facts['files']} files, {facts['lines']} lines, {facts['tests']} tests")
