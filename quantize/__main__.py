"""`python -m quantize`: the converter's own command line."""

import sys

print("quantize: not built yet", file=sys.stderr)
raise SystemExit(1)
