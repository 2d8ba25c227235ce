#!/usr/bin/env python3
"""Writes a one-day presence trace of N bracelets (default 1,000) for `cloud4iot simulate`.

Each bracelet (class omh-bracelet, as in examples-repo) is heard once a minute by the
gateway it is near: gw-home-1 or gw-hospital-1 of examples-repo/state/home.yaml. It
changes place 4 times a day at a random minute; 30 minutes before each real move the other
gateway hears it once (a corridor blip, far shorter than dwell); RSSI jitters by +-4 dBm. Seeded: the same N gives the same bytes.

    python3 benches/simulate-day.py 1000 > /tmp/day.csv
    time target/release/cloud4iot simulate --repo examples-repo \
        --state examples-repo/state/home.yaml --trace /tmp/day.csv -o json > /dev/null
"""
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
rng = random.Random(42)
gateways = ["gw-home-1", "gw-hospital-1"]
out = sys.stdout
out.write("time,gateway,device,class,rssi\n")
day_minutes = 24 * 60
devices = []
for i in range(n):
    mac = "C4:7C:%02X:%02X:%02X:%02X" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
    moves = sorted(rng.sample(range(60, day_minutes - 1), 4))
    devices.append((mac, rng.randrange(2), moves, rng.randrange(60)))
# One line per reading, in time order (a recorded trace is in time order).
for minute in range(day_minutes):
    h, m = divmod(minute, 60)
    for mac, start, moves, second in devices:
        place = (start + sum(1 for x in moves if x <= minute)) % 2
        stamp = "2026-11-27T%02d:%02d:%02dZ" % (h, m, second)
        out.write("%s,%s,%s,omh-bracelet,%d\n" % (stamp, gateways[place], mac, -60 + rng.randint(-4, 4)))
        if any(x - 30 == minute for x in moves):
            # the corridor blip: one reading at the other gateway
            out.write("%s,%s,%s,omh-bracelet,%d\n" % (stamp, gateways[1 - place], mac, -65))
