#!/usr/bin/env python3
"""Writes corridor.csv: a morning of one patient's bracelet in a ward of three rooms.

The rooms' gateways stand 10 m apart along a corridor (gw-ward-a at 0 m, gw-ward-b at
10 m, gw-ward-c at 20 m). The patient stays in a room for a while, walks to the next one at
1 m/s, and twice walks past a room without stopping. Every gateway that hears the bracelet
at -90 dBm or better (the class's minRssi) logs a reading every 5 s; the signal falls off
with distance (-45 dBm at 1 m, -25 dB per decade) with Gaussian noise (sigma 3 dB), so a
gateway two rooms away still hears the bracelet at about -78 dBm: present, for a policy
whose minRssi is -80. Seeded: the output is the same on every run.

    python3 examples/ward/corridor.py > examples/ward/corridor.csv
"""
import math
import random

rng = random.Random(7)
gateways = [("gw-ward-a", 0.0), ("gw-ward-b", 10.0), ("gw-ward-c", 20.0)]
device = "C4:7C:8D:6A:12:34"
# (position in metres, seconds to stay there); between stops the patient walks at 1 m/s,
# so going from room a to room c (and back) passes room b in about ten seconds.
path = [(float(pos), minutes * 60) for pos, minutes in
        [(0, 20), (10, 15), (20, 25), (10, 10), (0, 15), (20, 20), (0, 10)]]


def position(t):
    """Where the patient is t seconds into the trace."""
    here, clock = path[0][0], 0
    for pos, stay in path:
        walk = abs(pos - here)
        if t < clock + walk:
            return here + (pos - here) * (t - clock) / walk
        clock += walk
        here = pos
        if t < clock + stay:
            return here
        clock += stay
    return here


total = sum(stay for _, stay in path) + sum(
    abs(b[0] - a[0]) for a, b in zip(path, path[1:])
)
print("time,gateway,device,class,rssi")
for t in range(0, int(total), 5):
    x = position(t)
    h, rest = divmod(8 * 3600 + t, 3600)
    m, s = divmod(rest, 60)
    for name, at in gateways:
        d = max(1.0, abs(x - at))
        rssi = round(-45 - 25 * math.log10(d) + rng.gauss(0, 3))
        if rssi >= -90:
            print("2026-11-28T%02d:%02d:%02dZ,%s,%s,omh-bracelet,%d" % (h, m, s, name, device, rssi))
