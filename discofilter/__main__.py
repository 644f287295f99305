import sys

from discofilter.cli import main

sys.exit(main())
