import sys

from fedvlm.cli import main

sys.exit(main())
