"""Readings more than three standard deviations from their sensor's mean, to stats/outliers.csv."""

import csv
import os
import statistics
from collections import defaultdict

rows = defaultdict(list)
with open("readings.csv", newline="") as source:
    for row in csv.DictReader(source):
        rows[row["sensor"]].append(row)

os.makedirs("stats", exist_ok=True)
found = 0
with open("stats/outliers.csv", "w", newline="") as out:
    writer = csv.writer(out)
    writer.writerow(["minute", "sensor", "celsius", "z"])
    for sensor, readings in sorted(rows.items()):
        temps = [float(r["celsius"]) for r in readings]
        mean, stdev = statistics.fmean(temps), statistics.stdev(temps)
        for r, t in zip(readings, temps, strict=True):
            z = (t - mean) / stdev
            if abs(z) > 3:
                writer.writerow([r["minute"], sensor, r["celsius"], f"{z:.2f}"])
                found += 1
print(f"{found} outliers written to stats/outliers.csv")
