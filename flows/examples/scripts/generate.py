"""Simulate a day of readings, one a minute, from three sensors, into readings.csv."""

import csv
import math
import random

rng = random.Random(42)
sensors = {"north": 18.0, "south": 24.0, "roof": 12.0}
rows = 0
with open("readings.csv", "w", newline="") as out:
    writer = csv.writer(out)
    writer.writerow(["minute", "sensor", "celsius"])
    for minute in range(24 * 60):
        for sensor, base in sensors.items():
            daily = 6 * math.sin((minute / 1440) * 2 * math.pi - math.pi / 2)
            value = base + daily + rng.gauss(0, 0.8)
            if rng.random() < 0.002:  # a rare faulty reading
                value += rng.choice([-1, 1]) * rng.uniform(15, 30)
            writer.writerow([minute, sensor, f"{value:.2f}"])
            rows += 1
print(f"wrote readings.csv: {rows} readings from {len(sensors)} sensors")
