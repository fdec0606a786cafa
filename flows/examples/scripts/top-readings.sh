# The five hottest readings of the day, with plain coreutils.
set -eu
tail -n +2 readings.csv | sort -t, -k3 -g -r | head -n 5 > stats/top-readings.csv
echo "hottest readings:"
cat stats/top-readings.csv
