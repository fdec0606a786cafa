"""Combine the analyses into report.md."""

import csv
import json

with open("stats/summary.json") as f:
    summary = json.load(f)
with open("stats/outliers.csv", newline="") as f:
    outliers = list(csv.DictReader(f))
with open("stats/top-readings.csv", newline="") as f:
    top = [line.split(",") for line in f.read().split()]

lines = [
    "# Sensor report",
    "",
    "| sensor | readings | mean °C | median °C | stdev | min | max |",
    "|---|---:|---:|---:|---:|---:|---:|",
]
for sensor, s in summary.items():
    cells = [sensor, s["count"], s["mean"], s["median"], s["stdev"], s["min"], s["max"]]
    lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
lines += ["", f"## Outliers ({len(outliers)})", ""]
lines += [f"- minute {o['minute']}, {o['sensor']}: {o['celsius']} °C (z = {o['z']})" for o in outliers]
lines += ["", "## Hottest readings", ""]
lines += [f"- minute {m}, {s}: {c} °C" for m, s, c in top]
with open("report.md", "w") as out:
    out.write("\n".join(lines) + "\n")
print(f"report.md written: {len(summary)} sensors, {len(outliers)} outliers")
