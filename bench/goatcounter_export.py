#!/usr/bin/env python3
"""Writes a GoatCounter CSV export (format version 2) of ROWS pageviews to stdout, for
measuring `viewcounter import` at a blog's real size (BENCHMARKS.md, "Import"):

    python3 bench/goatcounter_export.py 1000000 > /tmp/goatcounter.csv   # about 131 MB

500 posts under /blog/, read unevenly (a few posts take most views), over five years of days;
one row in twenty a bot's and one in fifty an event, which the import skips. Seeded: the same
ROWS gives the same file."""

import random
import sys
from datetime import datetime, timedelta, timezone

HEADER = ("2Path,Title,Event,UserAgent,Browser,System,Session,Bot,Referrer,"
          "Referrer scheme,Screen size,Location,FirstVisit,Date")
POSTS = 500
START = datetime(2020, 1, 1, tzinfo=timezone.utc)
SPAN = int(timedelta(days=5 * 365).total_seconds())


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = random.Random(20)
    out = sys.stdout
    out.write(HEADER + "\n")
    # Seconds since START in order, as GoatCounter writes them.
    times = sorted(rng.randrange(SPAN) for _ in range(rows))
    for at in times:
        post = int(POSTS * rng.random() ** 3)
        when = (START + timedelta(seconds=at)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = "true" if rng.random() < 0.02 else "false"
        bot = 3 if rng.random() < 0.05 else 0
        path = f"clicked-share-{post}" if event == "true" else f"/blog/{2020 + post % 5}/post-{post}/"
        out.write(
            f'{path},Post {post},{event},,Firefox 120,Linux,{rng.randrange(1 << 30)},'
            f'{bot},https://news.example.com/,h,"1920,1080,1",DE,true,{when}\n'
        )


if __name__ == "__main__":
    main()
