import sys

from mailyard.policy.cli import main

sys.exit(main())
