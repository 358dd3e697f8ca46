import sys

from netpost.cli import main

sys.exit(main())
