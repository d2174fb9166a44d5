"""`python -m lorakit`: the command line."""
import sys

from lorakit.cli import main

sys.exit(main())
