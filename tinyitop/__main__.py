import sys

from tinyitop.cli import main

sys.exit(main())
