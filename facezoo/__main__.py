import sys

from facezoo.cli import main

sys.exit(main())
