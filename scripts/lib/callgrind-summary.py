#!/usr/bin/env python3
"""Instructions per call from a callgrind profile of a server that served
CALLS calls while it counted (`scripts/bench.sh --instructions`).

    callgrind-summary.py CALLS CALLGRIND_OUT [TOP]

Prints the instructions per call (user space: callgrind does not see the
kernel), then the TOP functions (25 by default) by their own instructions
per call, then the TOP of shop's own functions (our crates) by their
inclusive instructions per call: what each layer and handler costs with
everything it calls. Unlike CPU time, the count hardly moves with the host
(two runs of one build differ by about half a percent), so a change of a
few percent shows in one run of each build.
"""

import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)\s*$")
OURS = re.compile(r"\b(shop_\w+|user_service|order_service|inventory_service)::")


def annotate(path, inclusive):
    """(instructions, function) of every function callgrind_annotate lists."""
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", path],
        check=True, capture_output=True, text=True).stdout
    total, rows = None, []
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        count, what = int(m[1].replace(",", "")), m[2]
        if what.startswith("PROGRAM TOTALS"):
            total = count
            continue
        # "file:function [object]": the function, without its object.
        what = re.sub(r"\s+\[[^\]]*\]$", "", what)
        what = what.split(":", 1)[1] if what.startswith(("???:", "./", "/")) else what
        rows.append((count, what))
    return total, rows


def short(name, width=110):
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    calls, path = int(sys.argv[1]), sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) == 4 else 25
    if calls <= 0:
        raise SystemExit("callgrind-summary.py: no calls counted")
    total, own = annotate(path, inclusive=False)
    if not total:
        raise SystemExit(f"callgrind-summary.py: no instructions in {path}")
    print(f"instructions per call: {total / calls:,.0f} "
          f"({total:,} over {calls:,} calls; user space only)")
    print(f"\nby their own instructions, per call (top {top}):")
    for count, name in own[:top]:
        print(f"{count / calls:>10,.0f}  {count / total:6.2%}  {short(name)}")
    _, inclusive = annotate(path, inclusive=True)
    print(f"\nshop's own functions with all they call, per call (top {top}):")
    for count, name in [r for r in inclusive if OURS.search(r[1])][:top]:
        print(f"{count / calls:>10,.0f}  {count / total:6.2%}  {short(name)}")


if __name__ == "__main__":
    main()
