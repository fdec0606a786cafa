"""Summary statistics per sensor, written to stats/summary.json."""

import csv
import json
import os
import statistics
from collections import defaultdict

values = defaultdict(list)
with open("readings.csv", newline="") as source:
    for row in csv.DictReader(source):
        values[row["sensor"]].append(float(row["celsius"]))

summary = {
    sensor: {
        "count": len(v),
        "mean": round(statistics.fmean(v), 3),
        "median": round(statistics.median(v), 3),
        "stdev": round(statistics.stdev(v), 3),
        "min": min(v),
        "max": max(v),
    }
    for sensor, v in sorted(values.items())
}
os.makedirs("stats", exist_ok=True)
with open("stats/summary.json", "w") as out:
    json.dump(summary, out, indent=2)
for sensor, s in summary.items():
    print(f"{sensor:>5}: n={s['count']} mean={s['mean']} stdev={s['stdev']}")
