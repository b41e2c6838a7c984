"""`python -m quantize SRC --quant TYPE [-o OUT]`: the converter's own command line."""

import sys

from quantize.cli import main

sys.exit(main())
